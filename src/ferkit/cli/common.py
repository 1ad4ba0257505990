"""Shared command-line conventions: exit codes (0 ok, 2 user's mistake, 1 internal error), --json, -q/-v."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console, RenderHook
from rich.segment import Segment
from rich.text import Text

from ferkit.errors import FerkitError
from ferkit.utils import json_default, shorten

_verbosity = {"level": 0}


def one_line(text: str) -> str:
    """User text (a file name, a CSV label, a zip's class folder, a model's metadata) as the terminal may show it:
    control and format characters (ESC sequences, newlines, right-to-left overrides, ...) as \\x.. / \\u.... codes,
    so that a name can neither restyle nor rewrite what the user sees. Every line ferkit prints goes through it."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Escaped:
    """A renderable whose text segments pass through one_line, line by line (rich's own line breaks and cursor
    controls stay): wherever a name reaches a table, a title or a message, its escape codes show as text."""

    def __init__(self, inner: object):
        self.inner = inner

    def __rich_console__(self, console: Console, options: object):
        for seg in console.render(self.inner, options):  # type: ignore[arg-type]
            if seg.control or seg.text.isprintable():
                yield seg
            else:
                yield Segment("\n".join(one_line(part) for part in seg.text.split("\n")), seg.style)


class _EscapeHook(RenderHook):
    def process_renderables(self, renderables: list) -> list:
        return [_Escaped(r) for r in renderables]


def _console(**kwargs: object) -> Console:
    # Names and messages come from users: rich must never read them as markup ("[/x]" raises) or emoji codes (styles
    # are given as arguments: style=..., Text), and their control characters are shown escaped (_Escaped).
    c = Console(markup=False, emoji=False, **kwargs)  # type: ignore[arg-type]
    c.push_render_hook(_EscapeHook())
    return c


console = _console()
err_console = _console(stderr=True)


class _EscapingFormatter(logging.Formatter):
    """Log lines (the library's 'model x: classes ...', progress lines) with user text escaped, as on the consoles;
    a traceback (-v) is appended after, as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return one_line(super().formatMessage(record))


def set_verbosity(quiet: bool, verbose: bool) -> None:
    _verbosity["level"] = -1 if quiet else (1 if verbose else 0)
    # ferkit's own messages at the level asked for; other libraries' only from warnings up unless -v: their info
    # lines ("generated new fontManager" from matplotlib's first run, ...) are not news to a ferkit user.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_EscapingFormatter("%(message)s"))
    logging.getLogger("ferkit").setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))


def quiet() -> bool:
    return _verbosity["level"] < 0


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A user's mistake becomes one line on stderr and exit 2; a bug becomes exit 1 (traceback with -v)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FerkitError as e:
            err_console.print(Text.assemble(("error:", "red"), f" {one_line(str(e))}"), highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            # The reader went away (`ferkit predict ... --json | head`): stop quietly, as Unix tools do; stdout is
            # pointed at /dev/null so the interpreter's final flush does not complain again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as e:
            if e.filename is None:
                return _internal(e)
            # The file system refused a path the user gave (longer than it allows, no permission, ...): wherever
            # it was first touched, that is the user's input, not a bug.
            err_console.print(Text.assemble(("error:", "red"), f" {one_line(shorten(str(e.filename)))}: "
                                                               f"{one_line(e.strerror or str(e))}"),
                              highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:
            return _internal(e)

    return wrapper


def _internal(e: Exception) -> None:
    """A bug: exit 1, with the traceback under -v."""
    if _verbosity["level"] > 0:
        raise e
    err_console.print(Text.assemble(("internal error:", "red"),
                                    f" {one_line(f'{type(e).__name__}: {e}')[:500]} (run with -v for details)"),
                      highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None




def print_json(obj: Any) -> None:
    """Machine-readable output on stdout, nothing else on it."""
    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")


TTA_HELP = ("Test-time augmentation: none, flip (the mirror), crops (centre and four corners), flip+crops (all ten; "
            "also ten_crop), auto (the mode the model's card chose on validation data); the views' probabilities are "
            "averaged.")


def tta_option(help: str = TTA_HELP) -> Any:
    return typer.Option("none", "--tta", metavar="MODE", help=help)


def check_tta(value: str) -> str:
    """--tta checked before any work, so a wrong mode is one error, not a no-op or one error per image."""
    from ferkit.inference.options import check_tta as check  # not imported for --help

    check(value)
    return value
