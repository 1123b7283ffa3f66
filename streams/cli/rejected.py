"""``govesb rejected list|replay``: what the pipeline set aside, and sending it through again.

``esb.rejected.<publisher>`` holds the publisher's refused events (a reason the publisher
must fix) and the bus's own ``internal`` failures: a valid event one agreement could not
receive (``esb_subscription`` names it). Once the cause is fixed (the publisher's key
registered, the agreement re-pinned to a version the registry has, …), ``replay`` sends the
records back to ``esb.ingress.<publisher>`` as they came, same event id and signature, with
``esb_replayed_from``; an ``internal`` copy keeps the bus's replay claim, so the pipeline
delivers it to that one agreement and lets it past the duplicate window. Each replay is an
audit record (``outcome: replayed``), as the dead letters' are.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from streams.cli.common import out, read_set_aside, record_filter, settings_of
from streams.client.records import (
    BusRecord,
    read_records,
    replay_audit,
    resend,
    resent_headers,
)
from streams.contract import topics
from streams.pipeline.replay import REPLAY_HEADERS
from streams.pipeline.validation import VIA_HEADER

rejected_app = typer.Typer(
    help="Events the pipeline rejected or could not deliver to an agreement.",
    no_args_is_help=True,
)

Publisher = Annotated[str, typer.Option(help="institution whose rejected events to read")]
Since = Annotated[str | None, typer.Option(help="only those since this RFC 3339 time")]
Ids = Annotated[str | None, typer.Option(help="only these event ids (comma separated)")]
Reasons = Annotated[
    str | None, typer.Option(help="only these reason codes, e.g. internal (comma separated)")
]
Subscriptions = Annotated[
    str | None, typer.Option(help="only failures of these agreements (comma separated)")
]


def dropped_on_replay(name: str) -> bool:
    """The bus's headers of a rejection are left out of a replay, but not its replay claim nor
    ``esb_via`` (an event the gateway published and signed with its key is valid only with
    it)."""
    return name.startswith("esb_") and name not in (*REPLAY_HEADERS, VIA_HEADER)


def replayed_headers(record: BusRecord) -> list[tuple[str, bytes]]:
    """The headers a rejected record goes back to its ingress topic with."""
    return resent_headers(record, dropped_on_replay, "rejected")


def _read(
    ctx: typer.Context,
    publisher: str,
    since: str | None,
    ids: str | None,
    reason: str | None,
    subscription: str | None,
) -> list[BusRecord]:
    settings = settings_of(ctx)
    wanted = record_filter(since, ids, {"esb_reason": reason, "esb_subscription": subscription})
    return read_set_aside(
        settings.kafka, read_records(settings.kafka, topics.rejected(publisher), wanted)
    )


@rejected_app.command("list")
def rejected_list(
    ctx: typer.Context,
    publisher: Publisher,
    since: Since = None,
    ids: Ids = None,
    reason: Reasons = None,
    subscription: Subscriptions = None,
) -> None:
    """List rejected events: time, event id, type, reason, agreement, detail."""
    records = _read(ctx, publisher, since, ids, reason, subscription)
    table = Table("time", "event id", "type", "reason", "agreement", "detail")
    for record in records:
        table.add_row(
            record.timestamp.isoformat(timespec="seconds"),
            record.event_id,
            record.header("ce_type"),
            record.header("esb_reason"),
            record.header("esb_subscription"),
            record.header("esb_detail")[:80],
        )
    out.print(table)
    out.print(f"{len(records)} rejected event(s) of {publisher}")


@rejected_app.command("replay")
def rejected_replay(
    ctx: typer.Context,
    publisher: Publisher,
    since: Since = None,
    ids: Ids = None,
    reason: Reasons = None,
    subscription: Subscriptions = None,
) -> None:
    """Send rejected events back through the pipeline, with their original event ids."""
    records = _read(ctx, publisher, since, ids, reason, subscription)
    settings = settings_of(ctx)
    topic = topics.ingress(publisher)
    audited = replay_audit(
        "rejected-replay",
        topics.rejected(publisher),
        lambda r: [r.header("esb_subscription")] if r.header("esb_subscription") else [],
    )
    count = read_set_aside(
        settings.kafka, resend(settings.kafka, topic, records, replayed_headers, audited)
    )
    out.print(f"replayed {count} rejected event(s) to {topic}")


def register(app: typer.Typer) -> None:
    """Add ``govesb rejected``."""
    app.add_typer(rejected_app, name="rejected")
