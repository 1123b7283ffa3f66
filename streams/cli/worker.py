"""``govesb worker``: run the pipeline."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from streams.cli.common import (
    err,
    process_settings,
)

if TYPE_CHECKING:
    from streams.settings import WorkerSettings


def worker(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(help="port of /health and /metrics")] = None,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="worker processes of one consumer group, one per core; process i serves "
            "/health and /metrics on web port + i; one that dies is started again",
        ),
    ] = 1,
) -> None:
    """Run the pipeline worker (validate, route, transform, fan out) until SIGTERM."""
    from streams.pipeline.app import run_worker
    from streams.settings import WorkerSettings

    settings = process_settings(ctx, WorkerSettings, web_port=web_port)
    problem = settings.key_problem() or asyncio.run(_registered_key_problem(settings))
    if problem:
        err.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(2)
    if processes == 1:
        run_worker(settings, loglevel)
        return
    from streams.pipeline.supervisor import Supervisor

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(message)s")
    raise typer.Exit(Supervisor(settings, processes, loglevel).run())


async def _registered_key_problem(settings: WorkerSettings) -> str | None:
    """Whether the delivery key is the operator's current key in esb.registry.

    Unreachable Kafka or a missing registry topic are left to the worker's own start, which
    says so as before.
    """
    from aiokafka.errors import KafkaError

    from streams.contract.signing import KeyFormatError, load_private_key
    from streams.pipeline.validation import OPERATOR
    from streams.registry.view import RegistryView

    if settings.signing_key_file is None or not settings.signing_key_id:
        return None  # key_problem() said so already
    try:
        key = load_private_key(settings.signing_key_file.read_bytes())
    except (OSError, KeyFormatError) as error:
        return f"cannot read GOVESB_SIGNING_KEY_FILE {settings.signing_key_file}: {error}"
    view = RegistryView(settings.kafka, refused_keys=settings.refused_key_ids)
    try:
        await view.start(follow=False)
    except (LookupError, KafkaError, OSError, TimeoutError):
        return None
    await view.stop()
    return view.signing_key_problem(settings.signing_key_id, key.public_key(), OPERATOR)


def register(app: typer.Typer) -> None:
    """Add ``govesb worker``."""
    app.command()(worker)
