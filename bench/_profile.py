"""Sampling profiles of a running process with py-spy, summarised as text.

``record`` samples a process tree for a while (``py-spy record --format raw``:
one collapsed stack per line with its sample count); ``top`` reads that back as
the functions that took the most samples, inclusive (with what they call) and
self (their own code), which is what a closing note or a README can quote.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` and its children for ``seconds``; wait() on the answer."""
    spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv/bin/py-spy")
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    args = [spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
    args += ["-d", str(max(1, int(seconds))), "-r", str(rate), "--format", "raw", "-o", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top(path: Path, n: int = 15, only: str = "cloudlet") -> dict[str, list[tuple[float, str]]]:
    """The ``n`` functions with the most samples: inclusive ones whose frame
    mentions ``only`` (our code), and self time of any code."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return {"inclusive": [], "self": []}

    def pct(items: list[tuple[str, int]]) -> list[tuple[float, str]]:
        return [(round(100 * c / total, 1), f) for f, c in items]

    ours = [(f, c) for f, c in inclusive.most_common() if only in f]
    return {"inclusive": pct(ours[:n]), "self": pct(own.most_common(n))}
