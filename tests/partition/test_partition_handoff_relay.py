"""A live VM handoff between two sites that cannot reach each other (a firewall drops
site-to-site traffic) while both reach the controller: the stream goes through the
controller's relay, and the guest arrives with its RAM. Real QEMU (TCG)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from partition_bed import Bed

from cloudlet.testbed import netns
from cloudlet.testbed.guest import GuestImage
from cloudlet.testbed.local import wait_for
from cloudlet.testbed.wan import WanSite

pytestmark = [
    pytest.mark.partition,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
    ),
]

VM_ENV = {
    "CLOUDLET_AGENT__VM_ACCEL": "tcg",
    "CLOUDLET_AGENT__VM_ANSWER_TIMEOUT_S": "120",
    "CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "0.5",
    "CLOUDLET_AGENT__HANDOFF_DIRECT_TIMEOUT_S": "2",
}


def _upload(api: httpx.Client, path: Path, kind: str, name: str) -> dict[str, Any]:
    up = api.post("/v1/uploads", json={"kind": kind, "name": name, "size": path.stat().st_size})
    assert up.status_code == 201, up.text
    api.put(
        f"/v1/uploads/{up.json()['id']}",
        params={"offset": 0},
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    ).raise_for_status()
    done = api.post(f"/v1/uploads/{up.json()['id']}/complete")
    assert done.status_code == 201, done.text
    return done.json()


def _token(endpoint: str) -> str:
    return httpx.get(f"http://{endpoint}/token", timeout=5).text.strip()


def _reaches(src: WanSite, dst: WanSite) -> bool:
    """Whether a TCP connection from ``src``'s namespace to ``dst``'s LAN gets through."""
    with netns.executor(dst.ns) as at_dst, netns.executor(src.ns) as at_src:
        server = at_dst.submit(socket.create_server, (dst.lan_addr, 0)).result()
        try:
            port = server.getsockname()[1]
            with at_src.submit(socket.create_connection, (dst.lan_addr, port), 2).result():
                return True
        except OSError:
            return False
        finally:
            server.close()


def _events(bed: Bed, site: WanSite) -> list[dict[str, Any]]:
    return [e for e in bed.site_events(site) if e["kind"] == "handoff"]


def test_a_vm_moves_through_the_controller_when_the_sites_cannot_reach_each_other(
    bed: Bed, guest: GuestImage
) -> None:
    image = _upload(bed.api, guest.disk, "image", "relay-guest")
    app = {
        "name": "relayed-vm",
        "components": [
            {"kind": "vm", "image": image["digest"], "guest_port": guest.guest_port,
             "env": guest.vm_env()}
        ],
        "resources": {"vcpus": 1, "memory_mib": 128, "disk_gib": 0.1},
    }  # fmt: skip
    assert bed.api.post("/v1/apps", json=app).status_code == 201
    lyon = bed.wan.add_site("rly-lyon", env=VM_ENV)
    paris = bed.wan.add_site("rly-paris", env=VM_ENV)  # enrolls while lyon boots the VM
    bed.wan.interconnect()
    assert _reaches(lyon, paris)  # routed to each other: only the firewall below parts them
    bed.wan.part_sites()
    try:
        assert not _reaches(lyon, paris)
        bed.wan.wait_online(lyon.name)
        made = bed.api.post("/v1/instances", json={"app": "relayed-vm", "site": lyon.name})
        assert made.status_code == 201, made.text
        iid = made.json()["id"]
        endpoint = bed.wait_local_running(lyon, [iid], timeout=120)[iid]["endpoint"]
        bed.wan.wait_online(paris.name)
        token = wait_for(lambda: _token(endpoint), 60, "the guest's service")

        move = bed.api.post(f"/v1/instances/{iid}/move", json={"to": paris.name})
        assert move.status_code == 202, move.text
        moved = bed.wait_local_running(paris, [iid], timeout=120)[iid]
        # The same guest runs on at paris: no reboot, its RAM-only token came along.
        assert _token(moved["endpoint"]) == token

        def done() -> dict[str, Any] | None:
            (handoff,) = bed.api.get("/v1/handoffs", params={"instance": iid}).json()
            return handoff if handoff["phase"] == "done" else None

        assert wait_for(done, 30, "the handoff done")["kind"] == "vm"
        sent = wait_for(lambda: _events(bed, lyon), 30, "lyon's handoff event")[0]["data"]
        received = wait_for(lambda: _events(bed, paris), 30, "paris' handoff event")[0]["data"]
        assert sent["phase"] == "sent" and sent["via"] == "relay"
        assert received["phase"] == "received" and received["via"] == "relay"
        # Every byte of the stream went through the controller.
        metrics = bed.api.get("/metrics").text
        relayed = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("cloudlet_relay_bytes_total ")
        )
        assert relayed >= sent["bytes"] > 0
        assert 'cloudlet_relay_connections_total{outcome="paired"} 1.0' in metrics
    finally:
        bed.wan.join_sites()
