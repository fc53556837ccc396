"""Agent installs beside the running one: ``data_dir/agent-versions/<version>/``.

An install is a venv that holds only the agent's wheel, unpacked into its
site-packages; the dependencies are the running environment's, reached through a
``.pth`` file that lists its site-packages (no pip, no network). A directory named
after the version is complete: it is built under a dot-name and renamed last. The
base install is the environment the supervisor itself runs from. Standard library
only (the supervisor imports it).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path, PurePosixPath

from cloudlet.agent.upgrade.record import Record, versions_dir
from cloudlet.errors import InvalidInputError

#: In an install's site-packages: the directories its dependencies come from.
DEPS_PTH = "cloudlet-deps.pth"
#: Versions name directories: nothing that could climb out of agent-versions/.
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}$")


def install_dir(data_dir: Path, version: str) -> Path:
    if not _VERSION.fullmatch(version):
        raise InvalidInputError(f"not an agent version: {version!r}")
    return versions_dir(data_dir) / version


def python_of(data_dir: Path, version: str | None, rec: Record) -> Path | None:
    """The interpreter that runs ``version`` (None: the base install), if it is held."""
    if version is None or version == rec.base_version:
        return Path(rec.base_python or sys.executable)
    python = install_dir(data_dir, version) / "bin" / "python"
    return python if python.exists() else None


def held(data_dir: Path, version: str, rec: Record) -> bool:
    return python_of(data_dir, version, rec) is not None


def dependency_paths() -> list[str]:
    """The site-packages the running agent's dependencies come from: its own
    environment's, or, when it runs from an install, the ones that install lists."""
    own = site.getsitepackages()
    for directory in own:
        pth = Path(directory) / DEPS_PTH
        if pth.exists():
            return [line for line in pth.read_text().splitlines() if line.strip()]
    user = site.getusersitepackages()
    # A venv turns the user's site-packages off: list it if the running agent uses it.
    return [user, *own] if site.ENABLE_USER_SITE and user in sys.path else own


def _site_packages(env_dir: Path) -> Path:
    return env_dir / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _members(wheel: zipfile.ZipFile, version: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Each member and where it goes under site-packages; refuses what is not a pure
    wheel of cloudlet at ``version``."""
    info = f"cloudlet-{version}.dist-info"
    names = set(wheel.namelist())
    if f"{info}/METADATA" not in names or "cloudlet/__init__.py" not in names:
        raise InvalidInputError(f"not a wheel of cloudlet {version} (no {info}/METADATA)")
    metadata = wheel.read(f"{info}/METADATA").decode(errors="replace").splitlines()
    if f"Version: {version}" not in metadata:
        raise InvalidInputError(f"the wheel's metadata does not say version {version}")
    if "Root-Is-Purelib: true" not in wheel.read(f"{info}/WHEEL").decode(errors="replace"):
        raise InvalidInputError("the wheel is not pure Python")
    data = f"cloudlet-{version}.data"
    out = []
    for member in wheel.infolist():
        path = PurePosixPath(member.filename)
        if path.is_absolute() or ".." in path.parts:
            raise InvalidInputError(f"the wheel holds an unsafe path: {member.filename!r}")
        if path.parts[0] == data:
            if len(path.parts) < 3 or path.parts[1] not in ("purelib", "platlib"):
                continue  # scripts, headers, data: the agent runs by `python -m`
            path = PurePosixPath(*path.parts[2:])
        if not member.is_dir():
            out.append((member, path))
    return out


def create(data_dir: Path, version: str, wheel_path: Path) -> Path:
    """Install the wheel at ``wheel_path`` as ``version``; return the install's python.

    Raises:
        InvalidInputError: not a pure wheel of cloudlet at that version.
        OSError: the venv or the files could not be written.
    """
    final = install_dir(data_dir, version)
    if final.exists():
        return final / "bin" / "python"
    tmp = final.with_name(f".{version}.{secrets.token_hex(4)}")
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            members = _members(wheel, version)
            venv.EnvBuilder(symlinks=True, with_pip=False).create(tmp)
            target = _site_packages(tmp)
            for member, path in members:
                dest = target.joinpath(*path.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        (target / f"cloudlet-{version}.dist-info" / "INSTALLER").write_text("cloudlet-agent\n")
        (target / DEPS_PTH).write_text("".join(f"{p}\n" for p in dependency_paths()))
        # The name says "complete": after a power cut it must not name truncated files.
        # A few hundred files, once per upgrade: one sync rather than an fsync each.
        os.sync()
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "bin" / "python"


def reported_version(python: Path, timeout: float = 60.0) -> str | None:
    """``cloudlet.__version__`` as the interpreter ``python`` imports it (None: it cannot)."""
    try:
        done = subprocess.run(
            [str(python), "-P", "-c", "import cloudlet; print(cloudlet.__version__)"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def remove_others(data_dir: Path, keep: set[str]) -> None:
    """Delete installs (and leftovers of interrupted ones) whose version is not in ``keep``."""
    root = versions_dir(data_dir)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in keep and entry.name != "downloads":
            shutil.rmtree(entry, ignore_errors=True)
