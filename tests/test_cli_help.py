"""--help of predict, serve and the data commands: no type placeholders, defaults shown, one --format wording;
several SOURCE arguments (a shell's expansion of *.jpg) accepted (issue 13, item 18)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from ferkit.cli import app

runner = CliRunner()
COMMANDS = ([], ["data"], ["predict"], ["serve"], ["data", "info"], ["data", "audit"], ["data", "convert"])


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "ferkit")
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
    if cmd[:1] == ["data"] and len(cmd) > 1:
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


def test_help_wraps_at_the_terminal_not_at_the_docstrings_line_breaks() -> None:
    # Before: a summary broken in its docstring stayed broken ("pruned when its validation score" / "falls behind"),
    # and a default that did not fit beside a wrapped help went alone on the next line.
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "pruned when its validation score falls behind the median" in r.output, r.output
    assert "<bool>" not in r.output  # -q, -v, --version, --help take no value
    r = runner.invoke(app, ["data", "--help"], env={"COLUMNS": "200"})
    assert "label conflicts and (FER+) not-a-face" in r.output, r.output
    r = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "100"})
    assert any("(0 = full size). [default: 320]" in ln for ln in r.output.splitlines()), r.output
    assert "--merge results/*.jsonl" in " ".join(r.output.split())
    r = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    if r.exit_code == 0:  # labelled lines keep their own line
        assert any(ln.strip().startswith("Whole photos:") for ln in r.output.splitlines()), r.output


def test_tta_modes_in_help_are_the_ones_the_error_offers(tmp_path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.full((48, 48), 90, np.uint8))
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--tta", "bogus", "--no-detect"])
    assert r.exit_code == 2, r.output
    offered = re.search(r"choose one of (.*)", r.output).group(1).strip().split(", ")
    help_text = " ".join(runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).output.split())
    tta_help = help_text[help_text.index("Test-time augmentation:"):]
    assert all(re.search(rf"(?<![\w+]){re.escape(m)}(?![\w+])", tta_help[:160]) for m in offered), (offered, tta_help)
    # A folder: one error for the mistake, not "could not be read" for every image.
    r = runner.invoke(app, ["predict", str(tmp_path), "--tta", "bogus", "--no-detect"])
    assert r.exit_code == 2 and "could be read" not in r.output, r.output


def test_other_libraries_info_lines_are_not_shown() -> None:
    """matplotlib's first run logs "generated new fontManager" at info level: not for ferkit's users (-v shows it)."""
    import subprocess
    import sys

    code = ("import logging, sys; from ferkit.cli.common import set_verbosity; set_verbosity(False, '-v' in sys.argv);"
            "logging.getLogger('matplotlib.font_manager').info('generated new fontManager');"
            "logging.getLogger('ferkit.train').info('ferkit says')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "ferkit says" in err and "fontManager" not in err, err
    err = subprocess.run([sys.executable, "-c", code, "-v"], capture_output=True, text=True, check=True).stderr
    assert "fontManager" in err, err


def test_every_benchmark_and_script_prints_its_help(monkeypatch, capsys) -> None:
    """`python benchmarks/X.py --help` works for each (argparse formats help strings with %: a bare '95% CI' once
    made one crash); run in this process, as each would, without starting its work."""
    import runpy
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [f for d in ("benchmarks", "scripts") for f in sorted((root / d).glob("*.py"))
             if "argparse" in f.read_text() and not f.name.startswith("_")]
    assert len(files) > 10
    for f in files:
        monkeypatch.setattr(sys, "argv", [str(f), "--help"])
        monkeypatch.syspath_prepend(str(f.parent))
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(f), run_name="__main__")
        assert done.value.code == 0, f.name
        assert "usage:" in capsys.readouterr().out, f.name
