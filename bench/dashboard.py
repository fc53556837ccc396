"""Dashboard bench: how soon the operator's /ui shows a 10,000-site fleet in headless Chromium.

Fills a controller database with the fleet of bench/discover.py (N online sites over
Europe, two instances each) plus a site.disk-low alarm at every 50th site, starts a
real controller, and for each run starts a fresh headless Chromium (selenium, as
tests/integration/ui does) that opens /ui and signs in with the admin token, then
reloads the page (signed in: the token stays in the tab). For both it records, from
the page itself: the browser's first (contentful) paint, the first frame with sites on
the map, the first frame with all N of them, and the /v1 calls made until then.
Prints a table and writes bench/results/dashboard.json.

    .venv/bin/python bench/dashboard.py --sites 10000 --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from cloudlet.controller.app import open_state
from cloudlet.controller.db.models import Site
from cloudlet.controller.services import alarms
from cloudlet.schemas.alarms import AlarmSeverity, AlarmSource
from cloudlet.settings import ControllerSettings
from cloudlet.testbed.local import LocalController
from discover import fill

console = Console(width=150)
RESULTS = Path(__file__).resolve().parent / "results" / "dashboard.json"
TARGET_MS = 2000

# Installed before the page's own script on every document (CDP, so the page's CSP
# does not apply). Times are performance.now(): ms since the navigation started. A
# frame "with" the sites is the one after the DOM change: rAF runs just before a
# frame is painted, and a task queued from it runs once that frame is out. The map
# says how many sites it has drawn in #map-svg's data-sites.
INSTRUMENT = """
(() => {
  const N = %d;
  const b = (window.__bench = { marks: {} });
  const mark = (k) => { if (!(k in b.marks)) b.marks[k] = performance.now(); };
  const painted = (k) => requestAnimationFrame(() => setTimeout(() => mark(k), 0));
  new PerformanceObserver((l) => { for (const e of l.getEntries()) b.marks[e.name] = e.startTime; })
    .observe({ type: "paint", buffered: true });
  document.addEventListener("submit", () => mark("sign-in"), true);
  let first = false;
  const watch = new MutationObserver(() => {
    const n = Number(document.getElementById("map-svg")?.dataset.sites || 0);
    b.dots = n;
    if (n > 0 && !first) { first = true; painted("map-first"); }
    if (n >= N) { painted("map-all"); watch.disconnect(); }
  });
  document.addEventListener("DOMContentLoaded",
    () => watch.observe(document.body, { childList: true, subtree: true }));
})();
"""

COLLECT = """
const api = performance.getEntriesByType("resource").filter((e) => e.name.includes("/v1/"))
  .map((e) => ({ path: new URL(e.name).pathname + new URL(e.name).search,
                 start: e.startTime, end: e.responseEnd, bytes: e.encodedBodySize }));
return { marks: window.__bench.marks, dots: window.__bench.dots || 0, api };
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0, help="longest wait for the full map")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--screenshot", type=Path, help="save the last run's map here (PNG)")
    return p.parse_args(argv)


def add_alarms(data_dir: Path, every: int) -> int:
    """A site.disk-low alarm (site-raised: the controller leaves it be) at every
    ``every``-th site, so the map has rings and the alarms table rows."""
    st = open_state(ControllerSettings(data_dir=data_dir))
    try:
        with st.sessions.begin() as session:
            sites = session.scalars(select(Site).order_by(Site.name)).all()[::every]
            for site in sites:
                alarms.raise_alarm(
                    session, "site.disk-low", alarms.site_entity(site.name),
                    AlarmSeverity.MAJOR, site=site, source=AlarmSource.SITE,
                    reason="the data directory's disk is 93% full",
                )  # fmt: skip
            return len(sites)
    finally:
        st.close()


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900"):  # fmt: skip
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def wait_for_map(driver: webdriver.Chrome, timeout: float) -> dict[str, Any]:
    """What the page recorded, once the map shows every site or ``timeout`` passed."""
    # On a timeout the row says how far the page got.
    with contextlib.suppress(TimeoutException):
        WebDriverWait(driver, timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script("return 'map-all' in window.__bench.marks")
        )
    return driver.execute_script(COLLECT)


def summarize(flow: str, got: dict[str, Any], origin: float) -> dict[str, Any]:
    """Marks relative to ``origin`` (navigation start, or the sign-in click)."""
    marks = {k: round(v - origin, 1) for k, v in got["marks"].items()}
    calls = [c for c in got["api"] if c["start"] >= origin]
    done = marks.get("map-all")
    sites = [c for c in calls if c["path"].startswith("/v1/sites") and (done is None or
             c["end"] - origin <= done)]  # fmt: skip
    return {
        "flow": flow,
        "first_paint_ms": marks.get("first-paint"),
        "first_contentful_paint_ms": marks.get("first-contentful-paint"),
        "map_first_ms": marks.get("map-first"),
        "map_all_ms": done,
        "dots": got["dots"],
        "site_pages": len(sites),
        "site_bytes": sum(c["bytes"] for c in sites),
        "sites_api_ms": round(max(c["end"] for c in sites) - min(c["start"] for c in sites), 1)
        if sites
        else None,
        "api": [
            {**c, "start": round(c["start"] - origin, 1), "end": round(c["end"] - origin, 1)}
            for c in calls
        ][:40],
    }


def one_run(
    ctl: LocalController, sites: int, timeout: float, screenshot: Path | None = None
) -> list[dict[str, Any]]:
    driver = chromium()
    try:
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": INSTRUMENT % sites}
        )
        driver.get(f"{ctl.url}/ui/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "token").is_displayed())
        driver.find_element(By.ID, "token").send_keys(ctl.token)
        driver.find_element(By.ID, "sign-in-button").click()
        got = wait_for_map(driver, timeout)
        signed_in = summarize("sign-in", got, got["marks"].get("sign-in", 0.0))
        # The sign-in page's own paints are not the dashboard's.
        signed_in["first_paint_ms"] = signed_in["first_contentful_paint_ms"] = None
        driver.refresh()
        reload = summarize("reload", wait_for_map(driver, timeout), 0.0)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return [signed_in, reload]
    finally:
        driver.quit()


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return round(statistics.median(values), 1) if values else None


def render(rows: list[dict[str, Any]], sites: int) -> None:
    table = Table(title=f"/ui with {sites:,} sites (ms; sign-in: from the click)")
    for col in ("run", "flow", "first paint", "FCP", "map: first sites", "map: all sites",
                "dots drawn", "/v1/sites calls", "their span", "their bytes"):  # fmt: skip
        table.add_column(col, justify="right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    for r in rows:
        table.add_row(
            str(r["run"]), r["flow"], ms(r["first_paint_ms"]), ms(r["first_contentful_paint_ms"]),
            ms(r["map_first_ms"]), ms(r["map_all_ms"]), f"{r['dots']:,}", str(r["site_pages"]),
            ms(r["sites_api_ms"]), f"{r['site_bytes']:,}",
        )  # fmt: skip
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cloudlet-dashboard-"))
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        fill(tmp / "ctl", args.sites, random.Random(args.seed))
        raised = add_alarms(tmp / "ctl", 50)
        console.print(f"{args.sites} sites, {raised} alarms in {time.perf_counter() - t0:.1f} s")
        # A long grace: the fleet's last_seen was written once, before the run.
        ctl = LocalController(tmp / "ctl", offline_grace_s=3600, insecure=True).start()
        try:
            with ctl.client() as http:  # warm the controller up, as an operator's would be
                http.get("/v1/sites").raise_for_status()
            for run in range(1, args.runs + 1):
                shot = args.screenshot if run == args.runs else None
                for row in one_run(ctl, args.sites, args.timeout, shot):
                    rows.append({"run": run, **row})
        finally:
            ctl.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    render(rows, args.sites)
    summary = {
        flow: {
            key: median([r for r in rows if r["flow"] == flow], key)
            for key in ("first_contentful_paint_ms", "map_first_ms", "map_all_ms")
        }
        for flow in ("sign-in", "reload")
    }
    console.print(summary)
    args.out.write_text(
        json.dumps(
            {
                "sites": args.sites,
                "alarms": raised,
                "runs": args.runs,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "target_ms": TARGET_MS,
                "median": summary,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
