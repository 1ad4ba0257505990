"""`ferkit train` commands (filled in by the train work)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
