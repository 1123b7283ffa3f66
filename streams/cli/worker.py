"""``govesb worker``: run the pipeline."""

from __future__ import annotations

from typing import Annotated

import typer

from streams.cli.common import (
    err,
    process_settings,
)


def worker(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(help="port of /health and /metrics")] = None,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Run the pipeline worker (validate, route, transform, fan out) until SIGTERM."""
    from streams.pipeline.app import run_worker
    from streams.settings import WorkerSettings

    settings = process_settings(ctx, WorkerSettings, web_port=web_port)
    problem = settings.key_problem()
    if problem:
        err.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(2)
    run_worker(settings, loglevel)


def register(app: typer.Typer) -> None:
    """Add ``govesb worker``."""
    app.command()(worker)
