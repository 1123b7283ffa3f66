"""The configuration reference, ``deploy/CONFIGURATION.md``, generated from the settings models.

    python -m deploy.config_reference            # write deploy/CONFIGURATION.md
    python -m deploy.config_reference --check    # exit 1 if the committed file is stale

Every process reads only ``GOVESB_*`` environment variables (pydantic-settings, ``__`` between
nested models). The tables list each variable with its type, its default (``(secret)`` for
secrets: a value is never shown) and the field's description.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from connectors.settings import GatewaySettings, PortalSettings, ProviderSettings, SinkSettings
from streams.dr.sites import DrCliSettings
from streams.settings import REPO_ROOT, CliSettings, TraceSettings, WorkerSettings

OUTPUT = REPO_ROOT / "deploy" / "CONFIGURATION.md"
PREFIX = "GOVESB_"
DELIMITER = "__"
PLACEHOLDER = "<NAME>"  # a mapping's key, unless the model's docstring names it


@dataclass(frozen=True)
class Process:
    """A process and the settings model it reads."""

    command: str
    model: type[BaseSettings]


PROCESSES = (
    Process("govesb worker", WorkerSettings),
    Process("govesb connect http-sink --subscriber <institution>", SinkSettings),
    Process("govesb connect gateway", GatewaySettings),
    Process("govesb connect provider --institution <institution>", ProviderSettings),
    Process("govesb schemas|registry|publish|tail|audit|dlq …", CliSettings),
    Process("govesb dr status|failover", DrCliSettings),
    Process("govesb trace|track|index …", TraceSettings),
    Process("govesb portal", PortalSettings),
)


@dataclass(frozen=True)
class Variable:
    """One environment variable of a process.

    ``name`` ends in a placeholder for a mapping (e.g. ``GOVESB_SECRETS__<SECRET_REF>``): any
    name after the prefix is accepted there.
    """

    name: str
    type: str
    default: str
    description: str
    secret: bool
    owner: str

    @property
    def is_mapping(self) -> bool:
        """Whether any name after the prefix is accepted."""
        return self.name.endswith(">")

    def accepts(self, name: str) -> bool:
        """Whether the environment variable ``name`` sets this setting (names ignore case)."""
        wanted = name.upper()
        if self.is_mapping:
            prefix = self.name[: self.name.rindex("<")]
            return wanted.startswith(prefix) and len(wanted) > len(prefix)
        return wanted == self.name


def _without_none(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        if len(members) == 1:
            return members[0], optional
    return annotation, False


def _is_secret(annotation: Any) -> bool:
    inner, _ = _without_none(annotation)
    if get_origin(inner) is dict:
        return _is_secret(get_args(inner)[1])
    return inner is SecretStr


def _type_name(annotation: Any) -> str:
    inner, optional = _without_none(annotation)
    if get_origin(inner) is Literal:
        text = "one of " + ", ".join(f"`{value}`" for value in get_args(inner))
    elif get_origin(inner) is dict:
        text = _type_name(get_args(inner)[1])
    elif inner is SecretStr:
        text = "secret"
    elif inner is Path:
        text = "path"
    elif isinstance(inner, type):
        text = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            inner.__name__, inner.__name__
        )
    else:
        text = str(inner)
    return f"{text} (optional)" if optional else text


def _default(field: FieldInfo, secret: bool) -> str:
    if secret:
        return "(secret)"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        if value.is_relative_to(REPO_ROOT):
            return f"`{value.relative_to(REPO_ROOT).as_posix()}` in the source tree"
        return f"`{value.as_posix()}`"
    if isinstance(value, dict):
        return "(none)"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    inner, _ = _without_none(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None


def _docstring(model: type[BaseModel]) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


def _mapping_name(model: type[BaseModel], env: str) -> str:
    """``env`` with the placeholder the model's docstring uses for its keys, if any."""
    named = re.search(re.escape(env + DELIMITER) + r"<[A-Z_]+>", _docstring(model))
    return named.group(0) if named else env + DELIMITER + PLACEHOLDER


def _described_in_docstring(model: type[BaseModel], env: str) -> str:
    """The sentences of the model's docstring that name ``env``."""
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", _docstring(model))
    return " ".join(s for s in sentences if env in s)


def variables(model: type[BaseModel], prefix: str = PREFIX) -> list[Variable]:
    """The environment variables of ``model``, nested models expanded, in declaration order.

    A field's description is its ``Field(description=...)``, else the sentences of the
    model's docstring that name its variable.
    """
    found: list[Variable] = []
    for name, field in model.model_fields.items():
        env = prefix + name.upper()
        nested = _model_of(field.annotation)
        if nested is not None:
            found.extend(variables(nested, env + DELIMITER))
            continue
        if get_origin(_without_none(field.annotation)[0]) is dict:
            env = _mapping_name(model, env)
        secret = _is_secret(field.annotation)
        description = field.description or _described_in_docstring(model, env)
        found.append(
            Variable(
                name=env,
                type=_type_name(field.annotation),
                default=_default(field, secret),
                description=" ".join(description.split()),
                secret=secret,
                owner=f"{model.__name__}.{name}",
            )
        )
    return found


def accepts(model: type[BaseModel], name: str) -> bool:
    """Whether the environment variable ``name`` sets anything in ``model``."""
    return any(variable.accepts(name) for variable in variables(model))


def undocumented() -> list[str]:
    """Settings fields without a description (``Model.field``), each once."""
    seen: dict[str, None] = {}
    for process in PROCESSES:
        for variable in variables(process.model):
            if not variable.description:
                seen.setdefault(variable.owner)
    return list(seen)


def _nested_models(model: type[BaseModel], prefix: str = PREFIX) -> list[tuple[str, str]]:
    groups: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        nested = _model_of(field.annotation)
        if nested is not None:
            env = prefix + name.upper() + DELIMITER
            groups.append((env + "*", _docstring(nested)))
            groups.extend(_nested_models(nested, env))
    return groups


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m deploy.config_reference` from the settings models in",
        "     streams/settings.py and connectors/settings.py. Do not edit: regenerate. -->",
        "",
        "Every GovESB process is configured only by environment variables starting with",
        "`GOVESB_`; a nested setting joins its names with `__`",
        "(`GOVESB_KAFKA__BOOTSTRAP_SERVERS`).",
        "Names ignore case. A name ending in `<…>` is a family: one variable per key (for",
        "example `GOVESB_SECRETS__UTUMISHI_SINK_TOKEN`). Secrets are never logged and have no",
        "default; `(unset)` means the setting is empty unless given. The container image",
        "(deploy/Dockerfile) sets `GOVESB_CATALOG=/opt/govesb/schemas/catalog.yaml`.",
        "",
    ]
    for process in PROCESSES:
        model = process.model
        lines += [f"## `{process.command}`", ""]
        lines.append(f"`{model.__module__}.{model.__name__}`: {_docstring(model)}")
        lines += ["", "| variable | type | default | description |", "|---|---|---|---|"]
        for variable in variables(model):
            lines.append(
                f"| `{variable.name}` | {_cell(variable.type)} | {_cell(variable.default)} "
                f"| {_cell(variable.description)} |"
            )
        groups = _nested_models(model)
        if groups:
            lines.append("")
            lines += [f"- `{env}`: {doc}" for env, doc in groups]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write the reference, or with ``--check`` say whether the committed one is current."""
    parser = argparse.ArgumentParser(prog="python -m deploy.config_reference")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    where = OUTPUT.relative_to(REPO_ROOT)
    if args.check:
        if current != text:
            print(f"{where} is stale: run python -m deploy.config_reference")
            return 1
        print(f"{where} is current")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {where}")
    missing = undocumented()
    if missing:
        print(
            f"{len(missing)} setting(s) without a description: {', '.join(missing)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
