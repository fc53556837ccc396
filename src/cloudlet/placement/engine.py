"""The placement engine: filter the candidates, weigh the survivors, rank, explain.

Pure: takes a snapshot, returns a value, touches no I/O and mutates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudlet.errors import ConfigError, PlacementError
from cloudlet.placement.config import PlacementConfig
from cloudlet.placement.filters import FILTERS, Filter
from cloudlet.placement.model import PlacementRequest, SiteCandidate
from cloudlet.placement.weighers import WEIGHERS, Weigher

__all__ = [
    "PlacementDecision",
    "RankedSite",
    "Rejection",
    "WeightScore",
    "evaluate",
    "normalize",
    "place",
    "rank",
]


@dataclass(frozen=True)
class WeightScore:
    """One weigher's verdict on one site: raw, normalised to 0..1, and after the multiplier."""

    weigher: str
    raw: float
    normalized: float
    multiplier: float
    weighted: float


@dataclass(frozen=True)
class RankedSite:
    """A site that passed every filter, with its total score and how it was made up."""

    site: SiteCandidate
    score: float
    scores: tuple[WeightScore, ...]


@dataclass(frozen=True)
class Rejection:
    """A site some filter dropped: the first filter (in configured order) and why."""

    site: SiteCandidate
    filter: str
    reason: str


@dataclass(frozen=True)
class PlacementDecision:
    """The chosen site and the explanation of the choice.

    ``ranked`` holds the sites that passed every filter, best first (``ranked[0]``
    is the choice); ``rejected`` holds the others, in input order.
    """

    request: PlacementRequest
    ranked: tuple[RankedSite, ...]
    rejected: tuple[Rejection, ...]

    @property
    def chosen(self) -> RankedSite:
        return self.ranked[0]

    @property
    def site(self) -> SiteCandidate:
        """The chosen site."""
        return self.ranked[0].site

    def explain(self) -> str:
        """A human-readable, multi-line account of the decision."""
        lines = [f"app {self.request.app!r} -> {self.site.name} ({self.site.site_id})"]
        for i, r in enumerate(self.ranked, 1):
            parts = ", ".join(
                f"{s.weigher} {s.raw:g} -> {s.normalized:.3f} x {s.multiplier:g} = {s.weighted:.3f}"
                for s in r.scores
            )
            lines.append(f"  #{i} {r.site.name} ({r.site.site_id}) score {r.score:.3f}: {parts}")
        for rej in self.rejected:
            lines.append(
                f"  rejected {rej.site.name} ({rej.site.site_id}) by {rej.filter}: {rej.reason}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The explanation as plain JSON-ready data, keyed by site id."""
        return {
            "app": self.request.app,
            "site_id": self.site.site_id,
            "ranked": [
                {
                    "site_id": r.site.site_id,
                    "name": r.site.name,
                    "score": r.score,
                    "weighers": {
                        s.weigher: {
                            "raw": s.raw,
                            "normalized": s.normalized,
                            "multiplier": s.multiplier,
                            "weighted": s.weighted,
                        }
                        for s in r.scores
                    },
                }
                for r in self.ranked
            ],
            "rejected": [
                {
                    "site_id": rej.site.site_id,
                    "name": rej.site.name,
                    "filter": rej.filter,
                    "reason": rej.reason,
                }
                for rej in self.rejected
            ],
        }


def normalize(values: Sequence[float]) -> list[float]:
    """Min-max normalise to 0..1; all equal (including a single value) gives all 0."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0] * len(values)
    span = hi - lo
    return [(v - lo) / span for v in values]


def _resolve(
    config: PlacementConfig,
    filters: Mapping[str, Filter],
    weighers: Mapping[str, Weigher],
) -> tuple[list[Filter], list[tuple[Weigher, float]]]:
    unknown_f = [n for n in config.enabled_filters if n not in filters]
    if unknown_f:
        raise ConfigError(
            f"unknown placement filter(s) {', '.join(unknown_f)}; "
            f"known: {', '.join(sorted(filters))}"
        )
    unknown_w = [n for n in config.weighers if n not in weighers]
    if unknown_w:
        raise ConfigError(
            f"unknown placement weigher(s) {', '.join(unknown_w)}; "
            f"known: {', '.join(sorted(weighers))}"
        )
    return (
        [filters[n] for n in config.enabled_filters],
        [(weighers[n], m) for n, m in config.weighers.items()],
    )


@dataclass(frozen=True)
class _Evaluation:
    filters: list[Filter]  # the enabled filters, in configured order
    candidates: list[SiteCandidate]
    ranked: list[RankedSite]
    rejected: list[tuple[Filter, Rejection]]


def _evaluate(
    sites: Iterable[SiteCandidate],
    request: PlacementRequest,
    config: PlacementConfig | None,
    filters: Mapping[str, Filter],
    weighers: Mapping[str, Weigher],
) -> _Evaluation:
    active_filters, active_weighers = _resolve(config or PlacementConfig(), filters, weighers)
    candidates = list(sites)
    passed: list[SiteCandidate] = []
    rejected: list[tuple[Filter, Rejection]] = []
    for site in candidates:
        failed = next((f for f in active_filters if not f(site, request)), None)
        if failed is None:
            passed.append(site)
        else:
            rejected.append((failed, Rejection(site, failed.name, failed.reason(site, request))))

    per_site: list[list[WeightScore]] = [[] for _ in passed]
    for weigher, multiplier in active_weighers:
        raws = [float(weigher(site, request)) for site in passed]
        for site, raw in zip(passed, raws, strict=True):
            if not math.isfinite(raw):
                raise PlacementError(
                    f"weigher {weigher.name} gave {raw} for site {site.site_id}; "
                    "weighers must return finite numbers"
                )
        for scores, raw, norm in zip(per_site, raws, normalize(raws), strict=True):
            scores.append(WeightScore(weigher.name, raw, norm, multiplier, norm * multiplier))

    ranked = [
        RankedSite(site, sum(s.weighted for s in scores), tuple(scores))
        for site, scores in zip(passed, per_site, strict=True)
    ]
    # Deterministic: best score first, ties broken by name, then id.
    ranked.sort(key=lambda r: (-r.score, r.site.name, r.site.site_id))
    return _Evaluation(active_filters, candidates, ranked, rejected)


def rank(
    sites: Iterable[SiteCandidate],
    request: PlacementRequest,
    config: PlacementConfig | None = None,
    *,
    filters: Mapping[str, Filter] = FILTERS,
    weighers: Mapping[str, Weigher] = WEIGHERS,
) -> list[RankedSite]:
    """Rank the sites that can host ``request``, best first (empty when none can).

    Args:
        sites: the candidate snapshot; not modified.
        request: what to place.
        config: enabled filters and weigher multipliers (defaults when ``None``).
        filters: registry enabled filter names are looked up in.
        weighers: registry weigher names are looked up in.

    Raises:
        ConfigError: the config names a filter or weigher not in the registry.
    """
    return _evaluate(sites, request, config, filters, weighers).ranked


def evaluate(
    sites: Iterable[SiteCandidate],
    request: PlacementRequest,
    config: PlacementConfig | None = None,
    *,
    filters: Mapping[str, Filter] = FILTERS,
    weighers: Mapping[str, Weigher] = WEIGHERS,
) -> tuple[list[RankedSite], list[Rejection]]:
    """Every site ranked (best first) or rejected (with its filter), none chosen.

    Arguments and errors as for :func:`rank`.
    """
    ev = _evaluate(sites, request, config, filters, weighers)
    return ev.ranked, [r for _, r in ev.rejected]


def place(
    sites: Iterable[SiteCandidate],
    request: PlacementRequest,
    config: PlacementConfig | None = None,
    *,
    filters: Mapping[str, Filter] = FILTERS,
    weighers: Mapping[str, Weigher] = WEIGHERS,
) -> PlacementDecision:
    """Choose the best site for ``request`` and explain why.

    Arguments as for :func:`rank`.

    Returns:
        The decision: chosen site, every passing site's scores, every rejection.

    Raises:
        PlacementError: no site passes the filters; the message counts why, e.g.
            ``no site fits app 'web' (3 candidates): 2 offline, 1 lacks memory
            (needs 512 MiB, best has 256)``.
        ConfigError: the config names a filter or weigher not in the registry.
    """
    ev = _evaluate(sites, request, config, filters, weighers)
    if not ev.ranked:
        raise PlacementError(_no_fit_message(request, ev))
    return PlacementDecision(request, tuple(ev.ranked), tuple(r for _, r in ev.rejected))


def _no_fit_message(request: PlacementRequest, ev: _Evaluation) -> str:
    if not ev.candidates:
        return f"no site fits app {request.app!r}: no candidate sites"
    phrases: list[str] = []
    for flt in ev.filters:  # in configured order, so the message reads like the pipeline
        group = [rej.site for f, rej in ev.rejected if f is flt]
        if group:
            phrases.extend(flt.summarize(group, request))
    n = len(ev.candidates)
    noun = "candidate" if n == 1 else "candidates"
    return f"no site fits app {request.app!r} ({n} {noun}): {', '.join(phrases)}"
