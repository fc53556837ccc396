"""Clocks, identifiers and secrets used across the controller's services."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def new_secret(kind: str) -> str:
    """A bearer secret with a readable prefix (``clt_site_...``) for log scanners."""
    return f"clt_{kind}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    """Secrets are stored hashed; a leaked database does not leak credentials."""
    return hashlib.sha256(secret.encode()).hexdigest()
