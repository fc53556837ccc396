"""Network namespaces, veth pairs, tc shaping and nftables cuts: the emulated WAN's parts.

Everything here shells out to ``ip``, ``tc`` and ``nft`` (root only). :class:`Link` is
the two-namespace link of the synthesis bench; :mod:`cloudlet.testbed.wan` builds a
controller and many sites from the same primitives.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cloudlet.errors import CloudletError

__all__ = [
    "CTL_ADDR",
    "SITE_ADDR",
    "Link",
    "add_namespace",
    "add_veth",
    "cut",
    "delete_namespace",
    "enter",
    "executor",
    "restore",
    "run",
    "shape",
    "tbf_args",
]

CLONE_NEWNET = 0x40000000
CTL_ADDR = "10.213.0.1"
SITE_ADDR = "10.213.0.2"
_libc = ctypes.CDLL(None, use_errno=True)
#: The nftables table a cut lives in, one per namespace.
_CUT_TABLE = "cloudlet_cut"


def run(
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one command; raise :class:`CloudletError` with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, input=stdin)
    if check and proc.returncode != 0:
        raise CloudletError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (as ``ip netns exec`` does).

    Threads and processes the thread creates afterwards live there too.
    """
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def executor(ns: str) -> ThreadPoolExecutor:
    """A one-thread pool whose thread lives in namespace ``ns``."""
    return ThreadPoolExecutor(1, thread_name_prefix=ns, initializer=enter, initargs=(ns,))


def add_namespace(ns: str) -> None:
    """Create ``ns`` (deleting a leftover of a killed run first) with loopback up."""
    run("ip", "netns", "delete", ns, check=False)
    run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "set", "lo", "up")


def delete_namespace(ns: str) -> None:
    """Delete ``ns``; its veths, qdiscs and nftables rules go with it."""
    run("ip", "netns", "delete", ns, check=False)


def add_veth(
    a: tuple[str | None, str, str], b: tuple[str | None, str, str], prefix_len: int = 30
) -> None:
    """A veth pair between two namespaces, each end ``(namespace or None for this one,
    device, address)``, addressed and up."""
    (ns_a, dev_a, _), (ns_b, dev_b, _) = a, b
    # A namespace deleted by a previous run is torn down by the kernel in the
    # background: its veth may still hold the name for a moment.
    for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
        run("ip", *(["-n", ns] if ns else []), "link", "delete", dev, check=False)
    argv = ["ip", "link", "add", dev_a]
    if ns_a:
        argv += ["netns", ns_a]
    argv += ["type", "veth", "peer", "name", dev_b]
    if ns_b:
        argv += ["netns", ns_b]
    run(*argv)
    for ns, dev, addr in (a, b):
        where = ["-n", ns] if ns else []
        run("ip", *where, "addr", "add", f"{addr}/{prefix_len}", "dev", dev)
        run("ip", *where, "link", "set", dev, "up")


def tbf_args(rate_mbit: float) -> list[str]:
    """tbf parameters for ``rate_mbit``: a burst of at least 10 ms of traffic (HZ-safe)
    and 100 ms of queue, so TCP sees a bottleneck, not a loss storm."""
    burst = max(16 * 1024 if rate_mbit < 1 else 64 * 1024, int(rate_mbit * 1e6 / 8 / 100))
    latency = "500ms" if rate_mbit < 1 else "100ms"  # slow links need a deeper queue
    rate = f"{rate_mbit:g}mbit" if rate_mbit >= 1 else f"{rate_mbit * 1000:g}kbit"
    return ["tbf", "rate", rate, "burst", str(burst), "latency", latency]


def shape(ns: str, dev: str, rate_mbit: float | None) -> None:
    """Shape ``dev``'s egress in ``ns`` to ``rate_mbit`` (None: remove the shaping)."""
    run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
    if rate_mbit is not None:
        run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf_args(rate_mbit))


def cut(ns: str, dev: str) -> None:
    """Blackhole ``dev`` in ``ns`` both ways with nftables: TCP sees silence, not a reset."""
    script = (
        f"table inet {_CUT_TABLE} {{\n"
        f' chain drop_in {{ type filter hook input priority -10; iifname "{dev}" drop; }}\n'
        f' chain drop_out {{ type filter hook output priority -10; oifname "{dev}" drop; }}\n'
        "}\n"
    )
    restore(ns)
    run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=script)


def restore(ns: str) -> None:
    """Undo :func:`cut` in ``ns`` (nothing happens if it was not cut)."""
    run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", _CUT_TABLE, check=False)


@dataclass
class Link:
    """Two namespaces, ``<prefix>-ctl`` and ``<prefix>-site``, and the shaped veth
    between them (10.213.0.1/30 on the controller side, .2 on the site side).

    A context manager: on exit (and at interpreter exit, and when asked twice) it
    deletes both namespaces. :meth:`executor` gives a one-thread pool whose thread
    has joined a namespace: sockets it opens and children it forks live there.
    """

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
                add_namespace(ns)
                self.created.append(ns)
            add_veth(
                (self.ctl, f"{self.prefix}c", CTL_ADDR), (self.site, f"{self.prefix}s", SITE_ADDR)
            )
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
            shape(ns, dev, rate_mbit)
        self.rate_mbit = rate_mbit

    def qdiscs(self) -> dict[str, str]:
        """``tc qdisc show`` of each end, for the record."""
        return {
            dev: run("tc", "-n", ns, "qdisc", "show", "dev", dev).stdout.strip()
            for ns, dev in self._ends()
        }

    def executor(self, ns: str) -> ThreadPoolExecutor:
        """A one-thread pool living in namespace ``ns``."""
        pool = executor(ns)
        self.pools.append(pool)
        return pool

    def close(self) -> None:
        """Delete the namespaces (veth and qdiscs go with them); safe to call again."""
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self.pools.clear()
        while self.created:
            delete_namespace(self.created.pop())

    def __exit__(self, *exc: object) -> None:
        self.close()
