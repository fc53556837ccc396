"""The handoff's resend bookkeeping: after a break anywhere in the stream, what the
destination holds plus what the source sends again is exactly what the source
remembers as sent."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cloudlet.compute.qemu.handoff import DISK, MEMORY, HandoffError, _ResendLog


def test_a_confirmed_mark_forgets_what_came_before_it() -> None:
    marks = _ResendLog()
    assert marks.register(DISK, np.array([5, 1], np.uint32)) == 1
    assert marks.register(MEMORY, np.array([7], np.uint32)) == 2
    assert marks.register(DISK, np.array([1, 3], np.uint32)) == 3
    again = marks.confirm(0)  # nothing held yet: all of it
    assert again[DISK].tolist() == [1, 3, 5] and again[MEMORY].tolist() == [7]
    again = marks.confirm(2)
    assert again[DISK].tolist() == [1, 3] and MEMORY not in again
    assert marks.confirm(2)[DISK].tolist() == [1, 3]  # a second break at the same mark
    assert marks.confirm(3) == {}
    with pytest.raises(HandoffError):
        marks.confirm(4)


def test_resending_after_any_break_leaves_the_destination_with_what_was_sent() -> None:
    rng = random.Random(7)
    rows = 64
    for _ in range(200):
        marks = _ResendLog()
        base = np.zeros(rows, np.int64)
        sent = base.copy()  # what the source remembers as sent (its ``sent_view``)
        stream: list[tuple[str, object]] = []  # what went, in order
        held = base.copy()  # the destination
        taken = 0  # how much of the stream it took in
        mark = 0  # the last mark it took in
        value = 1
        for _connection in range(rng.randint(1, 4)):
            # On (re)connect: resend what came after the destination's mark.
            again = marks.confirm(mark).get(DISK, np.zeros(0, np.uint32))
            for _frame in range(rng.randint(1, 6)):
                changed = rng.sample(range(rows), rng.randint(0, 8))
                index = np.union1d(np.array(changed, np.uint32), again).astype(np.uint32)
                again = np.zeros(0, np.uint32)
                data = np.arange(value, value + len(index))
                value += len(index)
                sent[index] = data  # remembered before it goes
                stream.append(("C", (index, data)))
                stream.append(("R", marks.register(DISK, index)))
            # The link breaks somewhere in what went since the last connect: the
            # destination took in a prefix of it.
            cut = rng.randint(taken, len(stream))
            for kind, item in stream[taken:cut]:
                if kind == "C":
                    index, data = item  # type: ignore[misc]
                    held[index] = data
                else:
                    mark = item  # type: ignore[assignment]
            taken = len(stream)  # the rest was lost with the connection
        # One last connection that gets through: resend, then compare.
        again = marks.confirm(mark).get(DISK, np.zeros(0, np.uint32))
        held[again] = sent[again]
        assert (held == sent).all()
