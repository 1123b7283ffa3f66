"""``govesb portal``: the portal process (HTTP server, registry view, trace index follower,
the data tracker's audit recorder)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from connectors.gateway.runner import AccessLog
from connectors.portal.app import Portal, PortalContext
from connectors.portal.catalogue import load_samples
from connectors.portal.sessions import SessionStore, SignIn
from connectors.serving import serve, stop_requested
from connectors.settings import PortalSettings
from streams.contract.catalog import Catalog
from streams.registry.view import RegistryView
from streams.trace.index import AuditIndex
from streams.trace.lookups import AuditLookupRecorder
from streams.trace.store import TraceStore, open_store

log = logging.getLogger(__name__)


async def run_portal(settings: PortalSettings) -> None:
    """Serve the portal until SIGTERM/SIGINT; keep its trace index up to date meanwhile."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    catalog = Catalog.load(settings.catalog)
    url = settings.trace.database_url
    async with contextlib.AsyncExitStack() as stack:  # what started is stopped, in reverse
        store = open_store(settings.trace.database, url.get_secret_value() if url else None)
        stack.callback(store.close)
        view = RegistryView(settings.kafka)
        await view.start()
        stack.push_async_callback(view.stop)
        recorder = await AuditLookupRecorder.connect(settings.kafka)
        stack.push_async_callback(recorder.close)
        await _serve(settings, catalog, store, view, recorder)


async def _serve(
    settings: PortalSettings,
    catalog: Catalog,
    store: TraceStore,
    view: RegistryView,
    recorder: AuditLookupRecorder,
) -> None:
    key = settings.trace.subject_key
    context = PortalContext(
        settings=settings,
        view=view,
        catalog=catalog,
        samples=load_samples(settings.samples or settings.catalog.with_name("samples.yaml")),
        store=store,
        recorder=recorder,
        sessions=SessionStore(settings.session_ttl_s, settings.max_sessions),
        sign_in=SignIn(
            {k: v.get_secret_value() for k, v in settings.clients.items()},
            {k: v.get_secret_value() for k, v in settings.operators.items()},
            settings.sign_in_failures_per_ip,
        ),
        subject_key=bytes.fromhex(key.get_secret_value()) if key else None,
    )
    stopping = stop_requested()
    index = AuditIndex(
        store, settings.kafka, retention=dt.timedelta(days=settings.trace.retention_days)
    )
    follower = asyncio.create_task(index.follow(stopping), name="trace-index")
    context.follower = follower
    runner = await serve(
        Portal(context).application(), settings.web_host, settings.web_port,
        access_log_class=AccessLog,
    )  # fmt: skip
    log.info("portal at http://%s:%d/", settings.web_host, settings.web_port)
    try:
        await asyncio.wait(
            [follower, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if follower.done() and not stopping.is_set():
            follower.result()  # the follower failed: say why, and stop
    finally:
        stopping.set()
        await runner.cleanup()
        with contextlib.suppress(TimeoutError):  # bounded: the follower stops on `stopping`
            await asyncio.wait_for(follower, 10)
