"""``govesb catalog asyncapi``: the AsyncAPI 3.0 document of the bus or of one institution."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from streams.cli.common import err, load_registry_or_exit, settings_of

catalog_app = typer.Typer(
    help="The event catalogue: documents generated from it.", no_args_is_help=True
)


class _NoAliases(yaml.SafeDumper):
    """Writes repeated values in full: an AsyncAPI reader should not meet YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(document: dict[str, Any], suffix: str) -> str:
    """The document as JSON (``.json``) or YAML (anything else)."""
    if suffix == ".json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(document, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=100)


@catalog_app.command("asyncapi")
def catalog_asyncapi(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="registry YAML")] = Path(
        "deploy/registry.example.yaml"
    ),
    institution: Annotated[
        str | None, typer.Option(help="only what this institution may publish and receive")
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="write to this file: JSON if it ends in .json, else YAML"),
    ] = None,
    kafka_host: Annotated[
        str | None,
        typer.Option(
            help="the server's host:port (default: the configured bootstrap server, if any)"
        ),
    ] = None,
    registry_url: Annotated[
        str | None,
        typer.Option(help="the schema registry URL (default: the configured one, if any)"),
    ] = None,
) -> None:
    """Write the AsyncAPI 3.0 document of the bus (or of --institution) from the registry and
    the catalogue it names."""
    from streams.registry.asyncapi import (
        PLACEHOLDER_HOST,
        PLACEHOLDER_REGISTRY,
        BusServer,
        asyncapi_document,
    )
    from streams.registry.asyncapi_messages import AsyncApiError

    settings = settings_of(ctx)
    if out_file is not None and out_file.suffix not in (".json", ".yaml", ".yml"):
        err.print(f"[red]error:[/red] {out_file}: the name must end in .json, .yaml or .yml")
        raise typer.Exit(2)
    registry = load_registry_or_exit(path)
    samples_path = registry.catalog.path.parent / "samples.yaml"
    try:
        samples = yaml.safe_load(samples_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        samples = {}
    except (OSError, yaml.YAMLError) as error:
        err.print(f"[red]error:[/red] {samples_path}: {error}")
        raise typer.Exit(2) from None
    # Only a configured address is written: the built-in defaults are this machine's.
    configured_host = (
        settings.kafka.bootstrap_servers.split(",")[0].strip()
        if "bootstrap_servers" in settings.kafka.model_fields_set
        else None
    )
    configured_registry = (
        settings.schema_registry.url if "url" in settings.schema_registry.model_fields_set else None
    )
    server = BusServer(
        host=kafka_host or configured_host or PLACEHOLDER_HOST,
        schema_registry_url=registry_url or configured_registry or PLACEHOLDER_REGISTRY,
        security_protocol=settings.kafka.security_protocol,
        sasl_mechanism=settings.kafka.sasl_mechanism,
    )
    try:
        document = asyncapi_document(
            registry,
            samples if isinstance(samples, dict) else {},
            server=server,
            topic_settings=settings.topics,
            institution=institution,
        )
    except AsyncApiError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    if out_file is None:
        sys.stdout.write(render(document, ".yaml"))
        return
    try:
        out_file.write_text(render(document, out_file.suffix), encoding="utf-8")
    except OSError as error:
        err.print(f"[red]error:[/red] cannot write {out_file}: {error.strerror}")
        raise typer.Exit(2) from None
    err.print(
        f"[green]✓[/green] AsyncAPI {document['asyncapi']}: {len(document['channels'])} "
        f"channels, {len(document['operations'])} operations, "
        f"{len(document['components']['messages'])} messages → {out_file}"
    )


def register(app: typer.Typer) -> None:
    """Add ``govesb catalog``."""
    app.add_typer(catalog_app, name="catalog")
