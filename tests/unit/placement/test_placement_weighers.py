"""Weighers (raw values, higher is better) and the distance / RTT helpers."""

from __future__ import annotations

import pytest
from placement_fakes import MUNICH, SYDNEY, VIENNA, make_request, make_site

from cloudlet.placement import (
    WEIGHERS,
    LoadWeigher,
    PreferenceWeigher,
    ProximityWeigher,
    Resources,
    Utilization,
    Weigher,
    estimate_rtt_ms,
    great_circle_km,
)
from cloudlet.placement.geo import MAX_DISTANCE_KM


def test_registry() -> None:
    assert set(WEIGHERS) == {"load", "proximity", "preference"}
    for name, w in WEIGHERS.items():
        assert w.name == name
        assert isinstance(w, Weigher)


def test_load_prefers_less_allocated() -> None:
    w, req = LoadWeigher(), make_request()
    empty = make_site("a")
    half = make_site("b", allocated=Resources(4, 4096, 50))
    full = make_site("c", allocated=Resources(8, 8192, 100))
    assert w(empty, req) == 1.0
    assert w(half, req) == pytest.approx(0.5)
    assert w(full, req) == 0.0


def test_load_takes_the_larger_of_allocation_and_utilization() -> None:
    w, req = LoadWeigher(), make_request()
    busy = make_site("a", utilization=Utilization(cpu=0.9, memory=0.6, disk=0.0))
    assert w(busy, req) == pytest.approx(1 - (0.9 + 0.6 + 0.0) / 3)
    reserved = make_site(
        "b", allocated=Resources(8, 0, 0), utilization=Utilization(cpu=0.1, memory=0.3, disk=0)
    )
    assert w(reserved, req) == pytest.approx(1 - (1.0 + 0.3 + 0.0) / 3)


def test_load_zero_capacity_counts_as_full() -> None:
    site = make_site("a", vcpus=0, memory_mib=0, disk_gib=0)
    assert LoadWeigher()(site, make_request()) == 0.0


def test_proximity() -> None:
    w = ProximityWeigher()
    near, far, nowhere = make_site("n", at=MUNICH), make_site("f", at=SYDNEY), make_site("x")
    assert w(near, make_request()) == 0.0
    assert w(nowhere, make_request()) == 0.0
    req = make_request(client=VIENNA)
    assert w(near, req) == pytest.approx(-great_circle_km(VIENNA, MUNICH))
    assert w(near, req) > w(far, req) > w(nowhere, req) == -MAX_DISTANCE_KM


def test_preference() -> None:
    w = PreferenceWeigher()
    a, b = make_site("a"), make_site("b")
    req = make_request(preferred_sites={a.site_id})
    assert (w(a, req), w(b, req)) == (1.0, 0.0)
    assert w(a, make_request()) == 0.0


def test_great_circle() -> None:
    assert great_circle_km(VIENNA, VIENNA) == 0.0
    assert great_circle_km((51.5074, -0.1278), (48.8566, 2.3522)) == pytest.approx(344, abs=2)
    assert great_circle_km((0, 0), (0, 180)) == pytest.approx(MAX_DISTANCE_KM)
    assert great_circle_km((90, 0), (-90, 0)) == pytest.approx(MAX_DISTANCE_KM)


def test_rtt_model() -> None:
    assert estimate_rtt_ms(0) == 5.0
    assert estimate_rtt_ms(1000) == 15.0
