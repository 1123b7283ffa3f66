"""The ``govesb`` command line, assembled: the bus's own commands plus those a caller adds.

Connection settings come from the environment (``GOVESB_KAFKA__BOOTSTRAP_SERVERS``,
``GOVESB_SCHEMA_REGISTRY__URL``, …; see ``streams/settings.py``) or from ``--bootstrap`` and
``--schema-registry``. Exit codes: 0 done, 1 problems found or refused, 2 cannot run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import typer

from streams import __version__
from streams.cli import (
    audit,
    catalog,
    dr,
    events,
    keys,
    registry,
    rejected,
    request,
    schemas,
    trace,
    worker,
)
from streams.cli.common import configure, out

Register = Callable[[typer.Typer], None]
"""Adds one command or command group to the root app."""

BUS_COMMANDS: tuple[Register, ...] = (
    worker.register,
    events.register,
    keys.register,
    schemas.register,
    catalog.register,
    registry.register,
    audit.register,
    rejected.register,
    request.register,
    trace.register,
    dr.register,
)


def version() -> None:
    """Print the GovESB version."""
    out.print(f"govesb {__version__}")


def build_app(extra: Iterable[Register] = ()) -> typer.Typer:
    """A new root ``govesb`` app with the bus's commands and then ``extra``'s."""
    app = typer.Typer(
        help="GovESB: the Government Enterprise Service Bus.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,  # locals may hold private keys
    )
    app.callback()(configure)
    app.command()(version)
    for register in (*BUS_COMMANDS, *extra):
        register(app)
    return app
