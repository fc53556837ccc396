"""The agent package's public names, pinned."""

from __future__ import annotations

import cloudlet.agent


def test_public_names() -> None:
    assert sorted(cloudlet.agent.__all__) == ["Agent", "Store", "run_agent"]
    for name in cloudlet.agent.__all__:
        assert getattr(cloudlet.agent, name) is not None


def test_agent_never_imports_controller_or_cli() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cloudlet.agent, cloudlet.agent.daemon;"
        "bad = [m for m in sys.modules if m.startswith(('cloudlet.controller', 'cloudlet.cli'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
