"""The engine: normalisation, scoring, tie-breaking, explanations, the no-fit message."""

from __future__ import annotations

import math

import pytest
from placement_fakes import BERLIN, MADRID, MUNICH, VIENNA, make_request, make_site
from pydantic import ValidationError

from cloudlet.errors import ConfigError, PlacementError
from cloudlet.placement import (
    FILTERS,
    WEIGHERS,
    BaseFilter,
    PlacementConfig,
    PlacementRequest,
    Resources,
    SiteCandidate,
    normalize,
    place,
    rank,
)

LOAD_ONLY = PlacementConfig(weighers={"load": 1.0})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        ([3.0], [0.0]),
        ([2.0, 2.0, 2.0], [0.0, 0.0, 0.0]),
        ([-1.0, 0.0, 1.0], [0.0, 0.5, 1.0]),
        ([10.0, 30.0, 20.0], [0.0, 1.0, 0.5]),
        ([-5000.0, -100.0], [0.0, 1.0]),
    ],
)
def test_normalize(values: list[float], expected: list[float]) -> None:
    assert normalize(values) == pytest.approx(expected)


def test_single_candidate_scores_zero_and_wins() -> None:
    only = make_site("only", allocated=Resources(7, 0, 0))
    decision = place([only], make_request())
    assert decision.site is only
    assert decision.chosen.score == 0.0
    assert all(s.normalized == 0.0 and s.weighted == 0.0 for s in decision.chosen.scores)


def test_less_loaded_site_wins() -> None:
    busy = make_site("busy", allocated=Resources(6, 6000, 60))
    idle = make_site("idle")
    decision = place([busy, idle], make_request(), LOAD_ONLY)
    assert decision.site is idle
    assert [r.site.name for r in decision.ranked] == ["idle", "busy"]
    assert decision.chosen.score == 1.0
    assert decision.ranked[1].score == 0.0


def test_negative_multiplier_packs_instead_of_spreading() -> None:
    busy = make_site("busy", allocated=Resources(6, 6000, 60))
    idle = make_site("idle")
    decision = place([busy, idle], make_request(), PlacementConfig(weighers={"load": -1.0}))
    assert decision.site is busy
    assert decision.chosen.score == 0.0
    assert decision.ranked[1].score == -1.0


def test_multipliers_decide_between_weighers() -> None:
    # near is loaded, far is idle: the multipliers say which matters more.
    near = make_site("near", at=MUNICH, allocated=Resources(6, 6000, 60))
    far = make_site("far", at=MADRID)
    req = make_request(client=VIENNA)
    by_distance = PlacementConfig(weighers={"load": 1.0, "proximity": 2.0})
    by_load = PlacementConfig(weighers={"load": 2.0, "proximity": 1.0})
    assert place([near, far], req, by_distance).site is near
    assert place([near, far], req, by_load).site is far


def test_all_equal_weigher_contributes_nothing() -> None:
    a, b = make_site("a", at=BERLIN), make_site("b", at=MUNICH)
    decision = place([a, b], make_request(), PlacementConfig(weighers={"proximity": 5.0}))
    for r in decision.ranked:
        assert r.score == 0.0
        assert r.scores[0].raw == 0.0


def test_ties_broken_by_name_then_id_whatever_the_input_order() -> None:
    sites = [
        make_site("b", site_id="1"),
        make_site("a", site_id="3"),
        make_site("a", site_id="2"),
        make_site("c", site_id="0"),
    ]
    expected = [("a", "2"), ("a", "3"), ("b", "1"), ("c", "0")]
    for order in (sites, sites[::-1], sites[1:] + sites[:1]):
        ranked = rank(order, make_request())
        assert [(r.site.name, r.site.site_id) for r in ranked] == expected
        assert place(order, make_request()).site.site_id == "2"


def test_preferred_site_wins_with_default_multipliers() -> None:
    near = make_site("near", at=MUNICH)
    liked = make_site("liked", at=MADRID, allocated=Resources(4, 4000, 50))
    req = make_request(client=VIENNA, preferred_sites={liked.site_id})
    assert place([near, liked], req).site is liked
    # ... but a preference does not override a filter.
    req = make_request(client=VIENNA, preferred_sites={liked.site_id}, memory_mib=5000)
    assert place([near, liked], req).site is near


def test_explanation_content() -> None:
    idle = make_site("idle", at=MUNICH)
    busy = make_site("busy", at=BERLIN, allocated=Resources(4, 4096, 50))
    offline = make_site("down", online=False)
    small = make_site("small", memory_mib=256)
    req = make_request(client=VIENNA)
    decision = place([offline, busy, small, idle], req)

    assert decision.site is idle
    assert [(r.site.name, r.filter, r.reason) for r in decision.rejected] == [
        ("down", "online", "offline"),
        ("small", "capacity", "lacks memory (needs 512 MiB, has 256 free)"),
    ]
    scores = {s.weigher: s for s in decision.chosen.scores}
    assert list(scores) == ["load", "proximity", "preference"]
    assert scores["load"].raw == 1.0
    assert scores["load"].normalized == 1.0
    assert scores["proximity"].raw == pytest.approx(-355, abs=10)
    assert scores["proximity"].normalized == 1.0
    assert scores["preference"].multiplier == 10.0
    assert scores["preference"].weighted == 0.0
    assert decision.chosen.score == pytest.approx(sum(s.weighted for s in scores.values()))

    data = decision.as_dict()
    assert data["site_id"] == idle.site_id
    assert [r["name"] for r in data["ranked"]] == ["idle", "busy"]
    assert data["ranked"][0]["weighers"]["load"] == {
        "raw": 1.0,
        "normalized": 1.0,
        "multiplier": 1.0,
        "weighted": 1.0,
    }
    assert data["rejected"][0] == {
        "site_id": offline.site_id,
        "name": "down",
        "filter": "online",
        "reason": "offline",
    }

    text = decision.explain()
    assert text.splitlines()[0] == f"app 'web' -> idle ({idle.site_id})"
    assert "#1 idle" in text and "#2 busy" in text
    assert "rejected small (id-small) by capacity: lacks memory" in text


def test_first_filter_in_configured_order_is_blamed() -> None:
    site = make_site("a", online=False, memory_mib=1)
    ok = make_site("ok")
    req = make_request()
    d1 = place([site, ok], req, PlacementConfig(enabled_filters=("online", "capacity")))
    d2 = place([site, ok], req, PlacementConfig(enabled_filters=("capacity", "online")))
    assert d1.rejected[0].filter == "online"
    assert d2.rejected[0].filter == "capacity"


def test_disabled_filter_is_not_applied() -> None:
    down = make_site("down", online=False)
    config = PlacementConfig(enabled_filters=("capacity",))
    assert place([down], make_request(), config).site is down


def test_no_fit_message() -> None:
    sites = [
        make_site("a", online=False),
        make_site("b", online=False),
        make_site("c", memory_mib=256),
    ]
    with pytest.raises(PlacementError) as info:
        place(sites, make_request(memory_mib=512))
    assert str(info.value) == (
        "no site fits app 'web' (3 candidates): 2 offline, "
        "1 lacks memory (needs 512 MiB, best has 256)"
    )


def test_no_fit_message_covers_every_filter() -> None:
    sites = [
        make_site("gone", state="decommissioned"),
        make_site("skip"),
        make_site("tiny", vcpus=0.5, at=MUNICH),
        make_site("us", region="us-east", at=MUNICH),
        make_site("far", at=MADRID),
        make_site("where"),
    ]
    req = make_request(
        constraints=["region==eu-west"],
        excluded_sites={"id-skip"},
        client=VIENNA,
        latency_bound_ms=20,
    )
    with pytest.raises(PlacementError) as info:
        place(sites, req)
    assert str(info.value) == (
        "no site fits app 'web' (6 candidates): 1 excluded, 1 decommissioned, "
        "1 lacks vCPUs (needs 1, best has 0.5), 1 fails constraint region==eu-west, "
        "1 exceeds the 20 ms latency bound (best estimate 23.1 ms), "
        "1 has no location to check the latency bound"
    )
    assert rank(sites, req) == []


def test_no_candidates() -> None:
    with pytest.raises(PlacementError, match=r"^no site fits app 'web': no candidate sites$"):
        place([], make_request())
    assert rank([], make_request()) == []


def test_rank_matches_place() -> None:
    sites = [make_site(n, allocated=Resources(i, i * 100, i)) for i, n in enumerate("dcba")]
    req = make_request()
    assert [r.site for r in rank(sites, req)] == [r.site for r in place(sites, req).ranked]
    assert [r.site.name for r in rank(sites, req)] == ["d", "c", "b", "a"]


def test_accepts_any_iterable_of_sites() -> None:
    sites = (make_site(n) for n in "ab")
    assert place(sites, make_request()).site.name == "a"


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown placement filter.*gpu.*known: capacity"):
        place([make_site("a")], make_request(), PlacementConfig(enabled_filters=("gpu",)))
    with pytest.raises(ConfigError, match=r"unknown placement weigher.*cost"):
        rank([make_site("a")], make_request(), PlacementConfig(weighers={"cost": 1.0}))


def test_custom_registry() -> None:
    class EvenFilter(BaseFilter):
        name = "even"

        def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
            return int(site.site_id) % 2 == 0

    filters = {**FILTERS, "even": EvenFilter()}
    weighers = {**WEIGHERS, "big-id": _BigId()}
    config = PlacementConfig(enabled_filters=("online", "even"), weighers={"big-id": 1.0})
    sites = [make_site(n, site_id=str(i)) for i, n in enumerate("abcde")]
    decision = place(sites, make_request(), config, filters=filters, weighers=weighers)
    assert decision.site.site_id == "4"
    assert [r.reason for r in decision.rejected] == ["rejected by even"] * 2
    with pytest.raises(PlacementError, match=r"\(1 candidate\): 1 rejected by even$"):
        place(sites[1:2], make_request(), config, filters=filters, weighers=weighers)


class _BigId:
    name = "big-id"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> float:
        return float(site.site_id)


class _Broken:
    name = "broken"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> float:
        return math.nan


def test_non_finite_weight_is_refused() -> None:
    with pytest.raises(PlacementError, match="weigher broken gave nan for site id-a"):
        place(
            [make_site("a")],
            make_request(),
            PlacementConfig(weighers={"broken": 1.0}),
            weighers={"broken": _Broken()},
        )


def test_config_defaults_and_validation() -> None:
    config = PlacementConfig()
    assert config.enabled_filters == ("excluded", "online", "capacity", "constraints", "latency")
    assert config.weighers == {"load": 1.0, "proximity": 1.0, "preference": 10.0}
    with pytest.raises(ValidationError, match="filters listed twice: online"):
        PlacementConfig(enabled_filters=("online", "capacity", "online"))
    with pytest.raises(ValidationError, match="finite"):
        PlacementConfig(weighers={"load": math.inf})
    with pytest.raises(ValidationError):
        PlacementConfig(enabled=("online",))  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        config.enabled_filters = ()  # type: ignore[misc]
    assert PlacementConfig.model_validate(
        {"enabled_filters": ["online"], "weighers": {"load": "2"}}
    ) == PlacementConfig(enabled_filters=("online",), weighers={"load": 2.0})
