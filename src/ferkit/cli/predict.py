"""`ferkit predict` commands (filled in by the predict work)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
