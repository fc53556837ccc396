"""Real wheels of this project for the agent-upgrade tests: a copy of the source tree at
another version, built with pip as a release would be, optionally broken on purpose."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: Where a broken agent breaks: the first thing Agent.run does with the store.
START = "            await self.reconciler.reconcile_once()\n"
BREAKS = {
    "crash": '            raise RuntimeError("a deliberately broken agent")\n',
    "hang": "            await asyncio.Event().wait()  # a deliberately broken agent\n",
}


@dataclass(frozen=True)
class Wheel:
    version: str
    path: Path


def _tree(root: Path, version: str, breaks: str | None) -> Path:
    tree = root / f"src-{version}"
    shutil.copytree(
        ROOT / "src" / "cloudlet",
        tree / "src" / "cloudlet",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    _replace(tree / "pyproject.toml", 'version = "0.1.0"', f'version = "{version}"')
    _replace(tree / "src/cloudlet/__init__.py", '"0.1.0"', f'"{version}"')
    if breaks is not None:
        _replace(tree / "src/cloudlet/agent/daemon.py", START, BREAKS[breaks])
    return tree


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected {old!r} once"
    path.write_text(text.replace(old, new))


def build_wheels(root: Path, wanted: dict[str, str | None]) -> dict[str, Wheel]:
    """Build one wheel per version in ``wanted`` (version -> how it breaks, or None), in
    parallel; returns them by version."""
    out = root / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    builds = {
        version: subprocess.Popen(
            [*pip, "--no-index", "-w", str(out), str(_tree(root, version, breaks))],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for version, breaks in wanted.items()
    }
    wheels = {}
    for version, build in builds.items():
        log, _ = build.communicate(timeout=120)
        assert build.returncode == 0, log.decode(errors="replace")
        wheels[version] = Wheel(version, out / f"cloudlet-{version}-py3-none-any.whl")
    return wheels
