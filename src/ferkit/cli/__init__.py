"""The `ferkit` command line: a thin typer layer over the library, one module per command group."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ferkit import __version__
from ferkit.cli.common import set_verbosity

GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


class _AnywhereFlags(TyperGroup):
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
    """--help without type placeholders: a flag shows no `<bool>`, an argument no `<str>` beside its name; options
    that take a value show their metavar (PATH, N, ...)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                p.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            elif isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""
        super().format_help(ctx, formatter)


def _register() -> None:
    # Each group lives in its own module; modules that need the training stack import it lazily.
    from ferkit.cli import data, evaluate, predict, serve, train

    app.add_typer(data.app, name="data")
    for module in (train, evaluate, predict, serve):
        module.register(app)
    for info in [*app.registered_commands, *data.app.registered_commands]:
        if info.cls in (None, TyperCommand):
            info.cls = _Command


_register()


def main() -> None:
    app()
