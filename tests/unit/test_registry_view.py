"""The live registry view fails closed: what it cannot read is withheld, and health says so."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from streams.contract.reasons import EventError, Reason
from streams.pipeline.validation import validate
from streams.registry.view import Unreadable, view_health
from tests.unit.pipeline_fixtures import as_record, directory, prepared, registry_view, writer

CITIZEN = "tz.go.nida.CitizenRegistered"


def _newer_nida(view_raw: bytes) -> bytes:
    """nida's record as a newer tool might write it: its key revoked, with a field we lack."""
    document = json.loads(view_raw)
    document["keys"][0]["revoked"] = True
    document["keys"][0]["revoked_at"] = "2026-12-01T00:00:00Z"
    return json.dumps(document).encode()


def _reason(view) -> tuple[Reason, str]:
    with pytest.raises(EventError) as refused:
        validate(as_record(prepared("nida", CITIZEN)), directory(view), writer(CITIZEN),
                 dt.datetime.now(dt.UTC))  # fmt: skip
    return refused.value.reason, refused.value.detail


def test_an_unreadable_institution_record_withholds_its_keys_and_agreements() -> None:
    view = registry_view()
    good = view.raw["institution/nida"]
    seen: list[str] = []
    view.on_change(seen.append)

    view.apply("institution/nida", _newer_nida(good))

    assert _reason(view) == (
        Reason.UNKNOWN_KEY,
        "the registry record of nida cannot be read by the bus (malformed or of a newer "
        "format): its keys are withheld until it is rewritten",
    )
    assert "nida" not in view.institutions
    assert not [s for s in view.subscriptions.values() if s.subscriber == "nida"]
    assert view.key_owner("rita-e1ad5e26a22d") == "rita"  # everyone else goes on
    assert [s.id for s in view.subscriptions.values() if s.subscriber == "utumishi"]
    assert seen == ["institution/nida"]
    health = view.health()
    assert health["withheld_institutions"] == ["nida"]
    assert health["unreadable"] == [
        {
            "key": "institution/nida",
            "reason": "keys.0.revoked_at: Extra inputs are not permitted",
            "institution": "nida",
        }
    ]
    assert view.raw["institution/nida"] != good  # so `registry apply` rewrites it

    view.apply("institution/nida", good)
    assert validate(as_record(prepared("nida", CITIZEN)), directory(view), writer(CITIZEN),
                    dt.datetime.now(dt.UTC)).publisher == "nida"  # fmt: skip
    assert view.health()["unreadable"] == []
    assert view.health()["withheld_institutions"] == []
    assert {s.id for s in view.subscriptions.values() if s.subscriber == "nida"} == {
        "nida-births",
        "nida-deaths",
    }


def test_an_unreadable_agreement_is_withheld_on_its_own_and_a_tombstone_lifts_it() -> None:
    view = registry_view()
    view.apply("subscription/nida-births", b'{"id": "nida-births", "subscriber": "nida", "v": 2')
    assert "nida-births" not in view.subscriptions
    assert "nida-deaths" in view.subscriptions
    health = view.health()
    assert health["withheld_institutions"] == []
    assert health["unreadable"][0]["key"] == "subscription/nida-births"
    assert health["unreadable"][0]["reason"].startswith("not JSON")
    view.apply("subscription/nida-births", None)
    assert view.health()["unreadable"] == []


def test_a_record_under_another_entrys_key_is_unreadable() -> None:
    view = registry_view()
    rita = json.loads(view.raw["institution/rita"])
    view.apply("institution/nida", json.dumps(rita).encode())  # rita's keys, filed as nida's
    assert view.key_owner("rita-e1ad5e26a22d") == "rita"
    assert view.key_owner("nida-2e3f1f063154") is None
    assert view.health()["unreadable"] == [
        {
            "key": "institution/nida",
            "reason": "the record is of 'rita', not 'nida'",
            "institution": "nida",
        }
    ]


def test_a_record_of_an_unknown_kind_is_reported_and_left_alone() -> None:
    view = registry_view()
    view.apply("revocation/nida-2e3f1f063154", b'{"institution": "nida"}')
    assert "revocation/nida-2e3f1f063154" not in view.raw  # `registry apply` keeps it
    assert view.health()["unreadable"] == [
        {
            "key": "revocation/nida-2e3f1f063154",
            "reason": "unknown record kind 'revocation'",
            "institution": None,
        }
    ]


def test_health_is_stale_only_when_the_topic_moved_and_nothing_was_read() -> None:
    def health(behind: int | None, idle_s: float | None) -> dict:
        return view_health(loaded=True, unreadable=[], withheld=[], behind=behind,
                           idle_s=idle_s, stale_after_s=60)  # fmt: skip

    assert health(0, 600)["ok"] is True  # caught up, nothing new: not stale
    assert health(3, 10)["ok"] is True  # behind, but reading
    assert health(None, 600)["stale"] is False  # the end is not known
    stale = health(3, 61)
    assert (stale["ok"], stale["stale"], stale["behind"]) == (False, True, 3)
    assert view_health(loaded=False, unreadable=[], withheld=[], behind=None, idle_s=None,
                       stale_after_s=60)["ok"] is False  # fmt: skip
    unreadable = [Unreadable("institution/x", "bad", "x")]
    assert view_health(loaded=True, unreadable=unreadable, withheld=["x"], behind=0, idle_s=0,
                       stale_after_s=60)["ok"] is False  # fmt: skip


def test_a_signing_key_must_be_a_current_key_of_the_operator_with_that_private_key() -> None:
    from streams.contract.signing import load_private_key
    from streams.settings import REPO_ROOT

    def public(name: str):
        return load_private_key((REPO_ROOT / "deploy/demo-keys" / name).read_text()).public_key()

    view = registry_view()
    delivery = public("ega.key.pem")
    assert view.signing_key_problem("ega-d06f8e0a5d19", delivery, "ega") is None
    assert view.signing_key_problem("SET-ME-delivery-key-id", delivery, "ega") == (
        "key id 'SET-ME-delivery-key-id' is not a current key in esb.registry: register its "
        "public key under ega (`govesb registry apply`), or set the right key id"
    )
    assert view.signing_key_problem("nida-2e3f1f063154", public("nida.key.pem"), "ega") == (
        "key id 'nida-2e3f1f063154' is a key of nida, not of ega"
    )
    assert view.signing_key_problem("ega-d06f8e0a5d19", public("ega-gateway.key.pem"), "ega") == (
        "the key file does not hold the private key of 'ega-d06f8e0a5d19'"
    )
