"""``govesb dr status|failover``: the Disaster Recovery site."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from streams.cli.common import Failure, err, out, run, settings_checked, settings_of

if TYPE_CHECKING:
    from streams.dr.sites import DrSites

dr_app = typer.Typer(
    help="Disaster Recovery site: replication state (MirrorMaker 2) and failover.",
    no_args_is_help=True,
)


def _dr_sites(
    ctx: typer.Context, primary: str | None, dr: str | None, dr_registry: str | None
) -> DrSites:
    """Both sites from ``GOVESB_DR__…``, the CLI's own connection and the options; exit 2
    when the DR cluster is not given."""
    from streams.dr.sites import DrCliSettings, resolve_sites
    from streams.settings import bootstrap_list, registry_urls

    cli = settings_of(ctx)
    with settings_checked():
        settings = DrCliSettings().dr
    for option, value, check in (
        ("--primary", primary, bootstrap_list), ("--dr", dr, bootstrap_list),
        ("--dr-registry", dr_registry, registry_urls),
    ):  # fmt: skip
        try:
            if value is not None:
                check(value)
        except ValueError as error:
            err.print(f"[red]error:[/red] {option}: {error}")
            raise typer.Exit(2) from None
    try:
        return resolve_sites(
            settings, cli.kafka, cli.schema_registry,
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


def register(app: typer.Typer) -> None:
    """Add ``govesb dr``."""
    app.add_typer(dr_app, name="dr")
