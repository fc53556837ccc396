"""The fallback without a controller: find cloudlets on the LAN by DNS-SD (_cloudlet._tcp)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

#: The service type site agents announce their local API under.
SERVICE_TYPE = "_cloudlet._tcp.local."


def _url(address: str, port: int, scheme: str = "http") -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


async def _browse(seconds: float) -> dict[str, str]:
    names: list[str] = []

    def seen(
        zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            names.append(name)

    azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    try:
        browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[seen])
        await asyncio.sleep(seconds)
        found: dict[str, str] = {}
        for name in names:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, 1500):
                continue
            addresses = info.parsed_addresses()
            if addresses and info.port:
                site = name.removesuffix("." + SERVICE_TYPE)
                # An agent older than TLS announces no scheme: plain HTTP.
                scheme = (info.properties or {}).get(b"scheme") or b"http"
                https = scheme == b"https"
                found[site] = _url(addresses[0], info.port, "https" if https else "http")
        await browser.async_cancel()
        return found
    finally:
        with contextlib.suppress(Exception):
            await azc.async_close()


def browse_sites(seconds: float = 2.0) -> dict[str, str]:
    """Site name -> site-local API URL of every cloudlet answering on the LAN.

    Multicast may not work where the client runs (containers, some Wi-Fi): then the
    answer is empty, never an error.
    """
    try:
        return asyncio.run(_browse(seconds))
    except OSError:
        return {}
