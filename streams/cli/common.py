"""What every ``govesb`` command shares: settings, output, exit codes.

Connection settings come from the environment (``GOVESB_KAFKA__BOOTSTRAP_SERVERS``,
``GOVESB_SCHEMA_REGISTRY__URL``, …; see ``streams/settings.py``) or from ``--bootstrap`` and
``--schema-registry``. Exit codes: 0 done, 1 problems found or refused, 2 cannot run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from pydantic_settings import BaseSettings
from rich.console import Console

from streams.contract.catalog import Catalog, CatalogError, Problem
from streams.settings import CliSettings, SchemaRegistrySettings

if TYPE_CHECKING:
    from streams.registry.model import BusRegistry

T = TypeVar("T")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Failure(Exception):
    """Ends the command with a message on stderr and exit code 2 (or the one given)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def settings_of(ctx: typer.Context) -> CliSettings:
    """The settings the top-level options produced."""
    settings = ctx.find_root().obj
    if not isinstance(settings, CliSettings):  # called without the root callback (tests)
        settings = CliSettings()
    return settings


def configure(
    ctx: typer.Context,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (host:port,…)")
    ] = None,
    schema_registry: Annotated[
        str | None, typer.Option(help="Confluent-compatible schema registry URL")
    ] = None,
    catalog: Annotated[Path | None, typer.Option(help="the event catalogue YAML")] = None,
) -> None:
    """GovESB command line."""
    settings = CliSettings()
    changes: dict[str, Any] = {}
    if bootstrap:
        changes["kafka"] = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    if schema_registry:
        changes["schema_registry"] = settings.schema_registry.model_copy(
            update={"url": schema_registry}
        )
    if catalog:
        changes["catalog"] = catalog
    ctx.obj = settings.model_copy(update=changes)


Process = TypeVar("Process", bound=BaseSettings)


def process_settings(ctx: typer.Context, model: type[Process], **options: Any) -> Process:
    """A process's settings from its environment, with the connection the top-level options
    gave and the command's own options (those given) on top."""
    cli = settings_of(ctx)
    updates = {"kafka": cli.kafka, "schema_registry": cli.schema_registry}
    updates.update({name: value for name, value in options.items() if value is not None})
    return model().model_copy(update=updates)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn a Failure into its exit code and message."""
    try:
        return asyncio.run(coroutine)
    except Failure as failure:
        err.print(f"[red]error:[/red] {failure}")
        raise typer.Exit(failure.code) from None


def load_catalog(settings: CliSettings) -> Catalog:
    """The catalogue, or exit 2 with the reason."""
    try:
        return Catalog.load(settings.catalog)
    except CatalogError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


def load_registry_or_exit(path: Path) -> BusRegistry:
    """The linted registry at ``path``, or print its problems and exit 1."""
    from streams.registry.model import load_registry

    registry, problems = load_registry(path)
    if registry is None:
        report(problems, str(path))
        raise typer.Exit(1)  # report() has already exited; for the type checker
    return registry


def report(problems: list[Problem], what: str) -> None:
    """Print problems and exit 1, or say all is well."""
    if problems:
        for problem in problems:
            err.print(f"[red]✗[/red] {problem}")
        err.print(f"{len(problems)} problem(s) in {what}")
        raise typer.Exit(1)
    out.print(f"[green]✓[/green] {what}: no problems")


async def registry_client(settings: SchemaRegistrySettings) -> AsyncSchemaRegistryClient:
    client = AsyncSchemaRegistryClient(settings.client_config())
    try:
        await client.get_subjects()
    except Exception as error:
        raise Failure(
            f"schema registry unreachable at {settings.url}: {type(error).__name__}"
        ) from None
    return client
