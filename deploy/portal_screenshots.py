"""The README's portal screenshots, taken with Debian's Chromium from a running ``make demo``.

``python -m deploy.portal_screenshots http://127.0.0.1:<port>/`` (with ``make demo
ARGS=--keep-running`` up) signs in as the demo's rita, saves its agreements page, and the
trace of an event the HTTP sink delivered to utumishi's legacy endpoint, under
``deploy/screenshots/``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
from pathlib import Path

from deploy.demo_legacy import RITA_SECRET
from deploy.kafka.launcher import REPO

OUT = REPO / "deploy" / "screenshots"
INDEX = REPO / ".cache" / "dev" / "portal-trace.sqlite"


def delivered_event(index: Path = INDEX) -> str:
    """An event of rita's the HTTP sink delivered (from the demo portal's trace index)."""
    with sqlite3.connect(index) as db:
        row = db.execute(
            "SELECT event_id FROM audit_record WHERE outcome = 'delivered' AND publisher = 'rita' "
            "ORDER BY time LIMIT 1"
        ).fetchone()
    if row is None:
        raise SystemExit("no delivered event in the demo's index yet")
    return str(row[0])


async def shoot(base: str, event_id: str, out: Path) -> list[Path]:
    """Sign in as rita; save the agreements page and the event's trace page."""
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (make setup installs it)")
    saved = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1100, "height": 800})
        await page.goto(base.rstrip("/") + "/signin")
        await page.fill("#name", "rita")
        await page.fill("#secret", RITA_SECRET)
        await page.click("button[type=submit]")
        for name, path in (
            ("agreements", "/institutions/rita"),
            ("trace", f"/trace?id={event_id}"),
        ):
            await page.goto(base.rstrip("/") + path)
            target = out / f"portal-{name}.png"
            await page.screenshot(path=str(target), full_page=True)
            saved.append(target)
        await browser.close()
    return saved


def main(argv: list[str]) -> int:
    """Take the screenshots; print where they are."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.portal_screenshots", description=__doc__
    )
    parser.add_argument("url", help="the demo portal's URL")
    parser.add_argument("--event-id", help="the event to trace (default: one delivered by HTTP)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(shoot(args.url, args.event_id or delivered_event(), args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
