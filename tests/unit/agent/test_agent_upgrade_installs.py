"""Agent installs and the upgrade record: a wheel unpacked into a venv beside the running
environment, refused when it is not a pure wheel of cloudlet at the version named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from agent_fakes import wheel as _wheel

from cloudlet.agent.upgrade import installs, record
from cloudlet.errors import InvalidInputError


def test_a_wheel_becomes_an_install_that_reuses_the_running_dependencies(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "cloudlet-9.9.9-py3-none-any.whl", "9.9.9")
    python = installs.create(tmp_path / "data", "9.9.9", wheel)

    assert python == tmp_path / "data" / "agent-versions" / "9.9.9" / "bin" / "python"
    assert python.exists()
    site_packages = next((python.parent.parent / "lib").glob("python*/site-packages"))
    assert (site_packages / "cloudlet" / "extra.py").exists()  # .data/purelib lands here too
    deps = (site_packages / installs.DEPS_PTH).read_text().split()
    assert deps == installs.dependency_paths() and deps
    rec = record.Record(base_version="0.1.0", base_python=sys.executable)
    assert installs.python_of(tmp_path / "data", "9.9.9", rec) == python
    assert installs.python_of(tmp_path / "data", "0.1.0", rec) == Path(sys.executable)
    assert not installs.held(tmp_path / "data", "9.9.8", rec)
    # Nothing half-built is left beside it.
    assert sorted(p.name for p in (tmp_path / "data" / "agent-versions").iterdir()) == ["9.9.9"]


@pytest.mark.parametrize(
    ("version", "says", "extra", "why"),
    [
        ("9.9.9", "9.9.8", None, "does not say version"),
        ("9.9.9", None, {"../escape.py": ""}, "unsafe path"),
        ("9.9.9", None, {"/etc/escape.py": ""}, "unsafe path"),
        ("../9", None, None, "not an agent version"),
    ],
)
def test_what_is_not_a_pure_wheel_of_that_version_is_refused(
    tmp_path: Path, version: str, says: str | None, extra: dict[str, str] | None, why: str
) -> None:
    wheel = _wheel(tmp_path / "w.whl", "9.9.9", says=says, extra=extra)
    with pytest.raises(InvalidInputError, match=why):
        installs.create(tmp_path / "data", version, wheel)
    versions = tmp_path / "data" / "agent-versions"
    assert not versions.exists() or not any(versions.iterdir())


def test_the_record_round_trips_and_is_replaced_whole(tmp_path: Path) -> None:
    assert record.read(tmp_path) == record.Record()
    with record.update(tmp_path) as rec:
        rec.trial = record.Trial("t1", "0.1.0", "0.1.1", 60.0)
    with record.update(tmp_path) as rec:
        assert rec.trial is not None and rec.trial.to_version == "0.1.1"
        rec.outcome = record.Outcome("t1", record.FAILED, "0.1.0", "0.1.1", "no")
        rec.trial = None
    held = record.read(tmp_path)
    assert held.trial is None and held.outcome is not None
    assert held.outcome.event_data() == {
        "phase": "failed", "from": "0.1.0", "to": "0.1.1", "reason": "no"
    }  # fmt: skip
    assert not list((tmp_path / "agent-versions").glob("*.tmp"))


def test_the_supervisor_does_not_import_the_agent() -> None:
    code = (
        "import sys, cloudlet.agent.upgrade.supervisor;"
        "heavy = ('fastapi', 'httpx', 'pydantic', 'uvicorn', 'cloudlet.agent.daemon',"
        " 'cloudlet.agent.store', 'cloudlet.compute');"
        "print([m for m in heavy if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
