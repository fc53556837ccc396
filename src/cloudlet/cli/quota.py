"""`cloudlet project quota show/set`: a project's limits beside what it uses (admins set them)."""

from __future__ import annotations

import re
from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, ctx_of
from cloudlet.cli._output import emit_json, human_bytes, show
from cloudlet.errors import InvalidInputError

app = typer.Typer(help="Project quotas: limits and usage.", no_args_is_help=True)

#: Units a size may carry: IEC (KiB, MiB ...) and SI (kB, MB ...); a bare number is bytes.
_UNITS = {
    "": 1, "b": 1,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4, "pb": 1000**5,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
#: What clears a limit (null: unlimited).
_UNLIMITED = {"unlimited", "none", "-"}


def parse_size(value: str, what: str, bare_unit: int = 1) -> int:
    """``10GiB``, ``512MiB``, ``2TB`` or a bare number (times ``bare_unit``) in bytes.

    Raises:
        InvalidInputError: not a size.
    """
    match = _SIZE.match(value)
    unit = match and _UNITS.get(match.group(2).lower())
    if match is None or unit is None:
        raise InvalidInputError(
            f"{what}: {value!r} is not a size; say e.g. 10GiB, 512MiB or 2TB (or unlimited)"
        )
    scale = unit if match.group(2) else bare_unit
    return int(float(match.group(1)) * scale)


def _limit(value: str | None, what: str, parse: Any) -> tuple[bool, Any]:
    """(given, limit): not given, unlimited (None) or the parsed number."""
    if value is None:
        return False, None
    if value.strip().lower() in _UNLIMITED:
        return True, None
    try:
        return True, parse(value)
    except ValueError as exc:
        raise InvalidInputError(f"{what}: {value!r} is not a number (or unlimited)") from exc


def _mib(value: str) -> int:
    size = parse_size(value, "--memory", bare_unit=1024**2)
    if size % 1024**2:
        raise InvalidInputError(f"--memory: {value!r} is not a whole number of MiB")
    return size // 1024**2


#: quota -> how to print a number of it.
_SHOWN = {
    "instances": str,
    "vcpus": lambda v: f"{v:g}",
    "memory_mib": lambda v: human_bytes(int(v) * 1024**2),
    "overlay_bytes": lambda v: human_bytes(int(v)),
    "image_bytes": lambda v: human_bytes(int(v)),
}


def _rows(quota: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, fmt in _SHOWN.items():
        limit, used = quota["limits"].get(name), quota["usage"].get(name, 0)
        rows.append(
            {
                "quota": name,
                "limit": "unlimited" if limit is None else fmt(limit),
                "used": fmt(used),
                "state": "OVER" if name in quota.get("over", []) else "ok",
            }
        )
    return rows


_COLUMNS = [
    ("QUOTA", lambda r: r["quota"]),
    ("LIMIT", lambda r: r["limit"]),
    ("USED", lambda r: r["used"]),
    ("STATE", lambda r: r["state"]),
]


def _print(quota: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(quota)
    else:
        show(_rows(quota), _COLUMNS, False, title=f"project {quota['project']}")


@app.command("show")
def show_(
    ctx: typer.Context,
    project: str = typer.Argument(..., help="The project (members: their own)."),
    as_json: bool = JsonOpt,
) -> None:
    """The project's limits, what it uses of each, and the quotas it is over."""
    _print(ctx_of(ctx).client().get(f"/v1/projects/{project}/quota"), as_json)


@app.command("set")
def set_(
    ctx: typer.Context,
    project: str = typer.Argument(..., help="The project."),
    instances: str | None = typer.Option(None, help="Live instances, or unlimited."),
    vcpus: str | None = typer.Option(None, help="vCPUs of the live instances, or unlimited."),
    memory: str | None = typer.Option(
        None, help="Memory of the live instances (32GiB; a bare number is MiB), or unlimited."
    ),
    overlay_bytes: str | None = typer.Option(
        None, "--overlay-bytes", help="Bytes of overlays (10GiB, 500MB), or unlimited."
    ),
    image_bytes: str | None = typer.Option(
        None, "--image-bytes", help="Bytes of base images (10GiB, 500MB), or unlimited."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Set some of a project's limits (admins); the others keep theirs. Lowering one
    below the usage deletes nothing: the project creates no more until it is under."""
    options = {
        "instances": _limit(instances, "--instances", int),
        "vcpus": _limit(vcpus, "--vcpus", float),
        "memory_mib": _limit(memory, "--memory", _mib),
        "overlay_bytes": _limit(
            overlay_bytes, "--overlay-bytes", lambda v: parse_size(v, "--overlay-bytes")
        ),
        "image_bytes": _limit(
            image_bytes, "--image-bytes", lambda v: parse_size(v, "--image-bytes")
        ),
    }
    body = {name: value for name, (given, value) in options.items() if given}
    if not body:
        raise InvalidInputError(
            "nothing to set: give --instances, --vcpus, --memory, --overlay-bytes or --image-bytes"
        )
    client = ctx_of(ctx).client()
    _print(client.request("PUT", f"/v1/projects/{project}/quota", json=body), as_json)
