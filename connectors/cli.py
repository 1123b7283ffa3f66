"""The ``govesb`` command line: the commands of ``streams.cli.main`` plus the connectors'.

``connect http-sink``, ``connect provider``, ``connect gateway`` and ``dlq list|replay`` live
here so that the contract package (``streams``) never imports the connectors.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from streams.cli.common import (
    err,
    out,
    process_settings,
    read_set_aside,
    record_filter,
    run,
    settings_of,
)
from streams.cli.main import build_app

dlq_app = typer.Typer(help="Dead letters of the HTTP sink.", no_args_is_help=True)
connect_app = typer.Typer(help="Connectors between the bus and HTTP systems.", no_args_is_help=True)


# --------------------------------------------------------------------------- dlq


def _dead_letters(
    ctx: typer.Context, subscriber: str, since: str | None, ids: str | None
) -> tuple[Any, list[Any]]:
    from connectors.http_sink.dlq import read_dead_letters

    settings = settings_of(ctx)
    wanted = record_filter(since, ids)
    letters = read_set_aside(
        settings.kafka,
        read_dead_letters(
            settings.kafka, subscriber, wanted.since, set(wanted.ids) if wanted.ids else None
        ),
    )
    return settings, letters


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    subscriber: Annotated[str, typer.Option(help="institution whose dead letters to show")],
    since: Annotated[str | None, typer.Option(help="only those since this time")] = None,
    ids: Annotated[str | None, typer.Option(help="only these event ids (comma separated)")] = None,
) -> None:
    """List dead letters: event id, type, status, attempts, error."""
    _, letters = _dead_letters(ctx, subscriber, since, ids)
    table = Table("time", "event id", "type", "status", "attempts", "error")
    for letter in letters:
        table.add_row(
            letter.timestamp.isoformat(timespec="seconds"),
            letter.event_id,
            letter.header("ce_type"),
            letter.header("esb_status"),
            letter.header("esb_attempts"),
            letter.header("esb_error")[:80],
        )
    out.print(table)
    out.print(f"{len(letters)} dead letter(s) for {subscriber}")


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    subscriber: Annotated[str, typer.Option(help="institution whose dead letters to resend")],
    since: Annotated[str | None, typer.Option(help="only those since this time")] = None,
    ids: Annotated[str | None, typer.Option(help="only these event ids (comma separated)")] = None,
) -> None:
    """Send dead letters back for delivery, with their original event ids."""
    from connectors.http_sink.dlq import replay

    settings, letters = _dead_letters(ctx, subscriber, since, ids)
    count = run(replay(settings.kafka, subscriber, letters))
    out.print(f"replayed {count} dead letter(s) to esb.deliver.{subscriber}")


@connect_app.command("http-sink")
def connect_http_sink(
    ctx: typer.Context,
    subscriber: Annotated[str, typer.Option(help="institution whose deliveries to send")],
    web_port: Annotated[int | None, typer.Option(help="port of /health and /metrics")] = None,
) -> None:
    """Deliver esb.deliver.<subscriber> to the subscriber's HTTP endpoint until SIGTERM."""
    import logging

    from connectors.http_sink.runner import SinkError, run_sink
    from connectors.settings import SinkSettings

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    settings = process_settings(ctx, SinkSettings, web_port=web_port, subscriber=subscriber)
    try:
        asyncio.run(run_sink(settings))
    except SinkError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


@connect_app.command("provider")
def connect_provider(
    ctx: typer.Context,
    institution: Annotated[str, typer.Option(help="provider whose HTTP services to call")],
    web_port: Annotated[int | None, typer.Option(help="port of /health and /metrics")] = None,
) -> None:
    """Answer esb.request.<institution> through the provider's HTTP API until SIGTERM."""
    import logging

    from connectors.provider.runner import ProviderError, run_provider
    from connectors.settings import ProviderSettings

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    settings = process_settings(ctx, ProviderSettings, web_port=web_port, institution=institution)
    try:
        asyncio.run(run_provider(settings))
    except ProviderError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


@connect_app.command("gateway")
def connect_gateway(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(help="listening port")] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="gateway processes on the one port (SO_REUSEPORT), one per core; process i "
            "also serves /health and /metrics on port + 1 + i; one that dies is started again "
            "[default: GOVESB_PROCESS_COUNT, else 1]",
        ),
    ] = None,
) -> None:
    """Serve the HTTP gateway for legacy publishers until SIGTERM."""
    from connectors.gateway.runner import run_gateway
    from connectors.settings import GatewaySettings

    settings = process_settings(ctx, GatewaySettings, web_port=web_port, process_count=processes)
    if settings.signing_key_file is None or not settings.signing_key_id:
        err.print("[red]error:[/red] set GOVESB_SIGNING_KEY_FILE and GOVESB_SIGNING_KEY_ID")
        raise typer.Exit(2)
    demo = settings.demo_key_problem(settings.signing_key_id)
    if demo:
        err.print(f"[red]error:[/red] {demo}")
        raise typer.Exit(2)
    if not settings.clients:
        err.print("[red]error:[/red] no clients: set GOVESB_CLIENTS__<INSTITUTION>=<secret>")
        raise typer.Exit(2)
    if settings.process_count == 1:
        asyncio.run(run_gateway(settings))
        return
    import logging

    from connectors.gateway.processes import busy_port, supervise

    busy = busy_port(settings, settings.process_count)
    if busy is not None:
        err.print(f"[red]error:[/red] port {busy} on {settings.web_host} is in use")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    raise typer.Exit(supervise(settings, settings.process_count))


def portal(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(help="listening port")] = None,
) -> None:
    """Serve the web portal for institutions and operators until SIGTERM."""
    from connectors.portal.runner import run_portal
    from connectors.settings import PortalSettings

    settings = process_settings(ctx, PortalSettings, web_port=web_port)
    if not settings.clients and not settings.operators:
        err.print("[red]error:[/red] nobody can sign in: set GOVESB_CLIENTS__<INSTITUTION>="
                  "<secret> or GOVESB_OPERATORS__<NAME>=<password>")  # fmt: skip
        raise typer.Exit(2)
    from aiokafka.errors import KafkaError

    from streams.trace.store import StoreUnavailable

    try:
        asyncio.run(run_portal(settings))
    except (LookupError, StoreUnavailable, OSError, KafkaError, TimeoutError) as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add ``govesb dlq``, ``govesb connect`` and ``govesb portal``."""
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(connect_app, name="connect")
    app.command("portal")(portal)


app = build_app([register])
"""The ``govesb`` command (the wheel's entry point)."""
