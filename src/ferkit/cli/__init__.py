"""The `ferkit` command line: a thin typer layer over the library, one module per command group."""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer import rich_utils
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ferkit import __version__
from ferkit.cli.common import set_verbosity

GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def _plain_params(command: Any, ctx: Any) -> None:
    """--help without type placeholders: a flag shows no `<bool>`, an argument no `<str>` beside its name; options
    that take a value show their metavar (PATH, N, ...)."""
    for p in command.get_params(ctx):
        if isinstance(p, TyperArgument):
            p.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        elif isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
            p.metavar = ""


def unwrap(text: str | None) -> str | None:
    """Help text with the docstring's line breaks inside a paragraph taken out, so that the terminal's width wraps
    it (rich mode keeps them, and a line broken at 120 columns folds raggedly at 80); paragraphs stay, and so does
    a line that starts with a label ("Example: ...", "Whole photos: ...")."""
    if not text:
        return text
    paragraphs = []
    for par in inspect.cleandoc(text).split("\n\n"):
        lines = [" ".join(line.split()) for line in par.split("\n")]
        out = lines[0]
        for line in lines[1:]:
            out += ("\n" if _LABELLED.match(line) else " ") + line
        paragraphs.append(out)
    return "\n\n".join(paragraphs)


_LABELLED = re.compile(r"[A-Z][\w ()+-]{0,30}: ")


def _inline_default(**kwargs: Any) -> Any:
    """An option's help with its [default: ...] run on after the text, as one paragraph: typer lays them out as
    columns, which puts the default alone on a line whenever the help wraps."""
    columns = _parameter_help(**kwargs)
    parts = getattr(columns, "renderables", None)
    if parts and all(isinstance(r, rich_utils.Text) for r in parts):
        return rich_utils.Text(" ").join(parts)
    return columns


_parameter_help = getattr(rich_utils, "_get_parameter_help", None)
if _parameter_help is not None:  # a private typer function: where it is gone, its layout stays as it is
    rich_utils._get_parameter_help = _inline_default


class _Group(TyperGroup):
    """A command group's --help: flags without `<bool>`, and each command's one-line summary unwrapped."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_params(self, ctx)
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.short_help and cmd.help:
                cmd.short_help = unwrap(cmd.help.split("\n\n")[0])
        super().format_help(ctx, formatter)


class _AnywhereFlags(_Group):
    """-q/-v are accepted after the subcommand too (`ferkit predict x.jpg -q`): moved in front before parsing."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest + args[end:])


app = typer.Typer(
    cls=_AnywhereFlags,
    name="ferkit",
    help="Facial expression recognition: explore data, train, evaluate, predict and serve, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ferkit {__version__}")
        raise typer.Exit()


@app.callback(cls=_AnywhereFlags)
def _root(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Less output: warnings and errors only."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="More output, and tracebacks for internal errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    set_verbosity(quiet, verbose)


class _Command(TyperCommand):
    """--help without type placeholders (_plain_params) and with the docstring's paragraphs unwrapped."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_params(self, ctx)
        self.help = unwrap(self.help)
        super().format_help(ctx, formatter)


def _register() -> None:
    # Each group lives in its own module; modules that need the training stack import it lazily.
    from ferkit.cli import data, evaluate, predict, serve, train

    app.add_typer(data.app, name="data", cls=_Group)
    for module in (train, evaluate, predict, serve):
        module.register(app)
    for info in [*app.registered_commands, *data.app.registered_commands]:
        if info.cls in (None, TyperCommand):
            info.cls = _Command


_register()


def main() -> None:
    app()
