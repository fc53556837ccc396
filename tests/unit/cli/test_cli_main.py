"""The root command: groups load on first use, and no help text loses words to markup."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
import typer
from rich.text import Text

from cloudlet.cli.main import COMMANDS, GROUPS, app

#: What a list command must not pay for at start-up (the server stack, synthesis).
HEAVY = ("numpy", "fastapi", "sqlalchemy", "uvicorn", "cloudlet.controller", "cloudlet.agent")


def _imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {m for m in out.splitlines() if m.startswith(HEAVY)}


def test_importing_the_cli_imports_no_server_stack() -> None:
    assert _imported_after("import cloudlet.cli.main") == set()


@pytest.mark.parametrize(
    "group",
    ["site", "instance", "event", "app", "image", "overlay", "project", "user", "api-key", "login"],
)
def test_list_commands_import_no_server_stack(group: str) -> None:
    code = (
        "from cloudlet.cli.main import app\n"
        "import typer.main\n"
        f"typer.main.get_command(app).get_command(None, {group!r})"
    )
    assert _imported_after(code) == set()


def _commands(group: click.Command, path: str = "cloudlet"):  # type: ignore[no-untyped-def]
    yield path, group
    if isinstance(group, click.Group) or hasattr(group, "commands"):
        for name in group.list_commands(click.Context(group)):  # type: ignore[attr-defined]
            sub = group.get_command(click.Context(group), name)  # type: ignore[attr-defined]
            yield from _commands(sub, f"{path} {name}")


def test_every_group_is_listed_and_loads() -> None:
    root = typer.main.get_command(app)
    names = root.list_commands(click.Context(root))  # type: ignore[attr-defined]
    assert names == [*GROUPS, *COMMANDS]
    for name, (module, summary) in GROUPS.items():
        sub = root.get_command(click.Context(root), name)  # type: ignore[attr-defined]
        assert sub is not None and sub.name == name
        assert importlib.import_module(f"cloudlet.cli.{module}").app.info.help == summary
        params = {p.name for p in sub.params}
        assert not params & {"install_completion", "show_completion"}
    for name in COMMANDS:
        command = root.get_command(click.Context(root), name)  # type: ignore[attr-defined]
        assert command is not None and command.name == name and command.help
        assert not {p.name for p in command.params} & {"install_completion", "show_completion"}


def test_no_help_text_is_eaten_by_markup() -> None:
    """Rich renders help as markup: "[info]" would vanish, leaving "warning ."."""
    root = typer.main.get_command(app)
    seen = 0
    for path, command in _commands(root):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            assert Text.from_markup(text).plain == text, f"{path}: {text!r}"
            seen += 1
    assert seen > 100
