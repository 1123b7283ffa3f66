"""The ``govesb`` command line."""

from __future__ import annotations

import typer

from streams import __version__

app = typer.Typer(help="GovESB: the Government Enterprise Service Bus.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the GovESB version."""
    typer.echo(f"govesb {__version__}")
