"""``govesb registry lint|apply|export``: the registry of institutions and agreements."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError

from streams.cli.common import (
    Failure,
    err,
    load_registry_or_exit,
    out,
    registry_client,
    report,
    run,
    settings_of,
)
from streams.contract.catalog import Problem
from streams.registry.acls import DEFAULT_WORKER_GROUP

registry_app = typer.Typer(
    help="Registry of institutions and data-sharing agreements.", no_args_is_help=True
)


@registry_app.command("lint")
def registry_lint(
    path: Annotated[Path, typer.Argument(help="registry YAML")] = Path(
        "deploy/registry.example.yaml"
    ),
) -> None:
    """Check a registry YAML: institutions, keys, subscriptions against the catalogue.

    Offline: whether a pinned schema version exists is known only to the schema registry,
    which ``registry apply`` asks before it writes anything.
    """
    registry = load_registry_or_exit(path)
    out.print(
        f"[green]✓[/green] {path}: {len(registry.document.institutions)} institutions, "
        f"{len(registry.catalog)} event types, {len(registry.document.subscriptions)} "
        f"subscriptions, {len(registry.document.services)} services, "
        f"{len(registry.document.grants)} grants"
    )
    pinned = sum(s.schema_version != "latest" for s in registry.document.subscriptions)
    if pinned:
        out.print(
            f"  {pinned} agreement(s) pin a schema version: not checked offline; "
            "`govesb registry apply` checks them against the schema registry"
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
    """Lint, check pinned schema versions against the schema registry, then create missing
    topics, set the Kafka ACLs (where the cluster enforces them) and write changed records to
    esb.registry. Any problem: nothing is written."""
    from confluent_kafka import KafkaException
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streams.registry.acls import principal_problems
    from streams.registry.governance import pinned_version_problems
    from streams.registry.sync import apply_registry

    settings = settings_of(ctx)
    registry = load_registry_or_exit(path)
    problems = principal_problems(registry)
    if problems:
        report(problems, str(path))

    async def check_pins() -> list[Problem]:
        if all(s.schema_version == "latest" for s in registry.document.subscriptions):
            return []
        client = await registry_client(settings.schema_registry)
        try:
            return await pinned_version_problems(registry, client)
        except SchemaRegistryError as error:
            raise Failure(
                f"schema registry at {settings.schema_registry.url} refused: "
                f"{error.http_status_code} {error.error_message}"
            ) from None

    problems = run(check_pins())
    if problems:
        err.print("nothing applied:")
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
    registry = load_registry_or_exit(path)
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


def register(app: typer.Typer) -> None:
    """Add ``govesb registry``."""
    app.add_typer(registry_app, name="registry")
