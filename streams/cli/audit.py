"""``govesb audit verify``: check the hash chains of the audit log."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from rich.table import Table

from streams.cli.common import (
    Failure,
    err,
    out,
    run,
    settings_of,
)

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


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


def register(app: typer.Typer) -> None:
    """Add ``govesb audit``."""
    app.add_typer(audit_app, name="audit")
