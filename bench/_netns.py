"""Two network namespaces joined by a veth pair shaped with tc tbf, for the synthesis bench.

:class:`Link` is a context manager: it creates ``<prefix>-ctl`` and ``<prefix>-site``,
a veth pair between them (10.213.0.1/30 on the controller side, .2 on the site side),
brings loopback up in both, and shapes each end's egress with ``tbf``; on exit (and at
interpreter exit, and when asked twice) it deletes both namespaces, which takes the
veth and its qdiscs with them. :meth:`Link.executor` gives a one-thread pool whose
thread has joined a namespace: sockets it opens and children it forks live there.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
CTL_ADDR = "10.213.0.1"
SITE_ADDR = "10.213.0.2"
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (as ``ip netns exec`` does)."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def tbf_args(rate_mbit: float) -> list[str]:
    """tbf parameters for ``rate_mbit``: a burst of at least 10 ms of traffic (HZ-safe)
    and 100 ms of queue, so TCP sees a bottleneck, not a loss storm."""
    burst = max(64 * 1024, int(rate_mbit * 1e6 / 8 / 100))
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "100ms"]


@dataclass
class Link:
    """The controller and site namespaces and the shaped veth between them."""

    prefix: str = "clsyn"
    rate_mbit: float | None = None
    created: list[str] = field(default_factory=list)
    pools: list[ThreadPoolExecutor] = field(default_factory=list)

    @property
    def ctl(self) -> str:
        return f"{self.prefix}-ctl"

    @property
    def site(self) -> str:
        return f"{self.prefix}-site"

    def __enter__(self) -> Link:
        atexit.register(self.close)
        try:
            for ns in (self.ctl, self.site):
                _run("ip", "netns", "delete", ns, check=False)  # a leftover from a killed run
                _run("ip", "netns", "add", ns)
                self.created.append(ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            veth_c, veth_s = f"{self.prefix}c", f"{self.prefix}s"
            _run("ip", "link", "add", veth_c, "netns", self.ctl, "type", "veth",
                 "peer", "name", veth_s, "netns", self.site)  # fmt: skip
            for ns, dev, addr in ((self.ctl, veth_c, CTL_ADDR), (self.site, veth_s, SITE_ADDR)):
                _run("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
            if self.rate_mbit is not None:
                self.shape(self.rate_mbit)
        except BaseException:
            self.close()
            raise
        return self

    def _ends(self) -> list[tuple[str, str]]:
        return [(self.ctl, f"{self.prefix}c"), (self.site, f"{self.prefix}s")]

    def shape(self, rate_mbit: float | None) -> None:
        """Shape both ends' egress to ``rate_mbit`` (None: remove the shaping)."""
        for ns, dev in self._ends():
            _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            if rate_mbit is not None:
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf_args(rate_mbit))
        self.rate_mbit = rate_mbit

    def qdiscs(self) -> dict[str, str]:
        """``tc qdisc show`` of each end, for the record."""
        return {
            dev: _run("tc", "-n", ns, "qdisc", "show", "dev", dev).stdout.strip()
            for ns, dev in self._ends()
        }

    def executor(self, ns: str) -> ThreadPoolExecutor:
        """A one-thread pool living in namespace ``ns``."""
        pool = ThreadPoolExecutor(1, thread_name_prefix=ns, initializer=enter, initargs=(ns,))
        self.pools.append(pool)
        return pool

    def close(self) -> None:
        """Delete the namespaces (veth and qdiscs go with them); safe to call again."""
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self.pools.clear()
        while self.created:
            _run("ip", "netns", "delete", self.created.pop(), check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()
