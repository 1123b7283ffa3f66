"""The ``govesb`` command line: the commands of ``streams.cli.main`` plus the connectors'.

``connect http-sink``, ``connect gateway`` and ``dlq list|replay`` live here so that the
contract package (``streams``) never imports the connectors.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer
from aiokafka.errors import KafkaError
from rich.table import Table

from streams.cli.main import Failure, app, err, out, process_settings, run, settings_of

dlq_app = typer.Typer(help="Dead letters of the HTTP sink.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
connect_app = typer.Typer(help="Connectors between the bus and HTTP systems.", no_args_is_help=True)
app.add_typer(connect_app, name="connect")

__all__ = ["app"]


# --------------------------------------------------------------------------- dlq


def _dead_letters(
    ctx: typer.Context, subscriber: str, since: str | None, ids: str | None
) -> tuple[Any, list[Any]]:
    from connectors.http_sink.dlq import read_dead_letters
    from streams.contract.envelope import parse_time

    settings = settings_of(ctx)
    try:
        moment = parse_time(since) if since else None
    except ValueError:
        err.print(f"[red]error:[/red] --since {since!r} is not an RFC 3339 time with offset")
        raise typer.Exit(2) from None
    wanted = {i.strip() for i in ids.split(",") if i.strip()} if ids else None

    async def read() -> list[Any]:
        try:
            return await asyncio.wait_for(
                read_dead_letters(settings.kafka, subscriber, moment, wanted), 120
            )
        except LookupError as error:
            raise Failure(str(error)) from None
        except (TimeoutError, OSError, KafkaError) as error:
            raise Failure(f"Kafka at {settings.kafka.bootstrap_servers}: {error}") from None

    return settings, run(read())


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


@connect_app.command("gateway")
def connect_gateway(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(help="listening port")] = None,
) -> None:
    """Serve the HTTP gateway for legacy publishers until SIGTERM."""
    from connectors.gateway.app import run_gateway
    from connectors.settings import GatewaySettings

    settings = process_settings(ctx, GatewaySettings, web_port=web_port)
    if settings.signing_key_file is None or not settings.signing_key_id:
        err.print("[red]error:[/red] set GOVESB_SIGNING_KEY_FILE and GOVESB_SIGNING_KEY_ID")
        raise typer.Exit(2)
    if not settings.clients:
        err.print("[red]error:[/red] no clients: set GOVESB_CLIENTS__<INSTITUTION>=<secret>")
        raise typer.Exit(2)
    asyncio.run(run_gateway(settings))


# --------------------------------------------------------------------------- dev


@app.command()
def dev(
    events: Annotated[int, typer.Option(min=1, help="valid events to publish")] = 120,
    invalid: Annotated[int, typer.Option(min=0, help="invalid events mixed in")] = 10,
    rate: Annotated[float, typer.Option(min=0.1, help="events per second (open loop)")] = 40.0,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="leave the stack up; print every URL")
    ] = False,
) -> None:
    """The whole bus on this machine with a stream flowing (what `make demo` runs).

    Starts Kafka, the schema registry, the worker, the HTTP sink, the gateway, a sample
    legacy endpoint and Prometheus; Ctrl-C stops everything it started. Needs a source
    checkout (Java 17 and Maven for the broker and registry jars).
    """
    try:
        from deploy.dev import DevOptions, main
    except ImportError:
        raise Failure(
            "govesb dev runs from a source checkout: clone the repository and run `make demo`"
        ) from None
    raise typer.Exit(main(DevOptions(events, invalid, rate, keep_running)))


# --------------------------------------------------------------------------- dr

if TYPE_CHECKING:
    from streams.dr.sites import DrSites

dr_app = typer.Typer(
    help="Disaster Recovery site: replication state (MirrorMaker 2) and failover.",
    no_args_is_help=True,
)
app.add_typer(dr_app, name="dr")


def _dr_sites(
    ctx: typer.Context, primary: str | None, dr: str | None, dr_registry: str | None
) -> DrSites:
    """Both sites from ``GOVESB_DR__…``, the CLI's own connection and the options; exit 2
    when the DR cluster is not given."""
    from streams.dr.sites import DrCliSettings, resolve_sites

    cli = settings_of(ctx)
    try:
        return resolve_sites(
            DrCliSettings().dr, cli.kafka, cli.schema_registry,
            primary=primary, dr=dr, dr_registry=dr_registry,
        )  # fmt: skip
    except LookupError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


PrimaryOption = Annotated[
    str | None, typer.Option("--primary", help="primary bootstrap (default: the CLI's own)")
]
DrOption = Annotated[
    str | None, typer.Option("--dr", help="DR bootstrap (GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS)")
]
DrRegistryOption = Annotated[
    str | None,
    typer.Option(
        "--dr-registry", help="DR schema registry URL (GOVESB_DR__DR__SCHEMA_REGISTRY__URL)"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="one JSON object instead of tables")]


def _quiet_kafka_clients() -> None:
    """A site that does not answer is reported once, not by every retry of the client."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


def _print_dr_status(status: Any, settings: Any, every_partition: bool) -> None:
    out.print(
        f"replication {settings.primary_alias} ({status.primary}"
        f"{'' if status.primary_reachable else ', [red]unreachable[/red]'}) -> dr ({status.dr}): "
        f"newest heartbeat {_age(status.heartbeat_age_s)}"
    )
    table = Table("topic", "partition", "primary end", "DR end", "lag")
    shown = 0
    for p in status.partitions:
        if not every_partition and not (p.lag or p.dr_end is None or p.primary_end is None):
            continue
        if not every_partition and not (p.primary_end or p.dr_end):
            continue  # empty at both sites
        shown += 1
        table.add_row(
            p.topic,
            str(p.partition),
            "?" if p.primary_end is None else str(p.primary_end),
            "-" if p.dr_end is None else str(p.dr_end),
            "?" if p.lag is None else (f"[yellow]{p.lag}[/yellow]" if p.lag else "0"),
        )
    if shown:
        out.print(table)
    total = status.total_lag
    out.print(
        f"lag: {'unknown (primary not read)' if total is None else f'{total} record(s)'} over "
        f"{len(status.partitions)} partition(s)"
        + ("" if every_partition else "; --partitions lists every one")
    )
    if status.groups:
        groups = Table("consumer group", "checkpointed", "last checkpoint", "behind primary",
                       "synced at DR")  # fmt: skip
        for g in status.groups:
            last = g.newest_checkpoint_ms
            age = None if last is None else (status.at_ms - last) / 1000
            groups.add_row(
                g.group,
                f"{g.checkpointed}/{g.checkpointed + g.unchecked}" if g.behind is not None
                else str(g.checkpointed),
                _age(age),
                "?" if g.behind is None else str(g.behind),
                f"{g.synced}/{g.checkpointed}",
            )  # fmt: skip
        out.print(groups)
    if status.registry is not None:
        r = status.registry
        same = (
            "?"
            if r.primary_versions is None
            else ("same ids" if not (r.missing or r.different) else "[red]DIFFERENT[/red]")
        )
        out.print(
            f"schema registry: {r.dr_versions} version(s) at the DR site, "
            f"{'?' if r.primary_versions is None else r.primary_versions} at the primary: {same}"
        )
        for line in [*r.missing, *r.different][:10]:
            out.print(f"  {line}")


@dr_app.command("status")
def dr_status(
    ctx: typer.Context,
    primary: PrimaryOption = None,
    dr: DrOption = None,
    dr_registry: DrRegistryOption = None,
    as_json: JsonOption = False,
    partitions: Annotated[
        bool, typer.Option("--partitions", help="every partition, not only those with lag")
    ] = False,
) -> None:
    """Replication lag per topic-partition, heartbeat age, offset translation, registry ids.

    Exit 0 when the DR site is in step, 1 when something needs a look, 2 when the DR cluster
    does not answer.
    """
    from streams.dr.status import collect_status

    _quiet_kafka_clients()
    sites = _dr_sites(ctx, primary, dr, dr_registry)
    settings = sites.settings

    async def read() -> Any:
        try:
            return await collect_status(sites)
        except ConnectionError as error:
            raise Failure(str(error)) from None

    status = run(read())
    problems = status.problems(settings.max_heartbeat_age_s)
    if as_json:
        out.print_json(data=status.as_json(settings.max_heartbeat_age_s))
    else:
        _print_dr_status(status, settings, partitions)
        for problem in problems:
            out.print(f"[yellow]problem:[/yellow] {problem}")
        if not problems:
            out.print("[green]the DR site is in step[/green]")
    raise typer.Exit(1 if problems else 0)


@dr_app.command("failover")
def dr_failover(
    ctx: typer.Context,
    primary: PrimaryOption = None,
    dr: DrOption = None,
    dr_registry: DrRegistryOption = None,
    as_json: JsonOption = False,
    force: Annotated[
        bool, typer.Option("--force", help="switch even if records would be left behind")
    ] = False,
    catch_up_timeout: Annotated[
        float | None,
        typer.Option(help="seconds to wait for the DR site to catch up while the primary answers"),
    ] = None,
) -> None:
    """Switch the bus to the DR site: check it, report what did not make it, record the switch.

    Checks that the DR cluster (and its schema registry) answer and hold the same schema ids;
    if the primary still answers, waits for zero lag (a planned switchover) and refuses to
    leave records behind unless --force; if not, reports how far the DR copy is complete and
    from when publishers must re-send. Writes the active-site file (GOVESB_DR__STATE_FILE)
    that supervisors restart the worker, sinks and gateway on, and prints the environment
    to give every GovESB process. Stop MirrorMaker 2 (primary -> dr) before the primary can
    come back. Exit 0 switched (or already switched), 1 refused, 2 the DR site cannot serve.
    """
    import dataclasses
    import datetime as dt
    import time

    from streams.dr.sites import (
        ActiveSite,
        decide_failover,
        read_active_site,
        resend_since,
        write_active_site,
    )
    from streams.dr.status import collect_status

    _quiet_kafka_clients()
    sites = _dr_sites(ctx, primary, dr, dr_registry)
    settings, dr_schema_registry = sites.settings, sites.dr_registry
    if settings.state_file is not None:
        current = read_active_site(settings.state_file)
        # By address, not name: after a failback the roles are swapped and "dr" is the other.
        if current is not None and current.bootstrap_servers == sites.dr.bootstrap_servers:
            if as_json:
                out.print_json(data={"switched": False, "already": dataclasses.asdict(current)})
            else:
                out.print(f"already failed over to the DR site at {current.since}")
                for line in current.env():
                    out.print(line)
            raise typer.Exit(0)
    bound = settings.catch_up_timeout_s if catch_up_timeout is None else catch_up_timeout

    async def assess() -> Any:
        deadline = time.monotonic() + bound
        while True:
            try:
                status = await collect_status(sites)
            except ConnectionError as error:
                raise Failure(f"{error}: nothing to fail over to") from None
            if not status.primary_reachable or not status.total_lag:
                return status
            if time.monotonic() > deadline:
                return status
            if not as_json:
                err.print(
                    f"waiting for the DR site to catch up: {status.total_lag} record(s) behind"
                )
            await asyncio.sleep(1.0)

    status = run(assess())
    if dr_schema_registry is not None and status.registry is None:
        err.print(
            f"[red]error:[/red] the DR schema registry ({dr_schema_registry.url}) does not answer"
        )
        raise typer.Exit(2)
    decision = decide_failover(status, force=force)
    reasons = list(decision.reasons)
    registry = status.registry
    if registry is not None and registry.different:
        reasons.append(
            f"the DR registry numbers {len(registry.different)} schema version(s) differently: "
            "records would decode wrongly"
        )
        decision = dataclasses.replace(decision, proceed=decision.proceed and force)
    site = ActiveSite(
        site="dr",
        bootstrap_servers=sites.dr.bootstrap_servers,
        schema_registry_url=dr_schema_registry.url if dr_schema_registry else None,
        since=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        planned=decision.planned,
        replicated_through=status.replicated_through,
        resend_since=None
        if decision.planned
        else resend_since(status.heartbeat_ms, settings.resend_margin_s),
        final_lag=status.total_lag,
    )
    if decision.proceed and settings.state_file is not None:
        write_active_site(settings.state_file, site)
    if as_json:
        out.print_json(
            data={
                "switched": decision.proceed,
                "site": dataclasses.asdict(site),
                "reasons": reasons,
                "env": site.env(),
                "state_file": None if settings.state_file is None else str(settings.state_file),
                "status": status.as_json(settings.max_heartbeat_age_s),
            }
        )
    else:
        for reason in reasons:
            out.print(reason)
        if decision.proceed:
            if site.resend_since:
                out.print(
                    f"publishers: re-send everything published since {site.resend_since} with "
                    "the same event ids (duplicates are dropped by event id)"
                )
            behind = sum(g.behind or 0 for g in status.groups)
            translated = sum(1 for g in status.groups if g.checkpointed)
            out.print(
                f"consumer groups: {translated} with translated offsets at the DR site"
                + (f"; {behind} record(s) will be read again" if behind else "")
            )
            where = settings.state_file or "no GOVESB_DR__STATE_FILE: nothing recorded"
            out.print(f"[green]failed over to the DR site[/green] ({where}); give every process:")
            for line in site.env():
                out.print(line)
            out.print(
                "then stop MirrorMaker 2 (primary -> dr) so a returning primary cannot write here"
            )
        else:
            out.print("[red]refused[/red]: nothing changed")
    raise typer.Exit(0 if decision.proceed else 1)
