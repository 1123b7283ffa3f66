"""The portal's routes: server-rendered pages for institutions and operators.

Every page needs a session that has signed in, except the sign-in page and ``/health``.
Every POST carries the session's CSRF token (checked in one middleware, before any handler).
An institution sees its own pages only (another's answer 404, as unknown ones do); an
operator sees every institution's and the operator pages. Templates escape everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiokafka.errors import KafkaError

from connectors.gateway.errors import HttpError
from connectors.http_sink.dlq import DeadLetter, read_dead_letters, replay
from connectors.portal import bus, catalogue
from connectors.portal.metrics import PortalMetrics
from connectors.portal.sessions import COOKIE, Session, SessionStore, SignIn, Who
from streams.contract.catalog import Catalog
from streams.health import metrics_text, registry_view_check, report
from streams.registry.view import RegistryView
from streams.trace.queries import Asker, LookupRecorder, Refused, Trace, trace, track
from streams.trace.store import TraceStore

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
SESSION = "portal_session"
MAX_ROWS = 500  # rejections or dead letters on one page, newest first
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class PortalContext:
    """What the pages read: the live registry, the catalogue, the trace index, the bus."""

    settings: Any  # connectors.settings.PortalSettings
    view: RegistryView
    catalog: Catalog
    samples: dict[str, Any]
    store: TraceStore
    recorder: LookupRecorder
    sessions: SessionStore
    sign_in: SignIn
    subject_key: bytes | None = None
    metrics: PortalMetrics = field(default_factory=PortalMetrics)
    follower: asyncio.Task[None] | None = None  # the trace index's follower, once started


def redirect(location: str) -> web.Response:
    """A 303 to ``location`` (returned, so the session cookie and headers go with it)."""
    return web.Response(status=303, headers={"Location": location})


def visible_trace(found: Trace, who: Who) -> Trace | None:
    """What ``who`` may see of a trace: everything for an operator and the publisher (or
    requester); for a subscriber (or a request's provider), the worker's steps and its own;
    nothing for anyone else."""
    if who.operator or found.publisher == who.institution:
        return found
    mine = tuple(d for d in found.deliveries if d.subscriber == who.institution)
    if not mine and all(s.subscriber != who.institution for s in found.steps):
        return None
    steps = tuple(s for s in found.steps if s.subscriber in (None, who.institution))
    return replace(found, deliveries=mine, steps=steps)


class Portal:
    """The aiohttp application of ``govesb portal``."""

    def __init__(self, context: PortalContext) -> None:
        self.context = context
        self.settings = context.settings
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    # ----------------------------------------------------------------- plumbing

    def application(self) -> web.Application:
        """The routes and middlewares."""
        app = web.Application(middlewares=[self._sessions], client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/metrics", self.metrics),
                web.get("/signin", self.signin_page),
                web.post("/signin", self.signin),
                web.post("/signout", self.signout),
                web.get("/", self.home),
                web.get("/catalogue", self.catalogue_page),
                web.get("/institutions/{id}", self.institution_page),
                web.get("/institutions/{id}/rejections", self.rejections_page),
                web.get("/institutions/{id}/dlq", self.dlq_page),
                web.get("/institutions/{id}/dlq/replay", self.replay_confirm),
                web.post("/institutions/{id}/dlq/replay", self.replay_dead_letters),
                web.get("/trace", self.trace_page),
                web.get("/tracker", self.tracker_page),
                web.post("/tracker", self.tracker),
                web.get("/operator", self.operator_page),
                web.get("/operator/audit", self.audit_page),
                web.static("/static", STATIC),
            ]
        )
        return app

    @web.middleware
    async def _sessions(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/health", "/metrics") or request.path.startswith("/static/"):
            return await handler(request)  # no session for probes and the style sheet
        sessions = self.context.sessions
        session = sessions.get(request.cookies.get(COOKIE))
        fresh = session is None
        if session is None:
            session = sessions.new()
        request[SESSION] = session
        if request.method == "POST":
            form = await request.post()
            given = form.get("csrf")
            if not session.csrf_matches(given if isinstance(given, str) else None):
                response: web.StreamResponse = self._page(
                    "error.html", request, status=403,
                    message="This form has expired or did not come from this portal. "
                    "Open the page again and resend it.",
                )  # fmt: skip
                fresh = True
            else:
                response = await self._handle(request, handler)
        else:
            response = await self._handle(request, handler)
        session = request[SESSION]  # sign-in and sign-out replace it
        if fresh or request.get("new_session"):
            response.set_cookie(
                COOKIE, session.id, httponly=True, samesite="Strict",
                secure=self.settings.secure_cookies, path="/",
            )  # fmt: skip
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exception:
            if exception.status in (403, 404):
                return self._page("error.html", request, status=exception.status,
                                  message="Nothing to show here.")  # fmt: skip
            if exception.status == 400:
                return self._page("error.html", request, status=400, message=exception.text)
            return web.Response(status=exception.status, headers=exception.headers)
        except (TimeoutError, OSError, KafkaError) as error:  # the bus is down or slow
            log.warning("%s %s: %s", request.method, request.path, type(error).__name__)
            message = "The bus did not answer in time: try again shortly."
            return self._page("error.html", request, status=503, message=message)

    def _page(
        self, name: str, request: web.Request, status: int = 200, **values: Any
    ) -> web.Response:
        session = request[SESSION]
        text = self.templates.get_template(name).render(
            who=session.who, csrf=session.csrf, **values
        )
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")

    @staticmethod
    def _who(request: web.Request) -> Who:
        session: Session = request[SESSION]
        who = session.who
        if who is None:
            raise web.HTTPSeeOther("/signin")
        return who

    def _operator(self, request: web.Request) -> Who:
        who = self._who(request)
        if who.operator is None:
            raise web.HTTPNotFound()
        return who

    def _institution(self, request: web.Request) -> str:
        """The institution of the page, if ``who`` may see it (else 404, like an unknown one)."""
        who = self._who(request)
        wanted = request.match_info["id"]
        if who.operator is None and wanted != who.institution:
            raise web.HTTPNotFound()
        if wanted not in self.context.view.institutions:
            raise web.HTTPNotFound()
        return wanted

    # ----------------------------------------------------------------- sign-in

    async def health(self, request: web.Request) -> web.Response:
        """The portal's own health: the registry view and the trace index's follower."""
        follower = self.context.follower
        status, body = report(
            {
                "registry_view": registry_view_check(self.context.view),
                "trace_index": {"ok": follower is not None and not follower.done()},
            }
        )
        return web.json_response(body, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition of the portal's metrics."""
        body, content_type = metrics_text(self.context.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def signin_page(self, request: web.Request) -> web.Response:
        """The sign-in form."""
        return self._page("signin.html", request, error=None)

    async def signin(self, request: web.Request) -> web.StreamResponse:
        """Check the credentials; a new session on success."""
        form = await request.post()
        kind = "operator" if form.get("kind") == "operator" else "institution"
        name = str(form.get("name", "")).strip().lower()
        secret = str(form.get("secret", ""))
        try:
            who = await self.context.sign_in.check(kind, name, secret, request.remote or "")
        except HttpError as error:
            outcome = "limited" if error.status == 429 else "refused"
            self.context.metrics.sign_ins.labels(kind, outcome).inc()
            log.info("portal sign-in refused (%s, %s)", kind, error.status)
            message = (
                "Too many failed sign-ins: wait a minute and try again."
                if error.status == 429
                else "Unknown account or wrong secret."
            )
            return self._page("signin.html", request, status=error.status, error=message)
        self.context.sessions.end(request[SESSION].id)
        request[SESSION] = self.context.sessions.new(who)
        request["new_session"] = True
        self.context.metrics.sign_ins.labels(kind, "ok").inc()
        log.info("portal sign-in: %s", who.label)
        return redirect("/")

    async def signout(self, request: web.Request) -> web.StreamResponse:
        """End the session."""
        self.context.sessions.end(request[SESSION].id)
        request[SESSION] = self.context.sessions.new()
        request["new_session"] = True
        return redirect("/signin")

    # ----------------------------------------------------------------- institution pages

    async def home(self, request: web.Request) -> web.StreamResponse:
        """An institution's own page, or the operator's."""
        who = self._who(request)
        if who.operator:
            return redirect("/operator")
        return redirect(f"/institutions/{who.institution}")

    async def catalogue_page(self, request: web.Request) -> web.Response:
        """Every event type: fields with docs and PII marks, samples, versions."""
        self._who(request)
        rows = catalogue.catalogue(self.context.catalog, self.context.samples)
        return self._page("catalogue.html", request, event_types=rows)

    async def institution_page(self, request: web.Request) -> web.Response:
        """Agreements as owner and as subscriber, services, metrics."""
        institution = self._institution(request)
        view, catalog = self.context.view, self.context.catalog
        subscriptions = list(view.subscriptions.values())
        services, grants = list(view.services.values()), list(view.grants.values())
        _, texts = await bus.process_states(self.settings.processes, self.settings.read_timeout_s)
        return self._page(
            "institution.html", request,
            institution=view.institutions[institution],
            owned=[t.name for t in catalog.owned_by(institution)],
            as_owner=catalogue.as_owner(subscriptions, catalog, institution),
            as_subscriber=catalogue.as_subscriber(subscriptions, catalog, institution),
            served=catalogue.services_served(services, grants, institution),
            called=catalogue.services_called(services, grants, institution),
            flow=bus.flows(texts).get(institution, bus.Flow()),
            calls=bus.calls_by_api(texts),
        )  # fmt: skip

    async def rejections_page(self, request: web.Request) -> web.Response:
        """The institution's rejected events with reason and detail."""
        institution = self._institution(request)
        rows = await bus.rejections(self.settings.kafka, institution, self.settings.read_timeout_s)
        return self._page("setaside.html", request, institution=institution,
                          rows=rows[:MAX_ROWS], total=len(rows), kind="rejections")  # fmt: skip

    async def dlq_page(self, request: web.Request) -> web.Response:
        """The institution's dead letters."""
        institution = self._institution(request)
        rows = await bus.dead_letters(
            self.settings.kafka, institution, self.settings.read_timeout_s
        )
        return self._page("setaside.html", request, institution=institution,
                          rows=rows[:MAX_ROWS], total=len(rows), kind="dlq")  # fmt: skip

    async def _letters(self, institution: str, ids: set[str]) -> list[DeadLetter]:
        if not ids:
            return []
        return await asyncio.wait_for(
            read_dead_letters(self.settings.kafka, institution, None, ids),
            self.settings.read_timeout_s,
        )

    async def replay_confirm(self, request: web.Request) -> web.Response:
        """The confirmation step of a replay: what would be sent again."""
        self._operator(request)
        institution = self._institution(request)
        ids = {i for i in request.query.getall("id", []) if i}
        letters = await self._letters(institution, ids)
        rows = [bus.set_aside_row(letter) for letter in letters]
        return self._page("replay.html", request, institution=institution, letters=rows, done=None)

    async def replay_dead_letters(self, request: web.Request) -> web.Response:
        """Send the confirmed dead letters back for delivery; the audit log says who did."""
        who = self._operator(request)
        institution = self._institution(request)
        form = await request.post()
        ids = {str(i) for i in form.getall("id", []) if i}
        if form.get("confirm") != "yes":
            raise web.HTTPBadRequest(text="confirm the replay")
        letters = await self._letters(institution, ids)
        count = await replay(self.settings.kafka, institution, letters, who.label)
        self.context.metrics.replayed.labels(institution).inc(count)
        log.info("%s replayed %d dead letter(s) of %s: %s", who.label, count, institution,
                 ", ".join(sorted(letter.event_id for letter in letters)))  # fmt: skip
        rows = [bus.set_aside_row(letter) for letter in letters]
        return self._page("replay.html", request, institution=institution, letters=rows, done=count)

    # ----------------------------------------------------------------- trace and tracker

    async def trace_page(self, request: web.Request) -> web.Response:
        """Where is my event? Its timeline, as far as the signed-in user may see it."""
        who = self._who(request)
        wanted = request.query.get("id", "").strip()
        found = trace(self.context.store, wanted) if wanted else None
        shown = visible_trace(found, who) if found else None
        return self._page("trace.html", request, wanted=wanted, trace=shown)

    async def tracker_page(self, request: web.Request) -> web.Response:
        """The data tracker's form."""
        self._who(request)
        return self._page("tracker.html", request, tracking=None, refused=None)

    async def tracker(self, request: web.Request) -> web.Response:
        """Which agreements delivered data about a business key (the lookup is audited)."""
        who = self._who(request)
        form = await request.post()
        key = str(form.get("key", "")).strip()
        if self.context.subject_key is None or not key:
            return self._page("tracker.html", request, status=400, tracking=None,
                              refused="The data tracker is not configured on this portal."
                              if self.context.subject_key is None else "Give a key.")  # fmt: skip
        asker = Asker(operator=who.operator, institution=who.institution)
        asker_kind = "operator" if who.operator else "institution"
        try:
            found = await track(self.context.store, self.context.subject_key, key, asker,
                                self.context.recorder)  # fmt: skip
        except Refused:
            self.context.metrics.lookups.labels(asker_kind, "refused").inc()
            return self._page("tracker.html", request, status=403, tracking=None,
                              refused="You may not see what the bus delivered about this key: "
                              "operators and the institution that owns the data only. "
                              "This lookup was recorded.")  # fmt: skip
        self.context.metrics.lookups.labels(asker_kind, "allowed").inc()
        return self._page("tracker.html", request, tracking=found, refused=None)

    # ----------------------------------------------------------------- operator pages

    async def operator_page(self, request: web.Request) -> web.Response:
        """The whole flow, every process's health, pending registry changes."""
        self._operator(request)
        states, texts = await bus.process_states(
            self.settings.processes, self.settings.read_timeout_s
        )
        flows = bus.flows(texts)
        institutions = sorted(self.context.view.institutions)
        pending = bus.pending_changes(self.settings.registry_file, self.context.view.raw)
        return self._page(
            "operator.html", request, processes=states, pending=pending,
            flows=[(i, flows.get(i, bus.Flow())) for i in institutions],
        )  # fmt: skip

    async def audit_page(self, request: web.Request) -> web.Response:
        """The audit chains, verified now."""
        from streams.audit.verify import verify_topic
        from streams.contract import topics

        self._operator(request)
        try:
            reports = await asyncio.wait_for(
                verify_topic(self.settings.kafka, topics.AUDIT), self.settings.read_timeout_s * 6
            )
        except (LookupError, TimeoutError) as error:
            problem = f"could not read {topics.AUDIT}: {type(error).__name__}"
            return self._page("audit.html", request, chains=[], problem=problem)
        return self._page("audit.html", request, chains=bus.audit_status(reports), problem=None)
