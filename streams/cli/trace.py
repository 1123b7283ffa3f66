"""``govesb trace ID``, ``govesb track KEY`` and ``govesb index``: the audit log, indexed.

``trace`` and ``track`` first bring the index (``GOVESB_TRACE__DATABASE``) up to date with
``esb.audit`` (an embedded follower: from where it stopped, or from the beginning for a new
file), then answer. ``index follow`` keeps an index up to date for the portal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from aiokafka.errors import KafkaError

from streams.cli.common import Failure, err, out, run, settings_of

if TYPE_CHECKING:
    from streams.settings import TraceSettings
    from streams.trace.queries import Step
    from streams.trace.store import TraceStore

index_app = typer.Typer(help="The trace index of the audit log.", no_args_is_help=True)
CATCH_UP_TIMEOUT_S = 300.0


def _settings(ctx: typer.Context) -> TraceSettings:
    from streams.settings import TraceSettings

    return TraceSettings().model_copy(update={"kafka": settings_of(ctx).kafka})


def _store(settings: TraceSettings) -> TraceStore:
    from streams.trace.store import StoreUnavailable, open_store

    url = settings.trace.database_url
    try:
        return open_store(settings.trace.database, url.get_secret_value() if url else None)
    except StoreUnavailable as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


async def _catch_up(settings: TraceSettings, store: TraceStore) -> int:
    import datetime as dt

    from streams.trace.index import AuditIndex

    index = AuditIndex(
        store, settings.kafka, retention=dt.timedelta(days=settings.trace.retention_days)
    )
    try:
        return await asyncio.wait_for(index.catch_up(), CATCH_UP_TIMEOUT_S)
    except LookupError as error:
        raise Failure(str(error)) from None
    except (TimeoutError, OSError, KafkaError) as error:
        raise Failure(f"Kafka at {settings.kafka.bootstrap_servers}: {error}") from None


def _as_json(value: Any) -> str:
    return json.dumps(dataclasses.asdict(value), ensure_ascii=False, indent=2)


def trace_command(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="the event's id (ce_id)")],
    as_json: Annotated[bool, typer.Option("--json", help="the trace as JSON")] = False,
) -> None:
    """Where is my event? Its timeline: received, accepted or rejected, delivered, attempts."""
    from streams.trace.queries import trace

    settings = _settings(ctx)
    store = _store(settings)
    try:
        run(_catch_up(settings, store))
        found = trace(store, event_id)
    finally:
        store.close()
    if found is None:
        err.print(f"no audit record of event {event_id} (the index keeps "
                  f"{settings.trace.retention_days:g} days)")  # fmt: skip
        raise typer.Exit(1)
    if as_json:
        out.print_json(_as_json(found))
        return
    verdict = (
        "[green]accepted[/green]"
        if found.accepted
        else "[yellow]not seen by the worker[/yellow]"
        if found.accepted is None
        else f"[red]rejected[/red]: {found.reason} ({found.detail or 'no detail'})"
    )
    out.print(f"event {found.event_id}  {found.event_type or '?'} from {found.publisher or '?'}")
    out.print(f"received {found.received_at or '?'}: {verdict}")
    for delivery in found.deliveries:
        out.print(f"  delivered under {delivery.agreement or '?'} to {delivery.subscriber} "
                  f"({delivery.topic})")  # fmt: skip
    for step in found.steps:
        out.print("  ".join(x for x in _step_line(step) if x))


def track_command(
    ctx: typer.Context,
    business_key: Annotated[
        str, typer.Argument(help="the business key (a NIN, a TIN: ce_subject); '-' reads stdin")
    ],
    operator: Annotated[str | None, typer.Option(help="ask as this bus operator")] = None,
    institution: Annotated[
        str | None, typer.Option(help="ask as this institution (the data's owner)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the answer as JSON")] = False,
) -> None:
    """Data tracker: which agreements delivered which fields about a key, when, to whom, why.

    Only operators and the institution that owns the event types may ask; every lookup is
    written to esb.audit (outcome "lookup") before it is answered.
    """
    from streams.trace.lookups import AuditLookupRecorder
    from streams.trace.queries import Asker, Refused, track

    settings = _settings(ctx)
    if settings.trace.subject_key is None:
        raise_exit("set GOVESB_TRACE__SUBJECT_KEY (govesb index subject-key prints it)", 2)
    try:
        asker = Asker(operator=operator, institution=institution)
    except ValueError:
        raise_exit("give exactly one of --operator or --institution", 2)
    if business_key == "-":
        business_key = sys.stdin.readline().strip()
    key = bytes.fromhex(settings.trace.subject_key.get_secret_value())
    store = _store(settings)

    async def ask() -> Any:
        await _catch_up(settings, store)
        try:
            recorder = await AuditLookupRecorder.connect(settings.kafka)
        except (OSError, KafkaError) as error:
            raise Failure(f"Kafka at {settings.kafka.bootstrap_servers}: {error}") from None
        try:
            return await track(store, key, business_key, asker, recorder)
        except Refused as refusal:
            raise Failure(str(refusal), code=1) from None
        finally:
            await recorder.close()

    try:
        found = run(ask())
    finally:
        store.close()
    if as_json:
        out.print_json(_as_json(found))
        return
    for d in found.disclosures:
        out.print(f"{d.time}  {d.event_type}  event {d.event_id}")
        masked = f" (masked: {', '.join(d.masked)})" if d.masked else ""
        out.print(f"  to {d.subscriber} under {d.agreement} ({d.delivery}): "
                  f"{', '.join(d.fields)}{masked}")  # fmt: skip
        if d.received_at:
            out.print(f"  endpoint answered {d.status} at {d.received_at}")
        out.print(f"  purpose: {d.purpose or '(none given)'}")
    out.print(f"{len(found.disclosures)} delivery(ies) about this key, for {found.asker}; "
              "this lookup is recorded in esb.audit")  # fmt: skip


def _step_line(step: Step) -> tuple[str, ...]:
    who = f"{step.subscriber} under {step.agreement}" if step.agreement else step.subscriber
    return (
        step.time,
        f"{step.what:<13}",
        who or "",
        f"HTTP {step.status}" if step.status else "",
        f"attempt {step.attempt}" if step.attempt else "",
        f"{step.reason}: {step.detail}" if step.what == "rejected" else step.detail or "",
        f"by {step.by.split('/')[0]}" if step.what == "received" else "",
    )


def raise_exit(message: str, code: int) -> NoReturn:
    """Print ``message`` as an error and exit with ``code``."""
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@index_app.command("rebuild")
def index_rebuild(ctx: typer.Context) -> None:
    """Empty the index and read esb.audit again from the beginning."""
    settings = _settings(ctx)
    store = _store(settings)
    try:
        store.reset()
        added = run(_catch_up(settings, store))
    finally:
        store.close()
    out.print(f"[green]✓[/green] index rebuilt: {added} audit record(s)")


@index_app.command("follow")
def index_follow(ctx: typer.Context) -> None:
    """Keep the index up to date with esb.audit until SIGTERM (for the portal)."""
    import datetime as dt

    from streams.trace.index import AuditIndex

    settings = _settings(ctx)
    store = _store(settings)

    async def follow() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        index = AuditIndex(
            store, settings.kafka, retention=dt.timedelta(days=settings.trace.retention_days)
        )
        try:
            await index.follow(stopping)
        except (LookupError, OSError, KafkaError) as error:
            raise Failure(f"Kafka at {settings.kafka.bootstrap_servers}: {error}") from None

    try:
        run(follow())
    finally:
        store.close()


@index_app.command("subject-key")
def index_subject_key(
    key_file: Annotated[Path, typer.Option(help="the bus signing key (PEM or base64 DER)")],
) -> None:
    """Print GOVESB_TRACE__SUBJECT_KEY: the key business keys are hashed with, derived from
    the bus key (one-way: it cannot sign). Keep it as secret as the audit log's readers."""
    from streams.audit.chain import SUBJECT_KEY_PURPOSE
    from streams.contract.signing import KeyFormatError, load_private_key

    try:
        key = load_private_key(key_file.read_bytes())
    except (OSError, KeyFormatError) as error:
        raise_exit(f"cannot read the bus key {key_file}: {type(error).__name__}", 2)
    out.print(key.derive_key(SUBJECT_KEY_PURPOSE).hex())


def register(app: typer.Typer) -> None:
    """Add ``govesb trace``, ``govesb track`` and ``govesb index``."""
    app.command("trace")(trace_command)
    app.command("track")(track_command)
    app.add_typer(index_app, name="index")
