"""Placeholder: commands of this area are registered here by its owner."""
import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
