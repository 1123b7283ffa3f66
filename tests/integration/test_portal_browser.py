"""``govesb portal`` in a real headless Chromium (Debian's, driven by Playwright): a real worker,
the real HTTP sink and a legacy endpoint produce the events; the portal is a ``govesb portal``
process with its own trace index. Screenshots go to the test's temporary directory."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.kafka.launcher import die_with_parent, free_port
from tests.conftest import TestEnvironment, _unavailable
from tests.integration import test_trace as traced
from tests.integration.test_pipeline import _publisher
from tests.unit.pipeline_fixtures import CATALOG, sample

# Each test starts a worker, a portal (which indexes the whole audit log) and maybe a sink.
pytestmark = [
    pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow,
    pytest.mark.timeout(300),
]  # fmt: skip

# The fixtures of the trace tests: an HTTP agreement of the test's own, its sink, an endpoint
# answering 503 then 200 (or 422), and `govesb trace` on an index of the test's own.
endpoint = traced.endpoint
subscriber = traced.subscriber
cli = traced.cli

SECRETS = {
    "rita": "rita-portal-secret-" + uuid.uuid4().hex[:8],
    "brela": "brela-portal-secret-" + uuid.uuid4().hex[:8],
}
OPERATOR = ("alice", "alice-portal-password-" + uuid.uuid4().hex[:8])
CITIZEN = "tz.go.nida.CitizenRegistered"
DEATH = "tz.go.rita.DeathRegistered"
PAGE_WAIT_S = 90.0


@pytest.fixture
async def start_portal(kafka: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a ``govesb portal`` process (showing the /health and /metrics of ``processes``);
    its base URL once it answers. Its log must hold no secret."""
    started: list[tuple[Any, Path]] = []

    async def start(processes: dict[str, str] | None = None) -> str:
        port = free_port()
        env = {
            **os.environ,
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
            **{f"GOVESB_CLIENTS__{k.upper()}": v for k, v in SECRETS.items()},
            f"GOVESB_OPERATORS__{OPERATOR[0].upper()}": OPERATOR[1],
            "GOVESB_TRACE__DATABASE": str(tmp_path / f"portal-{port}.sqlite"),
            "GOVESB_TRACE__SUBJECT_KEY": traced.SUBJECT_KEY.hex(),
            **{f"GOVESB_PROCESSES__{k.upper()}": v for k, v in (processes or {}).items()},
        }
        log_path = tmp_path / f"portal-{port}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("govesb")), "portal", "--web-port", str(port),
                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip
        started.append((process, log_path))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, log_path.read_text()
                try:
                    async with http.get(f"{base}/health") as response:
                        if response.status == 200:
                            return base
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"no portal: {log_path.read_text()}"
                await asyncio.sleep(0.2)

    yield start
    for process, log_path in started:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 30)
        log_text = log_path.read_text()
        assert code == 0, log_text
        for secret in [*SECRETS.values(), OPERATOR[1], traced.SUBJECT_KEY.hex()]:
            assert secret not in log_text


@pytest.fixture
async def browser(test_environment: TestEnvironment) -> AsyncIterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    if shutil.which("chromium") is None:
        _unavailable(test_environment, "Debian's chromium is not installed (make setup)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


class Visitor:
    """One browser context (its own cookies) on the portal; remembers every page it saw."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots
        self.seen: list[str] = []

    async def open(self, path: str) -> Any:
        await self.page.goto(self.base + path)
        self.seen.append(await self.page.content())
        return self.page

    async def sign_in(self, kind: str, name: str, secret: str) -> None:
        await self.open("/signin")
        await self.page.select_option("#kind", kind)
        await self.page.fill("#name", name)
        await self.page.fill("#secret", secret)
        await self.page.click("button[type=submit]")
        self.seen.append(await self.page.content())

    async def until(self, path: str, ready: Callable[[str], bool]) -> str:
        """Open ``path`` again until its text satisfies ``ready`` (the index follows the
        audit log); the page's text."""
        deadline = time.monotonic() + PAGE_WAIT_S
        while True:
            await self.open(path)
            text: str = await self.page.inner_text("main")
            if ready(text):
                return text
            assert time.monotonic() < deadline, f"{path} never showed what was awaited: {text}"
            await asyncio.sleep(0.5)

    async def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        return path


async def _visitor(browser: Any, portal: str, tmp_path: Path) -> Visitor:
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    return Visitor(await context.new_page(), portal, tmp_path)


async def _publish_tampered_death(kafka: str, registry: str) -> str:
    """A rita death whose payload no longer matches its signature; its event id."""
    async with _publisher(kafka, registry, "rita") as rita:
        entry = CATALOG.get(DEATH)
        assert entry is not None
        good = rita.prepare(entry, await rita._schemas.id_for(entry), sample(DEATH))
    tampered = bytearray(good.value)
    tampered[-2] ^= 0x01
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(
            "esb.ingress.rita", bytes(tampered), key=good.key, headers=list(good.headers)
        )
    finally:
        await producer.stop()
    return dict(good.headers)["ce_id"].decode()


def _no_secret_in(pages: list[str]) -> None:
    for html in pages:
        for secret in [*SECRETS.values(), OPERATOR[1], traced.SUBJECT_KEY.hex()]:
            assert secret not in html


async def test_an_institution_sees_its_agreements_as_owner_a_rejection_and_a_trace_to_its_endpoint(
    kafka: str, registry: str, endpoint: Any, subscriber: Any, cli: Any, start_portal: Any,
    browser: Any, tmp_path: Path,
) -> None:  # fmt: skip
    name, _ = subscriber
    portal = await start_portal()
    delivered = await traced._publish_routed(kafka, registry, cli, subscriber)
    rejected = await _publish_tampered_death(kafka, registry)
    rita = await _visitor(browser, portal, tmp_path)

    await rita.sign_in("institution", "rita", SECRETS["rita"])
    assert rita.page.url == f"{portal}/institutions/rita"
    owner = await rita.page.inner_text("main")
    assert "Who receives my data" in owner
    section = owner.split("Who receives my data")[1].split("What I receive")[0]
    assert "utumishi-deaths" in section
    assert "Stop salary payments to deceased public servants" in section
    assert "nida-births" in section
    await rita.shot("institution-agreements")

    # A rejected event: its reason on the rejections page, and in its trace.
    await rita.until("/institutions/rita/rejections", lambda text: rejected in text)
    # (Other workers on a shared bus may have rejected it too: one row each.)
    row = rita.page.locator("tr", has_text=rejected).first
    assert "bad-signature" in await row.inner_text()
    assert "signature does not verify" in await row.inner_text()
    await row.get_by_role("link", name=rejected).click()
    assert rita.page.url.endswith(f"/trace?id={rejected}")
    verdict = await rita.until(f"/trace?id={rejected}", lambda t: "rejected: bad-signature" in t)
    assert "signature does not verify with rita-" in verdict

    # The delivered event, to the HTTP endpoint: 503 first, then 200, every step timed.
    timeline = await rita.until(
        f"/trace?id={delivered}", lambda text: re.search(r"delivered\t" + name, text) is not None
    )
    assert "accepted" in await rita.page.inner_text("#verdict")
    steps = rita.page.locator("#steps tbody tr")
    rows = [await steps.nth(i).inner_text() for i in range(await steps.count())]
    attempt = next(r for r in rows if r.split("\t")[1] == "attempt" and name in r)
    done = next(r for r in rows if r.split("\t")[1] == "delivered" and name in r)
    assert "HTTP 503" in attempt
    assert "HTTP 200" in done
    assert f"{name} under {name}-deaths" in timeline
    times = [r.split("\t")[0] for r in rows]
    assert all(t.startswith("20") for t in times)
    assert times == sorted(times)
    assert delivered in endpoint.received
    await rita.shot("trace")

    # Readable on a phone: nothing wider than the screen (wide tables scroll in their box).
    await rita.page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/catalogue", f"/trace?id={delivered}", "/institutions/rita"):
        await rita.open(path)
        width = await rita.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
    await rita.shot("institution-phone")
    _no_secret_in(rita.seen)


async def test_the_data_tracker_answers_an_operator_and_refuses_an_unrelated_institution(
    kafka: str, registry: str, start_worker: Any, start_portal: Any, browser: Any, tmp_path: Path
) -> None:
    worker = start_worker()
    portal = await start_portal({"worker": f"http://127.0.0.1:{worker.web_port}"})
    nin = f"1991{uuid.uuid4().int % 10**16:016d}"
    async with _publisher(kafka, registry, "nida") as nida:
        event_id = await nida.publish(CITIZEN, sample(CITIZEN, nin=nin))

    operator = await _visitor(browser, portal, tmp_path)
    await operator.sign_in("operator", *OPERATOR)
    assert operator.page.url == f"{portal}/operator"
    flow = await operator.page.inner_text("#flow")
    assert "nida" in flow
    assert "ok" in await operator.page.inner_text("#processes")
    await operator.until(f"/trace?id={event_id}", lambda text: "tra-citizen-identity" in text)

    await operator.open("/tracker")
    await operator.page.fill("#key", nin)
    await operator.page.click("main button[type=submit]")
    operator.seen.append(await operator.page.content())
    # (Other workers on a shared bus may have routed it too: one row each.)
    answer = operator.page.locator("#disclosures tr", has_text="tra-citizen-identity").first
    text = await answer.inner_text()
    assert "tra" in text
    assert "phoneNumber masked" in text
    assert "Match taxpayers to verified identities" in text
    assert nin not in await operator.page.inner_text("#disclosures")
    await operator.shot("tracker-operator")

    brela = await _visitor(browser, portal, tmp_path)
    await brela.sign_in("institution", "brela", SECRETS["brela"])
    called = await brela.page.inner_text("#called")  # the services brela may call
    assert "TIN_STATUS" in called
    assert "tra" in called
    await brela.open("/tracker")
    await brela.page.fill("#key", nin)
    await brela.page.click("main button[type=submit]")
    brela.seen.append(await brela.page.content())
    refusal = await brela.page.inner_text("[role=alert]")
    assert "You may not see what the bus delivered about this key" in refusal
    assert await brela.page.locator("#disclosures").count() == 0
    # brela can neither trace nida's event nor open nida's pages.
    missing = await brela.until(f"/trace?id={event_id}", lambda text: "No record" in text)
    assert "tra-citizen-identity" not in missing
    response = await brela.page.goto(f"{portal}/institutions/nida/rejections")
    assert response is not None
    assert response.status == 404
    await brela.shot("tracker-refused")
    metrics = await _metrics(portal)
    assert metrics['govesb_portal_tracker_lookups_total{asker="operator",outcome="allowed"}'] == 1
    assert (
        metrics['govesb_portal_tracker_lookups_total{asker="institution",outcome="refused"}'] == 1
    )
    _no_secret_in(operator.seen + brela.seen)


def _client() -> aiohttp.ClientSession:
    """An HTTP client keeping cookies of 127.0.0.1 (aiohttp drops cookies of IP addresses by
    default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _form_token(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert found is not None
    return found.group(1)


async def test_forms_need_the_sessions_csrf_token_and_pages_need_a_sign_in(
    applied_registry: Path, start_portal: Any
) -> None:
    portal = await start_portal()
    async with _client() as anonymous:
        async with anonymous.get(f"{portal}/institutions/rita", allow_redirects=False) as page:
            assert (page.status, page.headers["Location"]) == (303, "/signin")
        async with anonymous.post(
            f"{portal}/signin",
            data={"kind": "institution", "name": "rita", "secret": SECRETS["rita"]},
            allow_redirects=False,
        ) as forged:
            assert forged.status == 403  # no token: not even a sign-in is taken
        token = await _form_token(anonymous, f"{portal}/signin")
        wrong = {"csrf": token, "kind": "institution", "name": "rita", "secret": "not-it"}
        async with anonymous.post(f"{portal}/signin", data=wrong) as refused:
            assert refused.status == 401
            assert "Unknown account or wrong secret" in await refused.text()
        right = {**wrong, "secret": SECRETS["rita"]}
        async with anonymous.post(f"{portal}/signin", data=right) as signed:
            assert signed.status == 200
            assert str(signed.url) == f"{portal}/institutions/rita"
        rita = anonymous
        token = await _form_token(rita, f"{portal}/tracker")
        async with _client() as other:
            other_token = await _form_token(other, f"{portal}/signin")
        for data in ({"key": "123"}, {"key": "123", "csrf": other_token}):
            async with rita.post(f"{portal}/tracker", data=data) as forged:
                assert forged.status == 403
                assert "did not come from this portal" in await forged.text()
        async with rita.post(f"{portal}/signout", data={"csrf": token}) as out:
            assert str(out.url) == f"{portal}/signin"
        async with rita.get(f"{portal}/institutions/rita", allow_redirects=False) as after:
            assert after.status == 303
        for path in ("/operator", "/institutions/nida", "/operator/audit"):
            async with rita.get(portal + path, allow_redirects=False) as page:
                assert page.status == 303
        metrics = await _metrics(portal)
        assert metrics['govesb_portal_sign_ins_total{kind="institution",outcome="refused"}'] == 1
        assert metrics['govesb_portal_sign_ins_total{kind="institution",outcome="ok"}'] == 1
        async with rita.get(f"{portal}/health") as health:
            assert (await health.json())["checks"]["trace_index"]["ok"] is True


async def _metrics(portal: str) -> dict[str, float]:
    """The portal's /metrics as series to value."""
    async with aiohttp.ClientSession() as http, http.get(f"{portal}/metrics") as response:
        text = await response.text()
    return {
        series: float(value)
        for series, _, value in (line.rpartition(" ") for line in text.splitlines())
        if series and not series.startswith("#")
    }


async def _signed_in(http: aiohttp.ClientSession, portal: str, kind: str, name: str,
                     secret: str) -> None:  # fmt: skip
    token = await _form_token(http, f"{portal}/signin")
    data = {"csrf": token, "kind": kind, "name": name, "secret": secret}
    async with http.post(f"{portal}/signin", data=data) as response:
        assert response.status == 200


async def test_an_operator_replays_a_dead_letter_after_confirming_and_the_trace_says_who(
    kafka: str, registry: str, endpoint: Any, subscriber: Any, cli: Any, start_portal: Any,
    browser: Any, tmp_path: Path,
) -> None:  # fmt: skip
    portal = await start_portal()
    endpoint.first_answer = 422
    name, _ = subscriber
    event_id = await traced._publish_routed(kafka, registry, cli, subscriber)
    await traced._trace_until(cli, event_id, "dead-lettered")

    async with _client() as http:  # an institution sees no replay button
        await _signed_in(http, portal, "institution", "rita", SECRETS["rita"])
        async with http.get(f"{portal}/institutions/{name}/dlq/replay?id={event_id}") as page:
            assert page.status == 404

    operator = await _visitor(browser, portal, tmp_path)
    await operator.sign_in("operator", *OPERATOR)
    await operator.until(f"/institutions/{name}/dlq", lambda text: event_id in text)
    row = operator.page.locator("tr", has_text=event_id)
    assert "422" in await row.inner_text()
    await row.get_by_role("checkbox").check()
    await operator.page.click("text=Replay the selected")
    assert "will be sent back" in await operator.page.inner_text("main")
    assert endpoint.received.count(event_id) == 0  # nothing is sent before the confirmation
    await operator.shot("replay-confirm")
    await operator.page.click("text=Confirm: replay 1 dead letter(s)")
    assert "Replayed 1 dead letter(s)" in await operator.page.inner_text("[role=status]")

    timeline = await operator.until(
        f"/trace?id={event_id}",
        lambda text: re.search(r"delivered\t" + name, text) is not None,
    )
    assert "by operator:alice" in timeline
    replayed = (await _metrics(portal))[
        f'govesb_portal_replayed_dead_letters_total{{subscriber="{name}"}}'
    ]
    assert replayed == 1
    assert event_id in endpoint.received
    _no_secret_in(operator.seen)
