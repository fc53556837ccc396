"""How a rollout cuts its items into waves."""

from __future__ import annotations

import pytest

from cloudlet.controller.services.rollouts import wave_sizes
from cloudlet.schemas.rollouts import RolloutOptions, RolloutStrategy

SERIAL, PARALLEL = RolloutStrategy.SERIAL, RolloutStrategy.PARALLEL


@pytest.mark.parametrize(
    ("count", "strategy", "max_parallel", "canary", "sizes"),
    [
        (3, SERIAL, 1, 0, [1, 1, 1]),
        (3, SERIAL, 5, 0, [1, 1, 1]),  # serial ignores max_parallel
        (5, PARALLEL, 2, 0, [2, 2, 1]),
        (5, PARALLEL, 2, 1, [1, 2, 2]),
        (5, SERIAL, 1, 2, [2, 1, 1, 1]),
        (2, PARALLEL, 10, 5, [2]),  # a canary larger than the fleet is the fleet
        (0, PARALLEL, 3, 1, []),
    ],
)
def test_wave_sizes(
    count: int, strategy: RolloutStrategy, max_parallel: int, canary: int, sizes: list[int]
) -> None:
    options = RolloutOptions(strategy=strategy, max_parallel=max_parallel, canary=canary)
    assert wave_sizes(count, options) == sizes
    assert sum(sizes) == count
