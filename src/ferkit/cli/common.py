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
from rich.console import Console
from rich.text import Text

from ferkit.errors import FerkitError
from ferkit.utils import json_default

# File names, labels and messages come from users: rich must never read them as markup ("[/x]" raises) or emoji
# codes. Styles are given as arguments (style=..., Text) instead of inline tags.
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)
_verbosity = {"level": 0}


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
        except Exception as e:
            if _verbosity["level"] > 0:
                raise
            err_console.print(Text.assemble(("internal error:", "red"),
                                            f" {type(e).__name__}: {e} (run with -v for details)"),
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def one_line(text: str) -> str:
    """User text inside a message shown on one line: control characters (newlines, escapes, ...) as \\x.. codes."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout, nothing else on it."""
    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")
