"""The registry of institutions and data-sharing agreements, and its lint.

Declared in YAML (``deploy/registry.example.yaml``), checked by ``govesb registry lint``,
applied by ``govesb registry apply`` to the compacted ``esb.registry`` topic. Event types
come from the catalogue the YAML names, so there is one source for them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from streams.contract.catalog import Catalog, CatalogError, EventType, Problem
from streams.contract.signing import KeyFormatError, load_public_key

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,39}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InstitutionKey(_Model):
    """A public key an institution signs with; ``public_key`` is PEM or base64 DER."""

    id: Annotated[str, Field(min_length=3, max_length=80)]
    public_key: str
    revoked: bool = False


def _no_credentials(url: str | None) -> str | None:
    """A URL in the registry names a place, never a secret: no ``user:password@``."""
    if url is not None and urlsplit(url).password is not None:
        raise ValueError("the URL carries a password: give it through secret_ref instead")
    return url


class EndpointAuth(_Model):
    """How the HTTP sink authenticates; secrets are named, never written in the YAML."""

    type: Literal["none", "bearer", "basic", "oauth2", "hmac", "mtls"] = "none"
    secret_ref: str | None = Field(
        default=None, description="name of the environment variable holding the secret"
    )
    username: str | None = None
    token_url: Annotated[str | None, AfterValidator(_no_credentials)] = None


class Endpoint(_Model):
    """An institution's HTTP endpoint for deliveries."""

    url: Annotated[str, Field(pattern=r"^https?://"), AfterValidator(_no_credentials)]
    format: Literal["cloudevents", "govesb"] = "cloudevents"
    auth: EndpointAuth = EndpointAuth()
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    verify_tls: bool = True


class Institution(_Model):
    """A public institution connected to the bus."""

    id: Identifier
    name: str
    systems: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]] = Field(min_length=1)
    keys: list[InstitutionKey] = []
    endpoint: Endpoint | None = None


class Condition(_Model):
    """One filter condition on a payload field; all conditions of a filter must hold."""

    field: str
    op: Literal["eq", "ne", "in", "not_in", "gt", "ge", "lt", "le", "exists"]
    value: Any = None


class Subscription(_Model):
    """A data-sharing agreement: who receives which events, which fields, how."""

    id: Identifier
    subscriber: Identifier
    event_types: list[str] = Field(min_length=1)
    fields: list[str] = Field(min_length=1, description="the only fields delivered")
    mask: list[str] = []
    filter: list[Condition] = []
    schema_version: int | Literal["latest"] = "latest"
    delivery: Literal["kafka", "http"] = "kafka"
    purpose: str = ""


ApiCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")]


class Service(_Model):
    """How an institution serves one API of the catalogue (its ``services`` entry).

    ``served_by: http``: a legacy endpoint the provider connector calls in GovESB provider
    format (``endpoint``, authenticated as the HTTP sink does). ``served_by: kafka``: a
    Kafka-native provider reads ``esb.request.<provider>`` and answers on its ingress topic.
    ``late_answers_s``: how long after the deadline a late answer (``/engine/esb/async``) is
    still taken and passed on to the requester; 0 takes none.
    """

    api_code: ApiCode
    served_by: Literal["http", "kafka"]
    endpoint: Endpoint | None = None
    deadline_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    late_answers_s: Annotated[float, Field(ge=0, le=7 * 86_400)] = 0.0
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3


class Grant(_Model):
    """An access right: ``consumer`` may call ``api_code``, and sees only ``fields`` of the
    answers (``mask`` ones masked), at most ``rate_per_s`` requests per second.

    The rate is kept by each gateway replica and each worker process for what it sees (a
    requester's requests spread over its ingress partitions): with N of them the bound is at
    most N times ``rate_per_s``.
    """

    id: Identifier
    consumer: Identifier
    api_code: ApiCode
    fields: list[str] = Field(min_length=1, description="the only answer fields the consumer sees")
    mask: list[str] = []
    rate_per_s: Annotated[float, Field(gt=0, le=100_000)] = 50.0
    purpose: str = ""


class RegistryDocument(_Model):
    """The YAML document as written."""

    catalog: Path
    institutions: list[Institution]
    subscriptions: list[Subscription] = []
    services: list[Service] = []
    grants: list[Grant] = []


class BusRegistry(BaseModel):
    """A linted registry: the document plus the catalogue it names."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    document: RegistryDocument
    catalog: Catalog

    @property
    def institutions(self) -> dict[str, Institution]:
        """Institutions by id."""
        return {i.id: i for i in self.document.institutions}

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """Subscriptions by id."""
        return {s.id: s for s in self.document.subscriptions}

    @property
    def services(self) -> dict[str, Service]:
        """Services served, by api code."""
        return {s.api_code: s for s in self.document.services}

    @property
    def grants(self) -> dict[str, Grant]:
        """Grants by id."""
        return {g.id: g for g in self.document.grants}


def _yaml_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def _field_names(event_type: EventType) -> set[str]:
    return set(event_type.field_names)


def lint_document(document: RegistryDocument, catalog: Catalog) -> list[Problem]:
    """Semantic checks of a well-formed document against the catalogue."""
    problems: list[Problem] = []
    institutions = {i.id for i in document.institutions}

    def duplicates(kind: str, values: list[str], path: str) -> None:
        for value, count in Counter(values).items():
            if count > 1:
                problems.append(Problem(path=path, message=f"duplicate {kind} {value!r}"))

    duplicates("institution id", [i.id for i in document.institutions], "institutions")
    duplicates(
        "key id", [k.id for i in document.institutions for k in i.keys], "institutions[*].keys"
    )
    duplicates("subscription id", [s.id for s in document.subscriptions], "subscriptions")

    owners = {t.owner for t in catalog}
    for index, institution in enumerate(document.institutions):
        where = f"institutions[{index}]"
        for key_index, key in enumerate(institution.keys):
            try:
                load_public_key(key.public_key)
            except KeyFormatError as error:
                problems.append(
                    Problem(path=f"{where}.keys[{key_index}].public_key", message=str(error))
                )
        if institution.id in owners and not any(not k.revoked for k in institution.keys):
            problems.append(
                Problem(
                    path=f"{where}.keys",
                    message=f"{institution.id} publishes event types but has no valid key",
                )
            )
    for event_type in catalog:
        if event_type.owner not in institutions:
            problems.append(
                Problem(
                    path=f"catalog: event_types.{event_type.name}.owner",
                    message=f"unknown institution {event_type.owner!r}",
                )
            )

    for index, subscription in enumerate(document.subscriptions):
        where = f"subscriptions[{index}]"
        if subscription.subscriber not in institutions:
            problems.append(
                Problem(
                    path=f"{where}.subscriber",
                    message=f"unknown institution {subscription.subscriber!r}",
                )
            )
        elif subscription.delivery == "http" and not next(
            i.endpoint for i in document.institutions if i.id == subscription.subscriber
        ):
            problems.append(
                Problem(
                    path=f"{where}.delivery",
                    message=f"http delivery but {subscription.subscriber} has no endpoint",
                )
            )
        types: list[EventType] = []
        for type_index, name in enumerate(subscription.event_types):
            found = catalog.get(name)
            if found is None:
                problems.append(
                    Problem(
                        path=f"{where}.event_types[{type_index}]",
                        message=f"unknown event type {name!r}",
                    )
                )
            else:
                types.append(found)
        for list_name in ("fields", "mask"):
            for field_index, field in enumerate(getattr(subscription, list_name)):
                for event_type in types:
                    if field not in _field_names(event_type):
                        problems.append(
                            Problem(
                                path=f"{where}.{list_name}[{field_index}]",
                                message=f"{event_type.name} has no field {field!r}",
                            )
                        )
        for field_index, field in enumerate(subscription.mask):
            if field not in subscription.fields:
                problems.append(
                    Problem(
                        path=f"{where}.mask[{field_index}]",
                        message=f"{field!r} is masked but not among the delivered fields",
                    )
                )
        for condition_index, condition in enumerate(subscription.filter):
            for event_type in types:
                if condition.field not in _field_names(event_type):
                    problems.append(
                        Problem(
                            path=f"{where}.filter[{condition_index}].field",
                            message=f"{event_type.name} has no field {condition.field!r}",
                        )
                    )
            if condition.op in ("in", "not_in") and not isinstance(condition.value, list):
                problems.append(
                    Problem(
                        path=f"{where}.filter[{condition_index}].value",
                        message=f"'{condition.op}' needs a list",
                    )
                )
        duplicates("field", subscription.fields, f"{where}.fields")
    problems += lint_services(document, catalog)
    return problems


def lint_services(document: RegistryDocument, catalog: Catalog) -> list[Problem]:
    """Services name an api code of the catalogue and say how they are reached; grants name
    a served api code, a known consumer and fields of its response."""
    problems: list[Problem] = []
    institutions = {i.id: i for i in document.institutions}
    for value, count in Counter(s.api_code for s in document.services).items():
        if count > 1:
            problems.append(Problem(path="services", message=f"duplicate api code {value!r}"))
    for value, count in Counter(g.id for g in document.grants).items():
        if count > 1:
            problems.append(Problem(path="grants", message=f"duplicate grant id {value!r}"))
    for index, service in enumerate(document.services):
        where = f"services[{index}]"
        declared = catalog.services.get(service.api_code)
        if declared is None:
            problems.append(
                Problem(f"{where}.api_code", f"{service.api_code!r} is not in the catalogue")
            )
        elif declared.provider not in institutions:
            problems.append(Problem(f"{where}.api_code", f"unknown provider {declared.provider!r}"))
        elif not any(not k.revoked for k in institutions[declared.provider].keys):
            problems.append(
                Problem(f"{where}.api_code", f"{declared.provider} serves it but has no valid key")
            )
        if service.served_by == "http" and service.endpoint is None:
            problems.append(Problem(f"{where}.endpoint", "served_by http needs an endpoint"))
        if service.served_by == "kafka" and service.endpoint is not None:
            problems.append(Problem(f"{where}.endpoint", "served_by kafka takes no endpoint"))
    served = {s.api_code for s in document.services}
    for index, grant in enumerate(document.grants):
        where = f"grants[{index}]"
        if grant.consumer not in institutions:
            problems.append(Problem(f"{where}.consumer", f"unknown institution {grant.consumer!r}"))
        declared = catalog.services.get(grant.api_code)
        if grant.api_code not in served or declared is None:
            problems.append(
                Problem(f"{where}.api_code", f"{grant.api_code!r} is not served by anyone")
            )
            continue
        fields = set(declared.response.field_names)
        for list_name in ("fields", "mask"):
            for field_index, name in enumerate(getattr(grant, list_name)):
                if name not in fields:
                    problems.append(
                        Problem(
                            f"{where}.{list_name}[{field_index}]",
                            f"{declared.response.name} has no field {name!r}",
                        )
                    )
        for field_index, name in enumerate(grant.mask):
            if name not in grant.fields:
                problems.append(
                    Problem(
                        f"{where}.mask[{field_index}]",
                        f"{name!r} is masked but not among the fields the consumer sees",
                    )
                )
    return problems


def load_registry(path: Path) -> tuple[BusRegistry | None, list[Problem]]:
    """Read, validate and lint a registry YAML; the registry is None when anything is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        return None, [Problem(path=str(path), message=f"cannot read: {error.strerror}")]
    except yaml.YAMLError as error:
        return None, [Problem(path=str(path), message=f"not valid YAML: {error}")]
    try:
        document = RegistryDocument.model_validate(raw)
    except ValidationError as error:
        return None, [
            Problem(path=_yaml_path(tuple(e["loc"])), message=e["msg"]) for e in error.errors()
        ]
    catalog_path = (
        document.catalog if document.catalog.is_absolute() else path.parent / document.catalog
    )
    try:
        catalog = Catalog.load(catalog_path)
    except CatalogError as error:
        return None, [Problem(path="catalog", message=str(error))]
    problems = lint_document(document, catalog)
    if problems:
        return None, problems
    return BusRegistry(document=document, catalog=catalog), []
