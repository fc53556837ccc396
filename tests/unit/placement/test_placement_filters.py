"""Each placement filter: what it passes, what it drops, and how it says why."""

from __future__ import annotations

import copy

import pytest
from placement_fakes import BERLIN, MADRID, MUNICH, SYDNEY, VIENNA, make_request, make_site

from cloudlet.placement import (
    FILTERS,
    CapacityFilter,
    ConstraintsFilter,
    ExcludedFilter,
    Filter,
    LatencyFilter,
    OnlineFilter,
    Resources,
    estimate_rtt_ms,
    great_circle_km,
)


def test_registry_holds_the_builtins_under_their_names() -> None:
    assert set(FILTERS) == {"excluded", "online", "capacity", "constraints", "latency"}
    for name, flt in FILTERS.items():
        assert flt.name == name
        assert isinstance(flt, Filter)
    with pytest.raises(TypeError):
        FILTERS["extra"] = OnlineFilter()  # type: ignore[index]


def test_excluded() -> None:
    flt = ExcludedFilter()
    a, b = make_site("a"), make_site("b")
    req = make_request(excluded_sites={a.site_id})
    assert not flt(a, req)
    assert flt(b, req)
    assert flt(a, make_request())
    assert flt.reason(a, req) == "excluded"


@pytest.mark.parametrize(
    ("online", "state", "passes", "reason"),
    [
        (True, "online", True, None),
        (False, "offline", False, "offline"),
        (False, "online", False, "offline"),  # the availability verdict wins
        (True, "offline", False, "offline"),  # so does the state
        (True, "registered", False, "registered"),
        (True, "draining", False, "draining"),
        (True, "decommissioned", False, "decommissioned"),
        (False, "draining", False, "draining"),
    ],
)
def test_online(online: bool, state: str, passes: bool, reason: str | None) -> None:
    flt = OnlineFilter()
    site = make_site("a", online=online, state=state)
    assert flt(site, make_request()) is passes
    if reason is not None:
        assert flt.reason(site, make_request()) == reason


def test_online_summary_counts_by_state() -> None:
    flt = OnlineFilter()
    sites = [
        make_site("a", online=False),
        make_site("b", online=False),
        make_site("c", state="draining"),
    ]
    assert flt.summarize(sites, make_request()) == ["2 offline", "1 draining"]


def test_capacity_exact_fit_passes() -> None:
    site = make_site("a", vcpus=2, memory_mib=1024, disk_gib=10)
    assert CapacityFilter()(site, make_request(vcpus=2, memory_mib=1024, disk_gib=10))


@pytest.mark.parametrize(
    ("need", "reason"),
    [
        (
            {"vcpus": 2.5, "memory_mib": 1, "disk_gib": 1},
            "lacks vCPUs (needs 2.5, has 2 free)",
        ),
        (
            {"vcpus": 1, "memory_mib": 1025, "disk_gib": 1},
            "lacks memory (needs 1025 MiB, has 1024 free)",
        ),
        (
            {"vcpus": 1, "memory_mib": 1, "disk_gib": 10.5},
            "lacks disk (needs 10.5 GiB, has 10 free)",
        ),
    ],
)
def test_capacity_each_resource(need: dict[str, float], reason: str) -> None:
    site = make_site("a", vcpus=2, memory_mib=1024, disk_gib=10)
    req = make_request(**need)  # type: ignore[arg-type]
    assert not CapacityFilter()(site, req)
    assert CapacityFilter().reason(site, req) == reason


def test_capacity_counts_what_is_already_allocated() -> None:
    flt = CapacityFilter()
    site = make_site("a", memory_mib=1024, allocated=Resources(1, 768, 0))
    assert flt(site, make_request(memory_mib=256))
    assert not flt(site, make_request(memory_mib=257))
    assert flt.reason(site, make_request(memory_mib=257)) == (
        "lacks memory (needs 257 MiB, has 256 free)"
    )


def test_capacity_overcommitted_site_reports_zero_free() -> None:
    site = make_site("a", memory_mib=1024, allocated=Resources(0, 2048, 0))
    assert site.free.memory_mib == -1024
    req = make_request(memory_mib=1)
    assert not CapacityFilter()(site, req)
    assert "has 0 free" in CapacityFilter().reason(site, req)


def test_capacity_zero_request_fits_a_full_site() -> None:
    site = make_site("a", vcpus=1, memory_mib=1, disk_gib=1, allocated=Resources(1, 1, 1))
    assert CapacityFilter()(site, make_request(vcpus=0, memory_mib=0, disk_gib=0))


def test_capacity_summary_reports_best_free_per_resource() -> None:
    sites = [
        make_site("a", memory_mib=256),
        make_site("b", memory_mib=1024, allocated=Resources(0, 900, 0)),
        make_site("c", vcpus=0.5),
    ]
    got = CapacityFilter().summarize(sites, make_request(vcpus=1, memory_mib=512))
    assert got == [
        "1 lacks vCPUs (needs 1, best has 0.5)",
        "2 lack memory (needs 512 MiB, best has 256)",
    ]


def test_constraints_all_must_hold_and_reason_names_the_first_failing() -> None:
    flt = ConstraintsFilter()
    site = make_site("a", region="eu-west", labels={"gpu": "a100"})
    assert flt(site, make_request())
    assert flt(site, make_request(constraints=["region==eu-west", "label:gpu"]))
    req = make_request(constraints=["label:gpu", "region in (us-east, us-west)", "label:ssd"])
    assert not flt(site, req)
    assert flt.reason(site, req) == "fails constraint region in (us-east,us-west)"
    other = make_site("b", region="us-east", labels={})
    assert flt.summarize([site, other], req) == [
        "1 fails constraint label:gpu",
        "1 fails constraint region in (us-east,us-west)",
    ]


def test_latency_passes_without_bound_or_client_location() -> None:
    flt = LatencyFilter()
    far = make_site("far", at=SYDNEY)
    nowhere = make_site("nowhere", at=None)
    for req in (make_request(client=VIENNA), make_request(latency_bound_ms=1)):
        assert flt(far, req)
        assert flt(nowhere, req)


def test_latency_uses_the_documented_model() -> None:
    flt = LatencyFilter()
    near, mid, far = make_site("m", at=MUNICH), make_site("b", at=BERLIN), make_site("s", at=SYDNEY)
    d_munich = great_circle_km(VIENNA, MUNICH)
    assert 340 < d_munich < 370
    assert flt.rtt_ms(near, make_request(client=VIENNA)) == pytest.approx(2 * d_munich / 200 + 5)
    req = make_request(client=VIENNA, latency_bound_ms=10)
    assert flt(near, req)  # ~8.6 ms
    assert not flt(mid, req)  # ~10.2 ms
    assert not flt(far, req)
    assert flt.reason(far, req).startswith("exceeds the 10 ms latency bound (est. ")


def test_latency_bound_is_inclusive() -> None:
    site = make_site("a", at=VIENNA)
    assert LatencyFilter()(site, make_request(client=VIENNA, latency_bound_ms=5))
    assert not LatencyFilter(lambda km: 5.5)(site, make_request(client=VIENNA, latency_bound_ms=5))


def test_latency_drops_sites_without_location_when_it_must_check() -> None:
    flt = LatencyFilter()
    site = make_site("a", at=None)
    req = make_request(client=VIENNA, latency_bound_ms=1000)
    assert not flt(site, req)
    assert flt.reason(site, req) == "has no location to check the latency bound"


def test_latency_estimator_is_replaceable() -> None:
    flat = LatencyFilter(estimate=lambda km: 1.0)
    req = make_request(client=VIENNA, latency_bound_ms=2)
    assert flat(make_site("s", at=SYDNEY), req)


def test_latency_summary() -> None:
    sites = [make_site("b", at=BERLIN), make_site("m", at=MADRID), make_site("x", at=None)]
    req = make_request(client=VIENNA, latency_bound_ms=8)
    best = estimate_rtt_ms(great_circle_km(VIENNA, BERLIN))
    assert LatencyFilter().summarize(sites, req) == [
        f"2 exceed the 8 ms latency bound (best estimate {best:.1f} ms)",
        "1 has no location to check the latency bound",
    ]


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_do_not_mutate(name: str) -> None:
    site = make_site(
        "a", at=BERLIN, labels={"gpu": "x"}, allocated=Resources(1, 100, 1), state="draining"
    )
    req = make_request(
        constraints=["label:gpu"], client=VIENNA, latency_bound_ms=5, excluded_sites={"id-a"}
    )
    site_before, req_before = copy.deepcopy(site), copy.deepcopy(req)
    flt = FILTERS[name]
    flt(site, req)
    flt.reason(site, req)
    flt.summarize([site], req)
    assert site == site_before
    assert req == req_before
