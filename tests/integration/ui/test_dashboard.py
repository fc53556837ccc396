"""The web dashboard in headless Chromium against a real controller and three real agents
(the demo's sites): sign in (a wrong token refused), the three sites on the map, a site
cut (its agent stopped) turning offline with its site.offline alarm, an instance's page.

Set CLOUDLET_DASHBOARD_SCREENSHOT=docs/dashboard.png to keep the map page's screenshot.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_browser import browser, click, css, sign_in, until  # noqa: F401 (browser: a fixture)

from cloudlet.demo._plan import CUT_SITE, SITES
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration

from selenium.webdriver.common.by import By  # noqa: E402 (after ui_browser's skip)
from selenium.webdriver.support.ui import Select  # noqa: E402

AGENT_ENV = {
    "CLOUDLET_AGENT__ANNOUNCE": "false",
    "CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "0.5",
}
#: The instance runs at a site the test does not cut.
HOME = next(s.name for s in SITES if s.name != CUT_SITE)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LocalController, dict[str, LocalAgent]]]:
    env = {"CLOUDLET_CONTROLLER__ALARMS__CLEAR_HOLD_S": "1"}
    ctl = LocalController(tmp_path / "ctl", offline_grace_s=2, env=env).start()
    agents: dict[str, LocalAgent] = {}
    try:
        with ctl.client() as api:
            for spec in SITES:
                answer = api.post("/v1/sites", json=spec.body())
                answer.raise_for_status()
                token = answer.json()["join_token"]["token"]
                agents[spec.name] = LocalAgent(
                    spec.name, tmp_path / spec.name, ctl.url, join_token=token, env=AGENT_ENV
                ).start()
        yield ctl, agents
    finally:
        for agent in agents.values():
            agent.stop()
        ctl.stop()


def map_sites(driver: Any) -> dict[str, str]:
    """Site name -> availability, as the map draws them."""
    return {
        g.get_attribute("data-site"): g.get_attribute("data-availability")
        for g in css(driver, "#map-svg g.site")
    }


def test_dashboard_shows_the_fleet_a_cut_site_and_an_instance(
    fleet: tuple[LocalController, dict[str, LocalAgent]],
    browser: Any,  # noqa: F811 (the fixture imported from ui_browser)
    tmp_path: Path,
) -> None:
    ctl, agents = fleet
    names = {s.name for s in SITES}
    with ctl.client() as api:
        online = lambda: all(  # noqa: E731
            s["availability"] == "online" for s in api.get("/v1/sites").json()
        )
        wait_for(online, 60, "the three sites online")
        app = {
            "name": "sleeper",
            "components": [
                {"name": "main", "command": [sys.executable, "-c", "import time; time.sleep(600)"]}
            ],
            "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
        }
        api.post("/v1/apps", json=app).raise_for_status()
        answer = api.post("/v1/instances", json={"app": "sleeper", "name": "nap", "site": HOME})
        answer.raise_for_status()
        instance = answer.json()

    browser.get(f"{ctl.url}/ui")
    until(browser, lambda d: d.find_element(By.ID, "token").is_displayed(), "the sign-in form")

    # A wrong token is refused on the form, and nothing else is shown.
    sign_in(browser, "not-a-token")
    error = until(browser, lambda d: d.find_element(By.ID, "sign-in-error").text, "the refusal")
    assert "refused" in error.lower()
    assert not browser.find_element(By.ID, "view").is_displayed()

    sign_in(browser, ctl.token)
    until(browser, lambda d: set(map_sites(d)) == names, "the three sites on the map")
    until(
        browser,
        lambda d: set(map_sites(d).values()) == {"online"},
        "every site online on the map",
    )
    rows = {r.get_attribute("data-site") for r in css(browser, "#sites-table tbody tr")}
    assert rows == names

    # The cut: the site's agent goes silent.
    agents[CUT_SITE].stop()
    until(
        browser,
        lambda d: map_sites(d)[CUT_SITE] == "offline",
        f"{CUT_SITE} offline on the map",
    )
    alarm_rows = f'#alarms-table tr[data-alarm="site.offline"][data-site="{CUT_SITE}"]'
    until(browser, lambda d: css(d, alarm_rows), f"site.offline for {CUT_SITE} among the alarms")
    dot = f'#map-svg g.site[data-site="{CUT_SITE}"]'
    until(browser, lambda d: css(d, dot)[0].get_attribute("data-alarms") == "1", "the alarm ring")
    assert {k: v for k, v in map_sites(browser).items() if k != CUT_SITE} == {
        n: "online" for n in names - {CUT_SITE}
    }

    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    if target := os.environ.get("CLOUDLET_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)

    # The map's dot opens the site's page.
    until(browser, lambda d: click(d, f"{dot} circle.dot"), f"clicking {CUT_SITE}")
    page = f'#site-fields[data-site="{CUT_SITE}"][data-availability="offline"]'
    until(browser, lambda d: css(d, page), f"{CUT_SITE}'s page")

    # The instances table, filtered by site, opens the instance's page.
    browser.get(f"{ctl.url}/ui/#/instances")
    link = f'a[data-instance-link="{instance["id"]}"]'
    until(browser, lambda d: click(d, link), "the instance's link")
    fields = f'#instance-fields[data-instance="{instance["id"]}"]'
    detail = until(browser, lambda d: css(d, fields)[0].text, "the instance's page")
    assert instance["id"] in detail and HOME in detail and "sleeper" in detail
    assert browser.current_url.endswith(f"#/instances/{instance['id']}")

    # The site's page charts the utilization the page sampled, its cache and instances.
    browser.get(f"{ctl.url}/ui/#/sites/{HOME}")
    chart = "#util-chart"
    until(
        browser,
        lambda d: int(css(d, chart)[0].get_attribute("data-samples")) >= 2,
        "utilization samples on the site's page",
    )
    assert css(browser, "#cache-table")
    until(browser, lambda d: css(d, f'#site-instances tr[data-instance="{instance["id"]}"]'),
          f"the instance among {HOME}'s")  # fmt: skip

    # The events, filtered by site and kind: the controller's verdict on the cut site.
    browser.get(f"{ctl.url}/ui/#/events")
    site_filter = until(browser, lambda d: d.find_element(By.ID, "filter-ev-site"), "filters")
    Select(site_filter).select_by_value(CUT_SITE)
    browser.find_element(By.ID, "filter-ev-kind").send_keys("site.offline\t")

    def offline_events(d: Any) -> bool:
        kinds = [r.get_attribute("data-kind") for r in css(d, "#events-table tbody tr")]
        return bool(kinds) and set(kinds) == {"site.offline"}

    until(browser, offline_events, f"{CUT_SITE}'s site.offline events, filtered")

    # Signing out forgets the token.
    browser.find_element(By.ID, "sign-out").click()
    until(browser, lambda d: d.find_element(By.ID, "token").is_displayed(), "the sign-in form")
    assert browser.execute_script("return sessionStorage.getItem('cloudlet.token')") is None
