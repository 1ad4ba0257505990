"""Every progress bar of the command line: the library reports progress through one callback type
(`ferkit.utils.ProgressFn`: what, done, total) and this module draws it.

On a terminal: a rich bar per task (count, images/s, ETA), log lines printed above it. Otherwise (a pipe, a log
file, CI): a plain log line every 10% of each task. With -q: nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

from ferkit.cli.common import err_console, quiet
from ferkit.utils import ProgressFn, format_duration

log = logging.getLogger("ferkit")


@contextlib.contextmanager
def progress_bar(unit: str = "img") -> Iterator[ProgressFn]:
    """A ProgressFn for the duration of the block; a new `what` starts a new bar (the old one is cleared)."""
    if quiet():
        yield lambda what, done, total: None
    elif err_console.is_terminal:
        with _rich_bar(unit) as update:
            yield update
    else:
        yield _plain(unit)


@contextlib.contextmanager
def _rich_bar(unit: str) -> Iterator[ProgressFn]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.0f} {unit}/s" if task.speed else "")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        # Log lines go through rich's stand-in for stderr while the bar is up: printed above it, not through it.
        handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
        streams = [h.setStream(sys.stderr) for h in handlers]
        current: dict[str, Any] = {"what": None, "task": None}

        def update(what: str, done: int, total: int) -> None:
            if what != current["what"]:
                if current["task"] is not None:
                    bar.remove_task(current["task"])
                current.update(what=what, task=bar.add_task(what, total=total or None))
            bar.update(current["task"], completed=done, total=total or None)

        try:
            yield update
        finally:
            for h, s in zip(handlers, streams, strict=True):
                if s is not None:
                    h.setStream(s)


def _plain(unit: str) -> ProgressFn:
    tasks: dict[str, dict[str, float]] = {}

    def update(what: str, done: int, total: int) -> None:
        # The clock starts at the first report: the rate is over the units done since then.
        t = tasks.setdefault(what, {"t0": time.monotonic(), "d0": done, "next": 0.1})
        if not total or (done < total and done / total < t["next"]):
            return
        t["next"] = math.floor(10 * done / total) / 10 + 0.1
        seconds = time.monotonic() - t["t0"]
        rate = (done - t["d0"]) / seconds if seconds > 0 and done > t["d0"] else 0.0
        speed = f"  {rate:.0f} {unit}/s" if rate else ""
        eta = f"  ETA {format_duration((total - done) / rate)}" if rate and done < total else ""
        log.info("%s  %3.0f%%  %d/%d%s%s", what, 100 * done / total, done, total, speed, eta)

    return update
