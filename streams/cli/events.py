"""``govesb publish`` and ``govesb tail``: put one event on the bus, read a topic."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from rich.table import Table

from streams.cli.common import (
    Failure,
    err,
    load_catalog,
    out,
    run,
    settings_of,
)


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


def register(app: typer.Typer) -> None:
    """Add ``govesb publish`` and ``govesb tail``."""
    app.command()(publish)
    app.command()(tail)
