"""Property tests over random site sets: the engine's invariants hold for any snapshot."""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlet.errors import PlacementError
from cloudlet.placement import (
    FILTERS,
    WEIGHERS,
    PlacementConfig,
    PlacementRequest,
    Resources,
    SiteCandidate,
    Utilization,
    place,
    rank,
)

_fractions = st.floats(0, 1)
_coords = st.tuples(st.floats(-90, 90), st.floats(-180, 180))


@st.composite
def sites(draw: st.DrawFn) -> list[SiteCandidate]:
    ids = draw(st.lists(st.text("0123456789abcdef", min_size=1, max_size=4), unique=True))
    out = []
    for site_id in ids:
        capacity = Resources(
            draw(st.sampled_from([0, 1, 2, 4, 8])),
            draw(st.sampled_from([0, 256, 1024, 4096])),
            draw(st.sampled_from([0, 10, 100])),
        )
        allocated = Resources(
            draw(st.floats(0, 10)), draw(st.integers(0, 5000)), draw(st.floats(0, 120))
        )
        where = draw(st.none() | _coords)
        out.append(
            SiteCandidate(
                site_id=site_id,
                name=draw(st.sampled_from(["alpha", "beta", "gamma"])),  # names repeat
                capacity=capacity,
                allocated=allocated,
                online=draw(st.booleans()),
                state=draw(st.sampled_from(["online", "offline", "draining", "decommissioned"])),
                region=draw(st.sampled_from([None, "eu-west", "us-east"])),
                latitude=where[0] if where else None,
                longitude=where[1] if where else None,
                labels=draw(
                    st.dictionaries(
                        st.sampled_from(["gpu", "tier", "zone", "maintenance"]),
                        st.sampled_from(["a", "b", "prod", "test"]),
                    )
                ),
                utilization=draw(st.none() | st.builds(Utilization, _fractions, _fractions)),
            )
        )
    return out


@st.composite
def requests(draw: st.DrawFn, ids: list[str]) -> PlacementRequest:
    client = draw(st.none() | _coords)
    return PlacementRequest(
        app="app",
        resources=Resources(
            draw(st.sampled_from([0, 0.5, 1, 4])),
            draw(st.sampled_from([0, 128, 512, 2048])),
            draw(st.sampled_from([0, 1, 50])),
        ),
        constraints=draw(
            st.lists(
                st.sampled_from(
                    [
                        "region==eu-west",
                        "label:tier!=test",
                        "label:gpu",
                        "!label:maintenance",
                        "label:zone in (a,b)",
                        "name not in (gamma)",
                    ]
                ),
                max_size=2,
            )
        ),
        latency_bound_ms=draw(st.none() | st.integers(1, 300)),
        client_latitude=client[0] if client else None,
        client_longitude=client[1] if client else None,
        preferred_sites=frozenset(draw(st.lists(st.sampled_from(ids))) if ids else ()),
        excluded_sites=frozenset(draw(st.lists(st.sampled_from(ids))) if ids else ()),
    )


configs = st.builds(
    PlacementConfig,
    enabled_filters=st.permutations(sorted(FILTERS)).flatmap(
        lambda names: st.integers(0, len(names)).map(lambda n: tuple(names[:n]))
    ),
    weighers=st.dictionaries(
        st.sampled_from(sorted(WEIGHERS)), st.floats(-10, 10, allow_subnormal=False)
    ),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[SiteCandidate], PlacementRequest, PlacementConfig]:
    snapshot = draw(sites())
    return snapshot, draw(requests([s.site_id for s in snapshot])), draw(configs)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_engine_invariants(
    scenario: tuple[list[SiteCandidate], PlacementRequest, PlacementConfig],
) -> None:
    snapshot, request, config = scenario
    before = copy.deepcopy((snapshot, request, config))
    enabled = [FILTERS[n] for n in config.enabled_filters]

    ranked = rank(snapshot, request, config)
    try:
        decision = place(snapshot, request, config)
    except PlacementError as exc:
        assert ranked == []
        assert str(exc).startswith("no site fits app 'app'")
        assert all(not all(f(s, request) for f in enabled) for s in snapshot)
    else:
        assert list(decision.ranked) == ranked
        chosen = decision.chosen
        assert all(f(chosen.site, request) for f in enabled)
        assert chosen.score == max(r.score for r in ranked)
        # Sorted best first, ties by (name, id).
        keys = [(-r.score, r.site.name, r.site.site_id) for r in ranked]
        assert keys == sorted(keys)
        # Every site is either ranked or rejected, exactly once, in the right bucket.
        seen = [r.site.site_id for r in ranked] + [r.site.site_id for r in decision.rejected]
        assert sorted(seen) == sorted(s.site_id for s in snapshot)
        for r in ranked:
            assert all(f(r.site, request) for f in enabled)
            assert [s.weigher for s in r.scores] == list(config.weighers)
            for s in r.scores:
                assert 0.0 <= s.normalized <= 1.0
                assert s.multiplier == config.weighers[s.weigher]
                assert s.weighted == s.normalized * s.multiplier
        for rej in decision.rejected:
            position = list(config.enabled_filters).index(rej.filter)
            assert all(f(rej.site, request) for f in enabled[:position])
            assert not enabled[position](rej.site, request)
    # Nothing was mutated.
    assert (snapshot, request, config) == before


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(
    scenario: tuple[list[SiteCandidate], PlacementRequest, PlacementConfig],
    rnd: random.Random,
) -> None:
    snapshot, request, config = scenario
    shuffled = list(snapshot)
    rnd.shuffle(shuffled)
    assert [r.site.site_id for r in rank(shuffled, request, config)] == [
        r.site.site_id for r in rank(snapshot, request, config)
    ]
