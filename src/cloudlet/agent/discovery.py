"""DNS-SD announcement of the site-local API, so clients on the LAN find the site offline.

The agent registers ``<site name>._cloudlet._tcp.local.`` on the local API's port,
with TXT ``site_id`` and ``version``, and unregisters it on stop. Multicast does not
work everywhere (containers, sandboxes): a failure to announce is a logged warning,
never fatal to the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_cloudlet._tcp.local."
#: Longest register/unregister may take before it is given up on.
ANNOUNCE_TIMEOUT_S = 5.0


def service_info(
    name: str, port: int, host: str, *, site_id: str | None, version: str, scheme: str = "http"
) -> ServiceInfo:
    """The DNS-SD record for a site-local API served on ``host:port`` (``scheme``, in
    the ``scheme`` property: https unless the agent runs --insecure).

    A wildcard ``host`` is announced with the host's primary IPv4 address (loopback
    only if it has none); any other address as it is, loopback included: announcing
    an address the API does not listen on would send clients nowhere.
    """
    safe = name.replace(".", "-")[:63] or "cloudlet"
    addresses: list[str] = []
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(host).is_unspecified:
            addresses = [host]
    if not addresses and (primary := primary_address()) is not None:
        addresses = [primary]
    hostname = socket.gethostname().split(".")[0] or "cloudlet"
    return ServiceInfo(
        SERVICE_TYPE,
        f"{safe}.{SERVICE_TYPE}",
        port=port,
        properties={"site_id": site_id or "", "version": version, "scheme": scheme},
        server=f"{hostname}.local.",
        parsed_addresses=addresses or ["127.0.0.1"],
    )


def primary_address() -> str | None:
    """The IPv4 address multicast leaves from (no packet is sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("224.0.0.251", 5353))
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_unspecified else address


class Announcer:
    """Registers one service with zeroconf; :meth:`stop` unregisters it."""

    def __init__(self) -> None:
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    @property
    def announced(self) -> bool:
        return self._info is not None

    async def start(self, info: ServiceInfo) -> bool:
        """Announce ``info`` (replacing an earlier announcement); False if it failed."""
        await self.stop()
        try:
            self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
            await _bounded(self._zc.async_register_service(info, allow_name_change=True))
        except Exception as exc:  # no multicast here: the site works without it
            log.warning("cannot announce the site by DNS-SD (%s); continuing without it", exc)
            await self._close()
            return False
        self._info = info
        log.info("announced %s on port %d", info.name, info.port)
        return True

    async def stop(self) -> None:
        """Unregister (best effort) and release the sockets."""
        if self._zc is not None and self._info is not None:
            try:
                await _bounded(self._zc.async_unregister_service(self._info))
            except Exception as exc:
                log.info("DNS-SD unregister failed: %s", exc)
        self._info = None
        await self._close()

    async def _close(self) -> None:
        if self._zc is not None:
            with contextlib.suppress(Exception):
                await self._zc.async_close()
        self._zc = None


async def _bounded(registration: object) -> None:
    """Await a zeroconf registration (a coroutine returning an awaitable) with a timeout."""
    pending = await asyncio.wait_for(registration, ANNOUNCE_TIMEOUT_S)  # type: ignore[arg-type]
    if pending is not None:
        await asyncio.wait_for(pending, ANNOUNCE_TIMEOUT_S)
