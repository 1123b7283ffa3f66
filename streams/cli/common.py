"""What every ``govesb`` command shares: settings, output, exit codes.

Connection settings come from the environment (``GOVESB_KAFKA__BOOTSTRAP_SERVERS``,
``GOVESB_SCHEMA_REGISTRY__URL``, …; see ``streams/settings.py``) or from ``--bootstrap`` and
``--schema-registry``. Exit codes: 0 done, 1 problems found or refused, 2 cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError
from rich.console import Console
from rich.markup import escape

from streams.contract.catalog import Catalog, CatalogError, Problem
from streams.settings import CliSettings, KafkaSettings, SchemaRegistrySettings

if TYPE_CHECKING:
    from streams.client.records import RecordFilter

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


def variable_of(location: tuple[int | str, ...]) -> str:
    """The environment variable of a setting, from where pydantic located it:
    ``("kafka", "bootstrap_servers")`` -> ``GOVESB_KAFKA__BOOTSTRAP_SERVERS``."""
    names = []
    for part in location:
        if not isinstance(part, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            break  # pydantic's own steps (a union member, a validator) after the field
        names.append(part.upper())
    return "GOVESB_" + "__".join(names)


def settings_problem(
    error: ValidationError | SettingsError, options: Mapping[tuple[str, ...], str] = {}
) -> str:
    """One line naming each setting that is missing or malformed and what is wrong with it,
    never its value (it may be a secret). ``options`` names the command-line option that
    gave a setting, when one did."""
    if isinstance(error, SettingsError):
        # "error parsing value for field "kafka" from source "EnvSettingsSource""
        field = re.search(r'field "([^"]+)"', str(error))
        if field is None:
            return f"the settings cannot be read: {type(error).__name__}"
        return (
            f"{variable_of((field.group(1),))}: cannot be read (a JSON object is expected; or "
            f"set {variable_of((field.group(1),))}__<NAME> variables)"
        )
    problems = []
    for found in error.errors(include_url=False, include_input=False, include_context=False):
        location = tuple(str(part) for part in found["loc"])
        name = options.get(location) or variable_of(found["loc"])
        message = found["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {'missing' if found['type'] == 'missing' else message}")
    return "; ".join(problems)


@contextlib.contextmanager
def settings_checked(options: Mapping[tuple[str, ...], str] = {}) -> Iterator[None]:
    """Settings built in this block that are missing or malformed end the command with one
    line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except (ValidationError, SettingsError) as error:
        err.print(f"[red]error:[/red] {escape(settings_problem(error, options))}")
        raise typer.Exit(2) from None


def settings_of(ctx: typer.Context) -> CliSettings:
    """The settings the top-level options produced."""
    settings = ctx.find_root().obj
    if not isinstance(settings, CliSettings):  # called without the root callback (tests)
        with settings_checked():
            settings = CliSettings()
    return settings


CONNECTION_OPTIONS = {
    ("kafka", "bootstrap_servers"): "--bootstrap",
    ("schema_registry", "url"): "--schema-registry",
    ("catalog",): "--catalog",
}


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
    # Options win over the environment, and are checked like it: given as the settings'
    # own input, so an option replaces a malformed variable instead of failing on it.
    overrides: dict[str, Any] = {}
    if bootstrap is not None:
        overrides["kafka"] = {"bootstrap_servers": bootstrap}
    if schema_registry is not None:
        overrides["schema_registry"] = {"url": schema_registry}
    if catalog is not None:
        overrides["catalog"] = catalog
    given = {where: option for where, option in CONNECTION_OPTIONS.items() if where[0] in overrides}
    with settings_checked(given):
        ctx.obj = CliSettings(**overrides)


Process = TypeVar("Process", bound=BaseSettings)


def process_settings(ctx: typer.Context, model: type[Process], **options: Any) -> Process:
    """A process's settings from its environment, with the connection the top-level options
    gave and the command's own options (those given) on top; exit 2 with one line when a
    setting is missing or malformed."""
    cli = settings_of(ctx)
    updates: dict[str, Any] = {"kafka": cli.kafka, "schema_registry": cli.schema_registry}
    given = {name: value for name, value in options.items() if value is not None}
    updates.update(given)
    flags: dict[tuple[str, ...], str] = {(name,): "--" + name.replace("_", "-") for name in given}
    with settings_checked(flags):
        return model(**updates)


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
    try:
        client = AsyncSchemaRegistryClient(settings.client_config())
    except (ValueError, TypeError) as error:  # its message quotes the URL: not repeated here
        raise Failure(
            f"GOVESB_SCHEMA_REGISTRY__URL: refused by the registry client ({type(error).__name__})"
        ) from None
    try:
        await client.get_subjects()
    except Exception as error:
        raise Failure(
            f"schema registry unreachable at {settings.url}: {type(error).__name__}"
        ) from None
    return client


def record_filter(
    since: str | None, ids: str | None, headers: dict[str, str | None] | None = None
) -> RecordFilter:
    """The filter ``--since``, ``--ids`` (comma separated) and header options describe.

    ``headers`` maps a header name to an option's value (comma separated; None: any).
    Exits 2 when ``--since`` is not an RFC 3339 time with an offset.
    """
    from streams.client.records import RecordFilter
    from streams.contract.envelope import parse_time

    try:
        moment = parse_time(since) if since else None
    except ValueError:
        err.print(f"[red]error:[/red] --since {since!r} is not an RFC 3339 time with offset")
        raise typer.Exit(2) from None

    def values(text: str | None) -> frozenset[str] | None:
        return frozenset(v.strip() for v in text.split(",") if v.strip()) if text else None

    wanted = {name: found for name, text in (headers or {}).items() if (found := values(text))}
    return RecordFilter(moment, values(ids), wanted)


def read_set_aside(kafka: KafkaSettings, read: Coroutine[Any, Any, T]) -> T:
    """Run a read of set-aside records (bounded); exit 2 when Kafka or the topic is missing."""
    from aiokafka.errors import KafkaError

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(read, 120)
        except LookupError as error:
            raise Failure(str(error)) from None
        except (TimeoutError, OSError, KafkaError) as error:
            raise Failure(f"Kafka at {kafka.bootstrap_servers}: {error}") from None

    return run(bounded())
