"""The `ferkit` command line: a thin typer layer over the library, one module per command group."""

from __future__ import annotations

import typer

from ferkit import __version__
from ferkit.cli.common import set_verbosity

app = typer.Typer(
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


@app.callback()
def _root(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Less output: warnings and errors only."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="More output, and tracebacks for internal errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    set_verbosity(quiet, verbose)


def _register() -> None:
    # Each group lives in its own module; modules that need the training stack import it lazily.
    from ferkit.cli import data, evaluate, predict, serve, train

    app.add_typer(data.app, name="data")
    for module in (train, evaluate, predict, serve):
        module.register(app)


_register()


def main() -> None:
    app()
