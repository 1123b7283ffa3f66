"""``govesb keys``: make an institution's signing key pair."""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from streams.contract.signing import generate_private_key, key_id_for

# Never show local variables in a traceback: one of them may be a private key.
keys_app = typer.Typer(
    help="Institution signing keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


# The institution id rule of the registry (``streams.registry.model.Identifier``); it also keeps
# the file names inside --out.
_INSTITUTION_ID = re.compile(r"[a-z][a-z0-9-]{1,39}")


@keys_app.callback()
def keys() -> None:
    """Institution signing keys."""
    # A callback keeps ``keys`` a command group even with one command: ``keys generate``.


class Curve(StrEnum):
    """Curves an institution's key may be on."""

    SECP256K1 = "secp256k1"
    P256 = "P-256"


def _write_new(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never overwrite, and never follow a symlink planted at the path. The mode is set
    # at creation, so the file is never readable by others, not even for an instant.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)


@keys_app.command()
def generate(
    institution: Annotated[
        str, typer.Option("--institution", "-i", help="Id of the institution the key is for.")
    ],
    curve: Annotated[Curve, typer.Option(help="Curve of the new key.")] = Curve.SECP256K1,
    out: Annotated[
        Path,
        typer.Option(file_okay=False, dir_okay=True, help="Directory to write the key files to."),
    ] = Path(),
) -> None:
    """Generate a key pair: <key-id>.key.pem (mode 0600) and <key-id>.pub.pem.

    Prints the key id and the base64 DER public key for the registry YAML, never the private key.

    Refuses to overwrite existing files.
    """
    if not _INSTITUTION_ID.fullmatch(institution):
        typer.echo(
            f"error: institution id {institution!r} must be 2-40 characters of a-z, 0-9 and '-',"
            " starting with a letter",
            err=True,
        )
        raise typer.Exit(code=1)
    if not out.is_dir():
        typer.echo(f"error: {out} is not a directory", err=True)
        raise typer.Exit(code=1)
    private_key = generate_private_key(curve.value)
    public_key = private_key.public_key()
    key_id = key_id_for(institution, public_key)
    private_path = out / f"{key_id}.key.pem"
    public_path = out / f"{key_id}.pub.pem"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            typer.echo(f"error: {path} already exists; not overwriting it", err=True)
            raise typer.Exit(code=1)
    try:
        _write_new(private_path, private_key.to_pem(), 0o600)
    except FileExistsError:
        typer.echo(f"error: {private_path} already exists; not overwriting it", err=True)
        raise typer.Exit(code=1) from None
    try:
        _write_new(public_path, public_key.to_pem(), 0o644)
    except FileExistsError:
        private_path.unlink()  # ours, just written: leave no half pair behind
        typer.echo(f"error: {public_path} already exists; not overwriting it", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"key id:      {key_id}")
    typer.echo(f"curve:       {private_key.curve}")
    typer.echo(f"private key: {private_path}")
    typer.echo(f"public key:  {public_path}")
    typer.echo(f"public key (base64 DER, for the registry): {public_key.to_base64_der()}")


def register(app: typer.Typer) -> None:
    """Add ``govesb keys``."""
    app.add_typer(keys_app, name="keys")
