"""The encodings the overlay bench compares: Cloudlet overlays and off-the-shelf baselines.

Each method is a pair of command lines: encode (base, modified, delta) and decode
(base, delta, output). Every decode output is hashed against the modified image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The highest `--level` `cloudlet overlay create` accepts (see its --help).
CLOUDLET_MAX_LEVEL = 19

Argv = list[str]
Encode = Callable[[Path, Path, Path], Argv]
Decode = Callable[[Path, Path, Path], Argv]


@dataclass(frozen=True)
class Method:
    """One way to ship a modified image to a site that holds the base."""

    name: str
    label: str
    encode: Encode
    decode: Decode
    cloudlet: bool = False


def cloudlet_methods(cloudlet: str, max_level: int) -> list[Method]:
    """Cloudlet's own overlay at the default level and at `max_level`."""

    def create(level: int | None) -> Encode:
        def argv(base: Path, mod: Path, out: Path) -> Argv:
            extra = [] if level is None else ["--level", str(level)]
            return [
                cloudlet,
                "overlay",
                "create",
                "-q",
                "--base",
                str(base),
                "--modified",
                str(mod),
                "-o",
                str(out),
                *extra,
            ]

        return argv

    def apply(base: Path, delta: Path, out: Path) -> Argv:
        return [cloudlet, "overlay", "apply", "-q", "--base", str(base), str(delta), "-o", str(out)]

    return [
        Method("cloudlet", "cloudlet (default level)", create(None), apply, cloudlet=True),
        Method(
            "cloudlet-max", f"cloudlet --level {max_level}", create(max_level), apply, cloudlet=True
        ),
    ]


def _zstd_patch(level: int) -> Method:
    # A 2 GiB base needs a 2 GiB window: --long=31 on both ends.
    common = ["zstd", "-q", "-f", "--long=31"]

    def encode(base: Path, mod: Path, out: Path) -> Argv:
        return [*common, f"-{level}", f"--patch-from={base}", str(mod), "-o", str(out)]

    def decode(base: Path, delta: Path, out: Path) -> Argv:
        return [*common, "-d", f"--patch-from={base}", str(delta), "-o", str(out)]

    return Method(f"zstd-patch-{level}", f"zstd --patch-from -{level}", encode, decode)


def baseline_methods() -> list[Method]:
    """xdelta3 -9, zstd --patch-from at -3 and -19, and the whole image through zstd -3."""
    xdelta = Method(
        "xdelta3-9",
        "xdelta3 -9",
        lambda base, mod, out: ["xdelta3", "-f", "-9", "-s", str(base), str(mod), str(out)],
        lambda base, delta, out: ["xdelta3", "-f", "-d", "-s", str(base), str(delta), str(out)],
    )
    whole = Method(
        "zstd-3-whole",
        "zstd -3 (whole image)",
        lambda base, mod, out: ["zstd", "-q", "-f", "-3", str(mod), "-o", str(out)],
        lambda base, delta, out: ["zstd", "-q", "-f", "-d", str(delta), "-o", str(out)],
    )
    return [xdelta, _zstd_patch(3), _zstd_patch(19), whole]
