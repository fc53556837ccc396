"""Pin placement's public names, and keep the package pure (no controller, agent, cli, I/O)."""

from __future__ import annotations

import ast
from pathlib import Path

import cloudlet.placement

EXPORTED = {
    "DEFAULT_FILTERS",
    "DEFAULT_WEIGHERS",
    "FILTERS",
    "WEIGHERS",
    "BaseFilter",
    "CapacityFilter",
    "Constraint",
    "ConstraintsFilter",
    "ExcludedFilter",
    "Filter",
    "LatencyFilter",
    "LoadWeigher",
    "OnlineFilter",
    "Op",
    "PlacementConfig",
    "PlacementDecision",
    "PlacementRequest",
    "PreferenceWeigher",
    "ProximityWeigher",
    "RankedSite",
    "Rejection",
    "Resources",
    "SiteCandidate",
    "Utilization",
    "WeightScore",
    "Weigher",
    "estimate_rtt_ms",
    "great_circle_km",
    "normalize",
    "parse_constraint",
    "parse_constraints",
    "place",
    "rank",
}

FORBIDDEN = (
    "cloudlet.controller",
    "cloudlet.agent",
    "cloudlet.cli",
    "sqlalchemy",
    "httpx",
    "fastapi",
    "socket",
    "subprocess",
)


def test_exported_members() -> None:
    assert set(cloudlet.placement.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(cloudlet.placement, name) is not None


def test_placement_imports_nothing_impure() -> None:
    package = Path(cloudlet.placement.__file__).parent
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
