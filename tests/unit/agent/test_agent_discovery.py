"""DNS-SD: the site-local API announced as _cloudlet._tcp, withdrawn on stop."""

from __future__ import annotations

import asyncio

import pytest
from zeroconf.asyncio import AsyncZeroconf

from cloudlet.agent.discovery import SERVICE_TYPE, Announcer, service_info


def test_the_record_names_the_site_and_its_port() -> None:
    info = service_info("edge.one", 8123, "10.1.2.3", site_id="s-1", version="1.2", scheme="https")
    assert info.name == f"edge-one.{SERVICE_TYPE}"
    assert info.port == 8123 and info.parsed_addresses() == ["10.1.2.3"]
    assert info.properties == {b"site_id": b"s-1", b"version": b"1.2", b"scheme": b"https"}
    wildcard = service_info("edge", 8123, "0.0.0.0", site_id=None, version="1.2")
    assert wildcard.parsed_addresses() and "0.0.0.0" not in wildcard.parsed_addresses()


def test_announce_resolve_and_withdraw() -> None:
    async def go() -> None:
        announcer = Announcer()
        info = service_info("test-site-dnssd", 8124, "127.0.0.1", site_id="s-2", version="9")
        if not await announcer.start(info):
            pytest.skip("multicast DNS does not work in this environment")
        browser = AsyncZeroconf()
        try:
            found = await browser.async_get_service_info(SERVICE_TYPE, info.name, timeout=3000)
            assert found is not None and found.port == 8124
            assert found.properties[b"site_id"] == b"s-2"
        finally:
            await announcer.stop()
            await browser.async_close()
        assert not announcer.announced

    asyncio.run(go())
