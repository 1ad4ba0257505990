"""--help of predict, serve and the data commands: no type placeholders, defaults shown, one --format wording;
several SOURCE arguments (a shell's expansion of *.jpg) accepted (issue 13, item 18)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from ferkit.cli import app

runner = CliRunner()
COMMANDS = (["predict"], ["serve"], ["data", "info"], ["data", "audit"], ["data", "convert"])


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_no_type_placeholders_and_shows_defaults(cmd: list[str]) -> None:
    if cmd == ["serve"]:
        pytest.importorskip("fastapi")
    r = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert not re.search(r"<(str|int|float|bool|path|list\[\w+\])>", r.output, flags=re.I), r.output
    if cmd == ["predict"]:
        for default in ("[default: 320]", "[default: 0.5]", "[default: none]", "[default: fp32]", "[SOURCE]...",
                        "Default: default.", "[default: 5]"):
            assert default in r.output, default
    if cmd[0] == "data":
        assert "Force the dataset format: csv, folders, ferplus or manifest" in r.output


def test_defaults_in_help_are_the_librarys() -> None:
    from ferkit.cli import data as cli_data
    from ferkit.cli import predict as cli_predict
    from ferkit.data import audit
    from ferkit.inference import DEFAULT_SMOOTH

    assert cli_predict.SMOOTH == DEFAULT_SMOOTH
    assert (cli_data.A_BLANK_STD, cli_data.A_NEAR_DISTANCE) == (audit.BLANK_STD, audit.NEAR_DISTANCE)
    r = runner.invoke(app, ["data", "audit", "--help"], env={"COLUMNS": "200"})
    assert f"[default: {audit.BLANK_STD}]" in r.output and f"[default: {audit.NEAR_DISTANCE}]" in r.output


def test_several_sources_like_a_shell_glob(tmp_path) -> None:
    import cv2
    import numpy as np

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((48, 48), 60 * i, np.uint8))
    r = runner.invoke(app, ["predict", *(str(tmp_path / f"{i}.png") for i in range(3)), "--json", "--no-detect"])
    assert r.exit_code == 0, r.output  # before: "Got unexpected extra arguments"
    assert [line.count('"faces"') for line in r.stdout.splitlines()] == [1, 1, 1]
