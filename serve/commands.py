"""Commands of this area (placeholder until it lands)."""

import typer


def register(app: typer.Typer) -> None:
    """Mount this area's commands on the root app."""
