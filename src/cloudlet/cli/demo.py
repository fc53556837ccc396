"""`cloudlet demo`: a whole edge cloud on this machine, a site cut off and back, then cleaned up."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import typer

from cloudlet.cli._output import console

app = typer.Typer(help="Run the demo: three sites, two apps, a link cut and the catch-up.")


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


@app.callback(invoke_without_command=True)
def demo(
    duration: float | None = typer.Option(
        None,
        "--duration",
        min=10,
        help="About how long the story runs, in seconds (default 45); then exit (non-interactive).",
    ),
    keep_dir: bool = typer.Option(
        False, "--keep-dir", help="Keep the working directory (logs, databases) afterwards."
    ),
    live: bool = typer.Option(
        True, "--live/--no-live", help="Live dashboard, or plain progress lines (CI, no TTY)."
    ),
) -> None:
    """Start a controller and three agents in a temporary directory, deploy a real-time and a
    batch app, cut one site's link, show it keep serving, restore it and show it catch up.

    Without --duration on a terminal, the fleet stays up after the story until Ctrl-C.
    """
    from cloudlet.demo import DEFAULT_DURATION_S, run_demo

    live = live and console.is_terminal
    stay = duration is None and live and sys.stdin.isatty()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        run_demo(
            console,
            duration_s=duration or DEFAULT_DURATION_S,
            live=live,
            keep_dir=keep_dir,
            stay=stay,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print("[green]Demo complete.[/]")
