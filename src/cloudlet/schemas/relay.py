"""The handoff relay's greeting on the wire (bytes, not JSON): what a site sends the
controller's relay to meet its peer, and the one byte it hears back.

A site opens a TCP connection to the relay and sends::

    MAGIC (8) | role (1: b"S" source, b"D" destination) | id length (1) | id | proof (32)

where ``proof`` is HMAC-SHA256 keyed by the handoff's one-time token over
``b"cloudlet-relay " + role + b" " + id``: the relay checks it against the token it
holds, so only the two sites of that handoff pair, and the token itself does not
cross this leg in the greeting. The relay answers one status byte: ``PAIRED`` once
the other side is there too (from then on the connection carries the peer's bytes
both ways, exactly what a direct connection carries), or a refusal, then closes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

MAGIC = b"CLRELAY1"
SOURCE, DESTINATION = b"S", b"D"
ROLES = (SOURCE, DESTINATION)
PROOF_BYTES = 32
MAX_ID_BYTES = 64
#: Longest greeting: magic, role, id length, the longest id, proof.
MAX_HELLO_BYTES = len(MAGIC) + 2 + MAX_ID_BYTES + PROOF_BYTES

#: The relay's answers: one byte.
PAIRED = 0  # the peer is here: splicing from now on
REFUSED = 1  # no such handoff in flight, or a wrong proof
NO_PEER = 2  # the other side did not come within the relay's wait
BUSY = 3  # the relay holds as many unpaired connections as it may
ANSWERS = {
    PAIRED: "paired",
    REFUSED: "refused (no such handoff in flight, or a wrong token)",
    NO_PEER: "the peer never came",
    BUSY: "busy (too many connections waiting)",
}


def proof(token: str, role: bytes, handoff_id: str) -> bytes:
    """What shows that a site holds the handoff's token, for one role."""
    message = b"cloudlet-relay " + role + b" " + handoff_id.encode()
    return hmac.new(token.encode(), message, hashlib.sha256).digest()


def hello(role: bytes, handoff_id: str, token: str) -> bytes:
    """The greeting a site sends the relay."""
    raw = handoff_id.encode()
    if role not in ROLES or not 0 < len(raw) <= MAX_ID_BYTES:
        raise ValueError(f"bad relay greeting: role {role!r}, id {handoff_id!r}")
    return MAGIC + role + struct.pack("!B", len(raw)) + raw + proof(token, role, handoff_id)
