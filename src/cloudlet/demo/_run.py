"""Run the demo end to end in a temporary directory and always clean up after it."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from cloudlet.demo._fleet import Fleet
from cloudlet.demo._scenario import TICK_S, Scenario
from cloudlet.demo._view import Display, LiveDisplay, PlainDisplay
from cloudlet.demo._world import World

DEFAULT_DURATION_S = 45.0
DEFAULT_OFFLINE_GRACE_S = 5.0


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not interrupt the cleanup that the first one started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_demo(
    console: Console,
    *,
    duration_s: float = DEFAULT_DURATION_S,
    live: bool = True,
    keep_dir: bool = False,
    stay: bool = False,
    offline_grace_s: float = DEFAULT_OFFLINE_GRACE_S,
) -> Path:
    """Start a controller and three sites, run the story, stop everything.

    Args:
        console: where the dashboard or the progress lines go.
        duration_s: about how long the story takes; the watching phases share it,
            the steps that wait for the system take what they need.
        live: a Rich live dashboard; otherwise plain timestamped lines.
        keep_dir: keep the working directory (logs, databases) afterwards.
        stay: once the story is told, keep the fleet running until Ctrl-C.
        offline_grace_s: the controller's grace period before it calls a site offline.

    Returns:
        The working directory (already removed unless ``keep_dir`` or a failure).

    Raises:
        CloudletError: a step did not happen in time; the directory is kept for its logs.
    """
    root = Path(tempfile.mkdtemp(prefix="cloudlet-demo-")).resolve()
    world = World()
    fleet = Fleet(root, offline_grace_s)
    display: Display = LiveDisplay(console, world) if live else PlainDisplay(console)
    scenario = Scenario(fleet, display, world, duration_s)
    succeeded = False
    try:
        scenario.run()
        if stay:
            _stay(scenario)
        succeeded = True
    finally:
        try:
            display.close(world)
        finally:
            with _sigint_ignored():
                scenario.close()
                leftovers = fleet.stop()
        console.print(
            "Stopped the agents (and their workloads), the relays and the controller.",
            highlight=False,
        )
        for line in leftovers:
            console.print(f"[yellow]warning:[/] killed a leftover process: {line}", highlight=False)
        if keep_dir or not succeeded:
            console.print(f"Logs and state kept in {root}", highlight=False)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return root


def _stay(scenario: Scenario) -> None:
    ctl = scenario.fleet.controller
    dashboard = f" The dashboard stays at {ctl.url}/ui." if ctl is not None else ""
    scenario.say(
        f"The story is over; the fleet keeps running.{dashboard} Press Ctrl-C to stop and clean up."
    )
    try:
        while True:
            scenario.tick()
            time.sleep(TICK_S)
    except KeyboardInterrupt:
        return
