"""``govesb schemas check|register``: the catalogue's schemas against the schema registry."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from streams.cli.common import (
    err,
    load_catalog,
    out,
    registry_client,
    report,
    run,
    settings_of,
)
from streams.contract.catalog import Problem

schemas_app = typer.Typer(help="Event schemas: check and register.", no_args_is_help=True)


@schemas_app.command("check")
def schemas_check(
    ctx: typer.Context,
    offline: Annotated[
        bool, typer.Option(help="only check the files; do not compare with the registry")
    ] = False,
) -> None:
    """Check every schema and the catalogue; compare each with its registered history."""
    from streams.registry.governance import check_against_registry, check_catalog_consistency

    settings = settings_of(ctx)
    catalog = load_catalog(settings)
    problems = check_catalog_consistency(catalog)
    if not offline:

        async def against_registry() -> list[Problem]:
            client = await registry_client(settings.schema_registry)
            return await check_against_registry(catalog, client)

        problems += run(against_registry())
    where = "files" if offline else f"files and registry {settings.schema_registry.url}"
    report(problems, f"{len(catalog)} event types ({where})")


@schemas_app.command("register")
def schemas_register(ctx: typer.Context) -> None:
    """Register new schema versions; refuse everything if any change is incompatible."""
    from streams.registry.governance import register_catalog

    settings = settings_of(ctx)
    catalog = load_catalog(settings)

    async def register() -> Any:
        client = await registry_client(settings.schema_registry)
        return await register_catalog(catalog, client)

    done, problems = run(register())
    if problems:
        err.print("nothing registered:")
        report(problems, "the catalogue")
    table = Table("event type", "schema id", "version", "")
    for registration in done:
        table.add_row(
            registration.event_type,
            str(registration.schema_id),
            str(registration.version),
            "[green]new[/green]" if registration.new else "unchanged",
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``govesb schemas``."""
    app.add_typer(schemas_app, name="schemas")
