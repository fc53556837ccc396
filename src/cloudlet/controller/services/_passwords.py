"""Password hashes: argon2id (argon2-cffi), with OWASP's minimum parameters.

19 MiB, two passes, one lane costs about 20 ms a check here: slow enough to make a
stolen table expensive to guess through, cheap enough that sign-ins and a fuzzer's
hundreds of them do not load the controller. Hashes made with other parameters still
verify, and are re-made with these at the next sign-in.
"""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (False for a corrupt hash, too)."""
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)


@cache
def _dummy() -> str:
    return _HASHER.hash("not anyone's password")


def burn_time(password: str) -> None:
    """Check ``password`` against a dummy hash: an unknown user's sign-in then takes
    as long as a known one's, so timing does not tell which names exist."""
    verify_password(_dummy(), password)
