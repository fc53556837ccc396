"""The dashboard with more sites than one page of /v1/sites, in headless Chromium: every
site reaches the map (the page follows X-Next-Cursor), drawn as a dense fleet's dots,
the tables say how many rows they leave out, and a click on the map opens the nearest
site's page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_browser import browser, css, sign_in, until  # noqa: F401 (browser: a fixture)

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402 (after the skip)
from selenium.webdriver.common.by import By  # noqa: E402

#: A grid of sites a little over one page (1000): a click anywhere on it is near one.
COLUMNS, ROWS = 40, 27


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[LocalController]:
    ctl = LocalController(tmp_path / "ctl").start()
    try:
        with ctl.client() as api:
            for row in range(ROWS):
                for col in range(COLUMNS):
                    body = {
                        "name": f"s-{row:02d}-{col:02d}",
                        "latitude": 40 + row * 10 / ROWS,
                        "longitude": col * 20 / COLUMNS,
                    }
                    api.post("/v1/sites", json=body).raise_for_status()
        yield ctl
    finally:
        ctl.stop()


def drawn(driver: Any) -> int:
    return int(driver.find_element(By.ID, "map-svg").get_attribute("data-sites"))


def test_a_fleet_past_one_page_is_drawn_whole_and_its_dots_open_their_site(
    controller: LocalController,
    browser: Any,  # noqa: F811
) -> None:
    total = COLUMNS * ROWS
    browser.get(f"{controller.url}/ui")
    until(browser, lambda d: d.find_element(By.ID, "token").is_displayed(), "the sign-in form")
    sign_in(browser, controller.token)
    until(browser, lambda d: drawn(d) == total, f"all {total} sites on the map")
    # Never enrolled: every site is 'unknown', one path of dots, not one element each.
    [dots] = css(browser, "#map-svg path.dots")
    assert dots.get_attribute("class") == "dots unknown"
    assert dots.get_attribute("data-sites") == str(total)
    assert css(browser, "#map-svg g.site") == []
    assert len(css(browser, "#sites-table tbody tr")) == 100
    assert f"100 of {total:,} sites shown" in browser.find_element(By.ID, "sites-more").text

    svg = browser.find_element(By.ID, "map-svg")
    ActionChains(browser).move_to_element(svg).perform()
    hover = until(browser, lambda d: d.find_element(By.ID, "map-hover").text, "the hover line")
    name = hover.split(":")[0]
    assert name.startswith("s-") and hover == f"{name}: unknown, 0 active alarm(s)"
    ActionChains(browser).move_to_element(svg).click().perform()
    until(browser, lambda d: css(d, f'#site-fields[data-site="{name}"]'), f"{name}'s page")

    browser.get(f"{controller.url}/ui/#/sites")
    until(browser, lambda d: len(css(d, "#sites-table tbody tr")) == 1000, "the Sites page")
    assert f"1,000 of {total:,} sites shown" in browser.find_element(By.ID, "sites-more").text
