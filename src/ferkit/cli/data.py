"""`ferkit data ...`: info, audit, convert."""

import typer

app = typer.Typer(help="Explore, audit and convert datasets.", no_args_is_help=True)
