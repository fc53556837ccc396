"""The arithmetic of metering: cutting intervals, quantities and costs, in Decimal.

Pure functions over plain values (no database), so that the rules are tested on
their own: an interval is cut at whole UTC hours when it is stored and at a
report's bounds when it is counted, each part getting its share of the running
time; quantities and costs are exact decimals, rounded once per line.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

#: Every amount a report shows has this many decimal places.
PLACES = Decimal("0.000001")
MS_PER_HOUR = Decimal(3_600_000)
GIB = Decimal(1 << 30)
MIB_PER_GIB = Decimal(1024)
ZERO = Decimal(0)
HOUR = timedelta(hours=1)


def rounded(value: Decimal) -> Decimal:
    """``value`` to :data:`PLACES` (half to even, as ledgers round)."""
    return value.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def hour_floor(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def split_hours(start: datetime, end: datetime, ms: int) -> list[tuple[datetime, datetime, int]]:
    """Cut ``start``..``end`` at every whole hour between them; each piece gets its share
    of ``ms`` by its length, the last the remainder, so the pieces add up to ``ms``."""
    if end <= start:
        return [(start, end, ms)]
    cuts = [start]
    edge = hour_floor(start) + HOUR
    while edge < end:
        cuts.append(edge)
        edge += HOUR
    cuts.append(end)
    span = (end - start) / timedelta(microseconds=1)
    pieces: list[tuple[datetime, datetime, int]] = []
    given = 0
    for a, b in itertools.pairwise(cuts):
        if b == end:
            share = ms - given
        else:
            share = round(ms * ((b - a) / timedelta(microseconds=1)) / span)
            given += share
        pieces.append((a, b, share))
    return pieces


def share_in(start: datetime, end: datetime, ms: int, since: datetime, until: datetime) -> Decimal:
    """The part of ``ms`` (run over ``start``..``end``) that falls in ``since``..``until``."""
    if end <= start:  # an instant: wholly in or out
        return Decimal(ms) if since <= start < until else ZERO
    lo, hi = max(start, since), min(end, until)
    if hi <= lo:
        return ZERO
    if lo == start and hi == end:
        return Decimal(ms)
    inside = Decimal((hi - lo) // timedelta(microseconds=1))
    return Decimal(ms) * inside / Decimal((end - start) // timedelta(microseconds=1))


@dataclass
class Quantities:
    """What ran, in the units prices are set in (exact, not yet rounded)."""

    instance_hours: Decimal = ZERO
    vcpu_hours: Decimal = ZERO
    gib_hours: Decimal = ZERO

    def add(self, ms: Decimal, vcpus: float, memory_mib: int) -> None:
        hours = ms / MS_PER_HOUR
        self.instance_hours += hours
        # repr of a float is its shortest exact-enough decimal: 0.5 stays 0.5.
        self.vcpu_hours += hours * Decimal(repr(vcpus))
        self.gib_hours += hours * Decimal(memory_mib) / MIB_PER_GIB

    def __iadd__(self, other: Quantities) -> Quantities:
        self.instance_hours += other.instance_hours
        self.vcpu_hours += other.vcpu_hours
        self.gib_hours += other.gib_hours
        return self


@dataclass(frozen=True)
class Prices:
    """One plan's amounts per unit (a free plan charges nothing)."""

    currency: str | None = None
    free: bool = True
    instance_hour: Decimal = ZERO
    vcpu_hour: Decimal = ZERO
    gib_hour: Decimal = ZERO
    gib_fetched: Decimal = ZERO

    def run_cost(self, q: Quantities) -> Decimal:
        """What running ``q`` costs, rounded to :data:`PLACES`."""
        if self.free:
            return rounded(ZERO)
        exact = (
            q.instance_hours * self.instance_hour
            + q.vcpu_hours * self.vcpu_hour
            + q.gib_hours * self.gib_hour
        )
        return rounded(exact)

    def fetch_cost(self, nbytes: int) -> Decimal:
        """What sending ``nbytes`` to sites costs, rounded to :data:`PLACES`."""
        if self.free:
            return rounded(ZERO)
        return rounded(Decimal(nbytes) / GIB * self.gib_fetched)


#: No plan anywhere on the sheet: nothing is charged.
NO_PLAN = Prices()


def gib(nbytes: int) -> Decimal:
    return rounded(Decimal(nbytes) / GIB)
