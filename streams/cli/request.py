"""``govesb request``: call an institution's API over the bus and print the answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError

from streams.cli.common import Failure, err, load_catalog, out, run, settings_of
from streams.settings import REPO_ROOT


def _key_file(institution: str, given: Path | None) -> Path:
    if given is not None:
        return given
    demo = REPO_ROOT / "deploy" / "demo-keys" / f"{institution}.key.pem"
    if not demo.exists():
        err.print("[red]error:[/red] give the institution's private key with --key FILE")
        raise typer.Exit(2)
    err.print(f"[yellow]note:[/yellow] signing with the demo key {demo.name} (dev stack only)")
    return demo


def request(
    ctx: typer.Context,
    institution: Annotated[str, typer.Option("--as", help="requesting institution id")],
    api: Annotated[str, typer.Option(help="api code of the service, e.g. VERIFY_NIN")],
    data: Annotated[str, typer.Option(help='the request body as JSON, e.g. \'{"nin":"…"}\'')],
    key: Annotated[
        Path | None,
        typer.Option(help="the institution's private key (default: its demo key, dev stack)"),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="seconds to wait for the answer (default: the service's deadline)"),
    ] = None,
    system: Annotated[str, typer.Option(help="requesting system id")] = "cli",
    key_id: Annotated[
        str | None, typer.Option(help="registered key id (default: derived from the key)")
    ] = None,
) -> None:
    """Send a request over Kafka, wait for the answer and print it (exit 1 if refused,
    failed or timed out)."""
    from streams.client.requesting import Answer, Requester, RequestError
    from streams.contract.jsonavro import JsonAvroError, from_json
    from streams.contract.signing import SigningError, key_id_for, load_private_key

    settings = settings_of(ctx)
    catalog = load_catalog(settings)
    service = catalog.services.get(api)
    if service is None:
        err.print(f"[red]error:[/red] unknown api code {api!r}; see schemas/catalog.yaml")
        raise typer.Exit(2)
    try:
        body: Any = from_json(service.request.schema, json.loads(data))
    except ValueError as error:  # JsonAvroError is one
        what = str(error) if isinstance(error, JsonAvroError) else f"not JSON: {error}"
        err.print(f"[red]error:[/red] --data does not match {service.request.name}: {what}")
        raise typer.Exit(2) from None
    path = _key_file(institution, key)
    try:
        private = load_private_key(path.read_bytes())
    except (OSError, SigningError) as error:
        err.print(f"[red]error:[/red] cannot load the key {path}: {type(error).__name__}")
        raise typer.Exit(2) from None

    async def call() -> Answer:
        requester = Requester.connect(
            institution=institution,
            system=system,
            key_id=key_id or key_id_for(institution, private.public_key()),
            key=private,
            kafka=settings.kafka,
            schema_registry=settings.schema_registry,
            catalog=catalog,
        )
        try:
            await asyncio.wait_for(requester.start(), 60)
        except RequestError as error:
            await requester.stop()
            raise Failure(str(error), 1) from None
        except (TimeoutError, OSError, KafkaError) as error:
            await requester.stop()
            raise Failure(
                f"Kafka at {settings.kafka.bootstrap_servers} did not answer: {error}"
            ) from None
        try:
            return await requester.request(api, body, timeout=timeout)
        except RequestError as error:
            raise Failure(str(error), 2) from None
        finally:
            await requester.stop()

    answer = run(call())
    if answer.success:
        out.print_json(json.dumps(answer.body))
        if answer.late:
            err.print(f"(late answer to {answer.request_id})")
        return
    detail = f": {answer.message}" if answer.message else ""
    err.print(f"[red]{answer.status}[/red] ({answer.reason}){detail} — request {answer.request_id}")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``govesb request``."""
    app.command("request")(request)
