"""Human-readable accounts of where an instance is and how it got there."""

from __future__ import annotations

from typing import Any

from cloudlet.cli._output import console


def print_placement(explanation: dict[str, Any] | None) -> None:
    """The chosen site's scores, then every rejected site with the filter that dropped it."""
    if not explanation:
        return
    if why := explanation.get("why"):
        console.print(f"[bold]moved[/]: {why}")
    console.print("[bold]placement[/]:")
    for i, site in enumerate(explanation.get("ranked", []), 1):
        weighers = ", ".join(
            f"{name} {w['raw']:g}->{w['weighted']:.2f}" for name, w in site["weighers"].items()
        )
        mark = "chosen" if i == 1 else f"#{i}"
        console.print(f"  {mark} {site['name']} score {site['score']:.3f} ({weighers})")
    for rej in explanation.get("rejected", []):
        console.print(f"  rejected {rej['name']} by {rej['filter']}: {rej['reason']}")


def print_handoff(h: dict[str, Any]) -> None:
    phases = ", ".join(f"{k} {v:g}s" for k, v in h["phases"].items()) or "-"
    console.print(
        f"handoff [bold]{h['instance']}[/] {h['source']} -> {h['destination']} "
        f"({h['kind']}): {h['phase']}, {h['bytes']} bytes, epoch {h['epoch']}; {phases}"
    )
