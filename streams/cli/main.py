"""The ``govesb`` command line.

Connection settings come from the environment (``GOVESB_KAFKA__BOOTSTRAP_SERVERS``,
``GOVESB_SCHEMA_REGISTRY__URL``, …; see ``streams/settings.py``) or from ``--bootstrap`` and
``--schema-registry``. Exit codes: 0 done, 1 problems found or refused, 2 cannot run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.errors import KafkaError
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.table import Table

from streams import __version__
from streams.cli.keys import keys_app
from streams.contract.catalog import Catalog, CatalogError, Problem
from streams.registry.acls import DEFAULT_WORKER_GROUP
from streams.settings import CliSettings, SchemaRegistrySettings

T = TypeVar("T")

app = typer.Typer(
    help="GovESB: the Government Enterprise Service Bus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,  # locals may hold private keys
)
schemas_app = typer.Typer(help="Event schemas: check and register.", no_args_is_help=True)
registry_app = typer.Typer(
    help="Registry of institutions and data-sharing agreements.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(schemas_app, name="schemas")
app.add_typer(registry_app, name="registry")
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

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


@app.callback()
def main(
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


def report(problems: list[Problem], what: str) -> None:
    """Print problems and exit 1, or say all is well."""
    if problems:
        for problem in problems:
            err.print(f"[red]✗[/red] {problem}")
        err.print(f"{len(problems)} problem(s) in {what}")
        raise typer.Exit(1)
    out.print(f"[green]✓[/green] {what}: no problems")


async def _registry_client(settings: SchemaRegistrySettings) -> AsyncSchemaRegistryClient:
    client = AsyncSchemaRegistryClient(settings.client_config())
    try:
        await client.get_subjects()
    except Exception as error:
        raise Failure(
            f"schema registry unreachable at {settings.url}: {type(error).__name__}"
        ) from None
    return client


@app.command()
def version() -> None:
    """Print the GovESB version."""
    out.print(f"govesb {__version__}")


# --------------------------------------------------------------------------- schemas


@schemas_app.command("check")
def schemas_check(
    ctx: typer.Context,
    offline: Annotated[
        bool, typer.Option(help="only check the files; do not compare with the registry")
    ] = False,
) -> None:
    """Check every schema and the catalogue; compare each with its registered history."""
    from streams.registry.governance import check_against_registry, check_catalog_consistency

    settings = settings_of(ctx)
    catalog = load_catalog(settings)
    problems = check_catalog_consistency(catalog)
    if not offline:

        async def against_registry() -> list[Problem]:
            client = await _registry_client(settings.schema_registry)
            return await check_against_registry(catalog, client)

        problems += run(against_registry())
    where = "files" if offline else f"files and registry {settings.schema_registry.url}"
    report(problems, f"{len(catalog)} event types ({where})")


@schemas_app.command("register")
def schemas_register(ctx: typer.Context) -> None:
    """Register new schema versions; refuse everything if any change is incompatible."""
    from streams.registry.governance import register_catalog

    settings = settings_of(ctx)
    catalog = load_catalog(settings)

    async def register() -> Any:
        client = await _registry_client(settings.schema_registry)
        return await register_catalog(catalog, client)

    done, problems = run(register())
    if problems:
        err.print("nothing registered:")
        report(problems, "the catalogue")
    table = Table("event type", "schema id", "version", "")
    for registration in done:
        table.add_row(
            registration.event_type,
            str(registration.schema_id),
            str(registration.version),
            "[green]new[/green]" if registration.new else "unchanged",
        )
    out.print(table)


# --------------------------------------------------------------------------- registry


def _load_registry(path: Path) -> Any:
    from streams.registry.model import load_registry

    registry, problems = load_registry(path)
    if registry is None:
        report(problems, str(path))
    return registry


@registry_app.command("lint")
def registry_lint(
    path: Annotated[Path, typer.Argument(help="registry YAML")] = Path(
        "deploy/registry.example.yaml"
    ),
) -> None:
    """Check a registry YAML: institutions, keys, subscriptions against the catalogue."""
    registry = _load_registry(path)
    out.print(
        f"[green]✓[/green] {path}: {len(registry.document.institutions)} institutions, "
        f"{len(registry.catalog)} event types, {len(registry.document.subscriptions)} "
        "subscriptions"
    )


@registry_app.command("apply")
def registry_apply(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="registry YAML")] = Path(
        "deploy/registry.example.yaml"
    ),
    worker_group: Annotated[
        str, typer.Option(help="the pipeline workers' consumer group (their GOVESB_APP_ID)")
    ] = DEFAULT_WORKER_GROUP,
) -> None:
    """Lint, then create missing topics, set the Kafka ACLs (where the cluster enforces them)
    and write changed records to esb.registry."""
    from confluent_kafka import KafkaException

    from streams.registry.acls import principal_problems
    from streams.registry.sync import apply_registry

    settings = settings_of(ctx)
    registry = _load_registry(path)
    problems = principal_problems(registry)
    if problems:
        report(problems, str(path))

    async def apply() -> Any:
        try:
            return await asyncio.wait_for(
                apply_registry(
                    registry, settings.kafka, settings.topics, worker_group=worker_group
                ),
                120,
            )
        except (TimeoutError, OSError) as error:
            raise Failure(
                f"Kafka at {settings.kafka.bootstrap_servers} did not answer: "
                f"{type(error).__name__} {error}"
            ) from None
        except (KafkaError, KafkaException) as error:
            raise Failure(
                f"Kafka at {settings.kafka.bootstrap_servers} refused: {type(error).__name__} "
                f"{error}"
            ) from None

    result = run(apply())
    out.print(
        f"topics created: {len(result.topics_created)}, records written: "
        f"{len(result.written)}, removed: {len(result.deleted)}"
    )
    acls = result.acls
    if acls.skipped:
        out.print(f"[yellow]ACLs: {acls.skipped}, skipped[/yellow]")
    else:
        out.print(
            f"ACLs: {len(acls.created)} created, {len(acls.deleted)} deleted, {acls.kept} unchanged"
        )
    for name in result.topics_created:
        out.print(f"  + topic {name}")
    for acl in acls.created:
        out.print(f"  + acl {acl}")
    for acl in acls.deleted:
        out.print(f"  - acl {acl}")
    for key in result.written:
        out.print(f"  ~ {key}")
    for key in result.deleted:
        out.print(f"  - {key}")


@registry_app.command("export")
def registry_export(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="registry YAML")] = Path(
        "deploy/registry.example.yaml"
    ),
    strimzi: Annotated[
        bool, typer.Option("--strimzi", help="Strimzi KafkaTopic and KafkaUser resources")
    ] = False,
    cluster: Annotated[str, typer.Option(help="the Strimzi Kafka cluster's name")] = "govesb",
    namespace: Annotated[
        str | None, typer.Option(help="metadata.namespace of every resource")
    ] = None,
    out_dir: Annotated[
        str, typer.Option("--out", help="a directory (one file per kind), or - for stdout")
    ] = "-",
) -> None:
    """Lint, then write the registry's topics and Kafka users as Kubernetes resources."""
    from streams.registry.strimzi import export_problems, files_by_kind, strimzi_resources, to_yaml

    if not strimzi:
        err.print("[red]error:[/red] choose the output: --strimzi (the only one so far)")
        raise typer.Exit(2)
    registry = _load_registry(path)
    problems = export_problems(registry)
    if problems:
        report(problems, str(path))
    resources = strimzi_resources(
        registry, settings_of(ctx).topics, cluster=cluster, namespace=namespace
    )
    source = path.as_posix()
    if out_dir == "-":
        sys.stdout.write(to_yaml(resources, source, cluster))
        where = "stdout"
    else:
        directory = Path(out_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name, text in files_by_kind(resources, source, cluster).items():
                (directory / name).write_text(text, encoding="utf-8")
        except OSError as error:
            err.print(f"[red]error:[/red] cannot write to {directory}: {error.strerror}")
            raise typer.Exit(2) from None
        where = str(directory)
    kinds = [str(resource["kind"]) for resource in resources]
    counts = ", ".join(f"{kinds.count(kind)} {kind}" for kind in sorted(set(kinds)))
    err.print(f"[green]✓[/green] {path}: {counts} for Strimzi cluster {cluster} → {where}")


# --------------------------------------------------------------------------- audit


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    topic: Annotated[str, typer.Option(help="audit topic")] = "esb.audit",
) -> None:
    """Check every hash chain in the audit log; say where any chain breaks (exit 1)."""
    from streams.audit.verify import verify_topic

    settings = settings_of(ctx)

    async def check() -> Any:
        try:
            return await asyncio.wait_for(verify_topic(settings.kafka, topic), 300)
        except LookupError as error:
            raise Failure(str(error)) from None
        except (TimeoutError, OSError, KafkaError) as error:
            raise Failure(f"Kafka at {settings.kafka.bootstrap_servers}: {error}") from None

    reports = run(check())
    table = Table("chain", "records", "head", "status")
    broken = 0
    for report in reports.values():
        table.add_row(
            report.chain,
            str(report.records),
            report.head[:16],
            "[green]intact[/green]"
            if report.intact
            else f"[red]{len(report.breaks)} break(s)[/red]",
        )
        broken += len(report.breaks)
    out.print(table)
    for report in reports.values():
        for problem in report.breaks:
            err.print(f"[red]✗[/red] {report.chain}: {problem}")
    if broken:
        raise typer.Exit(1)
    out.print(f"[green]✓[/green] {len(reports)} chain(s) intact")


# --------------------------------------------------------------------------- worker


@app.command()
def worker(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(help="port of /health and /metrics")] = None,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Run the pipeline worker (validate, route, transform, fan out) until SIGTERM."""
    from streams.pipeline.app import run_worker
    from streams.settings import WorkerSettings

    settings = process_settings(ctx, WorkerSettings, web_port=web_port)
    if settings.signing_key_file is None or not settings.signing_key_id:
        err.print(
            "[red]error:[/red] set GOVESB_SIGNING_KEY_FILE and GOVESB_SIGNING_KEY_ID: "
            "the bus re-signs every delivery"
        )
        raise typer.Exit(2)
    run_worker(settings, loglevel)


# --------------------------------------------------------------------------- publish, tail


def _payload(samples: Path, event_type: str, data: Path | None, sample: bool) -> Any:
    if sample == (data is not None):
        err.print("[red]error:[/red] give exactly one of --data FILE and --sample")
        raise typer.Exit(2)
    try:
        if data is None:
            import yaml

            return yaml.safe_load(samples.read_text(encoding="utf-8"))[event_type]
        text = sys.stdin.read() if str(data) == "-" else data.read_text(encoding="utf-8")
        return json.loads(text)
    except KeyError:
        err.print(f"[red]error:[/red] {samples} has no sample for {event_type}")
    except (OSError, ValueError) as error:
        err.print(f"[red]error:[/red] cannot read the payload: {error}")
    raise typer.Exit(2)


@app.command()
def publish(
    ctx: typer.Context,
    institution: Annotated[str, typer.Option("--as", help="publishing institution id")],
    event_type: Annotated[str, typer.Option("--type", help="event type (Avro full name)")],
    key_file: Annotated[Path, typer.Option(help="the institution's private key (PEM/DER b64)")],
    data: Annotated[Path | None, typer.Option(help="JSON payload file, or - for stdin")] = None,
    sample: Annotated[
        bool, typer.Option(help="publish the type's sample payload from schemas/samples.yaml")
    ] = False,
    system: Annotated[str, typer.Option(help="publishing system id")] = "cli",
    key_id: Annotated[
        str | None, typer.Option(help="registered key id (default: derived from the key)")
    ] = None,
    event_id: Annotated[
        str | None, typer.Option(help="reuse an event id (retry of the same event)")
    ] = None,
    correlation_id: Annotated[str | None, typer.Option(help="ce_correlationid")] = None,
) -> None:
    """Validate, encode, sign and publish one event; print its id after the broker ack."""
    from streams.client.publisher import Publisher, PublishError, publishable
    from streams.contract.jsonavro import JsonAvroError, from_json
    from streams.contract.signing import SigningError, key_id_for, load_private_key

    settings = settings_of(ctx)
    catalog = load_catalog(settings)
    payload = _payload(settings.catalog.parent / "samples.yaml", event_type, data, sample)
    try:
        key = load_private_key(key_file.read_bytes())
    except (OSError, SigningError) as error:
        err.print(f"[red]error:[/red] cannot load the key {key_file}: {type(error).__name__}")
        raise typer.Exit(2) from None
    try:
        entry = publishable(catalog, institution, event_type)
    except PublishError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    try:
        payload = from_json(entry.schema, payload)
    except JsonAvroError as error:
        err.print(f"[red]error:[/red] {event_type} payload does not match its schema: {error}")
        raise typer.Exit(1) from None

    async def send() -> str:
        publisher = Publisher.connect(
            institution=institution,
            system=system,
            key_id=key_id or key_id_for(institution, key.public_key()),
            key=key,
            kafka=settings.kafka,
            schema_registry=settings.schema_registry,
            catalog=catalog,
        )
        try:
            await asyncio.wait_for(publisher.start(), 30)
        except (TimeoutError, OSError, KafkaError) as error:
            await publisher.stop()
            raise Failure(
                f"Kafka at {settings.kafka.bootstrap_servers} did not answer: {error}"
            ) from None
        try:
            return await asyncio.wait_for(
                publisher.publish(
                    event_type, payload, event_id=event_id, correlation_id=correlation_id
                ),
                60,
            )
        except PublishError as error:
            raise Failure(str(error), 1) from None
        finally:
            await publisher.stop()

    out.print(run(send()))


@app.command()
def tail(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="topic to read, e.g. esb.ingress.nida")],
    from_beginning: Annotated[
        bool, typer.Option(help="start at the oldest record instead of new ones")
    ] = True,
    max_records: Annotated[int, typer.Option("--max", help="stop after N records (0: never)")] = 0,
    idle_timeout: Annotated[
        float, typer.Option(help="stop after this many seconds without records (0: never)")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Decode and print envelopes and payloads of a topic."""
    from streams.client.tail import tail_topic

    settings = settings_of(ctx)
    printer = _json_printer if as_json else _rich_printer

    async def follow() -> int:
        try:
            return await tail_topic(
                settings.kafka,
                settings.schema_registry,
                topic,
                printer,
                from_beginning=from_beginning,
                max_records=max_records,
                idle_timeout=idle_timeout,
            )
        except LookupError as error:
            raise Failure(str(error)) from None

    try:
        count = run(follow())
    except KeyboardInterrupt:
        return
    err.print(f"{count} record(s) from {topic}")


def _json_printer(view: dict[str, Any]) -> None:
    out.print_json(json.dumps(view, ensure_ascii=False), indent=None)


def _rich_printer(view: dict[str, Any]) -> None:
    headers = view["headers"]
    title = (
        f"{view['topic']}[{view['partition']}]@{view['offset']}  key={view['key']}  "
        f"{headers.get('ce_type', '')}"
    )
    table = Table(title=title, show_header=False, title_justify="left")
    for name, value in headers.items():
        table.add_row(name, value)
    if "error" in view:
        table.add_row("[red]error[/red]", view["error"])
    else:
        table.add_row("schema id", str(view.get("schema_id")))
        table.add_row("payload", json.dumps(view["payload"], indent=2, ensure_ascii=False))
    out.print(table)
