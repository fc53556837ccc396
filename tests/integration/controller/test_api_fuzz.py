"""schemathesis against the live OpenAPI document of a real controller process: every
operation, every check, as each role (the admin, a member and a reader of another project)
and with no token.

Bounded (a fixed seed, one to twelve examples per operation) so that it costs well under
a minute per run; the case counts are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).with_name("schemathesis.toml")
#: Examples per operation: the admin reaches every handler, so it gets the most; the
#: other callers are refused before the handler, which fewer cases cover as well.
EXAMPLES = {"admin": 12, "member": 3, "reader": 2, "anonymous": 1}
SEED = 20261202


def _fuzz(
    controller: LocalController, report: Path, token: str | None, examples: int
) -> dict[str, object]:
    st = Path(sys.executable).with_name("st")
    args = [
        str(st), "--config-file", str(CONFIG), "run", f"{controller.url}/openapi.json",
        "--max-examples", str(examples), "--seed", str(SEED), "--no-color",
        "--generation-database", "none", "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    if token:
        args += ["--header", f"Authorization: Bearer {token}"]
    if not controller.insecure:
        args += ["--tls-verify", str(controller.ca_file)]
    # In the report's directory: schemathesis keeps a cache where it runs.
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=report.parent)
    result = json.loads(report.read_text())
    summary = {
        "cases": result["test_cases"]["generated"],
        "operations": result["operations"],
        "failures": result["failures"],
        "errors": result["errors"],
    }
    print(f"schemathesis ({'token' if token else 'no token'}): {summary['cases']} cases")
    failures = done.stdout.partition("=== FAILURES ===")[2].partition("=== WARNINGS ===")[0]
    assert done.returncode == 0, failures[:8000] or done.stdout[-3000:]
    return summary


def _check(summary: dict[str, object]) -> None:
    assert summary["failures"] == [] and summary["errors"] == []
    # The coverage phase adds its own cases to the examples: over 1,000 for each caller.
    assert summary["cases"] >= 1000, summary["cases"]  # type: ignore[operator]


def test_as_the_admin_on_both_databases(controller: LocalController, tmp_path: Path) -> None:
    _check(_fuzz(controller, tmp_path / "admin.json", controller.token, EXAMPLES["admin"]))


@pytest.fixture
def sqlite_controller(tmp_path: Path) -> Iterator[LocalController]:
    # Who may do what does not depend on the database: the other callers run on one,
    # over HTTPS (the admin's, on the conftest's controller, over plain HTTP).
    ctl = LocalController(tmp_path / "controller").start()
    try:
        yield ctl
    finally:
        ctl.stop()


@pytest.mark.parametrize("who", ["member", "reader", "anonymous"])
def test_as_each_role_of_another_project_and_without_a_token(
    sqlite_controller: LocalController, tmp_path: Path, who: str
) -> None:
    ctl = sqlite_controller
    token = None if who == "anonymous" else ctl.create_token("fuzz", "tenant-b", role=who)
    _check(_fuzz(ctl, tmp_path / f"{who}.json", token, EXAMPLES[who]))
