"""Two ways to show the demo: a live Rich dashboard, or plain progress lines for CI logs."""

from __future__ import annotations

from typing import Any, Protocol

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cloudlet.demo._world import World, human_bytes, seen_ago, short_bytes

STORY_LINES = 7

_AVAILABILITY = {"online": "green", "offline": "red", "unknown": "yellow"}
_SYNC = {"in-sync": "green", "syncing": "yellow", "out-of-sync": "red"}
_STATE = {"running": "green", "failed": "red", "stopped": "dim"}


class Display(Protocol):
    def say(self, world: World, line: str) -> None: ...
    def refresh(self, world: World) -> None: ...
    def checkpoint(self, world: World) -> None: ...
    def close(self, world: World) -> None: ...


def _link(world: World, name: str) -> str:
    stats = world.links.get(name)
    if stats is None:
        return "-"
    if stats.cut:
        return "CUT"
    delay = world.delays_ms.get(name)
    return f"up +{delay:g}ms" if delay else "up"


def _table(title: str) -> Table:
    # The last column takes what the others leave (ratio); the others keep their width.
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        expand=True,
    )


def sites_table(world: World) -> Table:
    table = _table("Sites: the controller's view, and what each site's own API says")
    for col in ("site", "region", "link", "avail", "sync"):
        table.add_column(col, no_wrap=True)
    for col in ("lag", "seen", "inst", "in/out"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("site-local API", no_wrap=True, overflow="ellipsis", ratio=1)
    for s in world.sites:
        link = _link(world, s["name"])
        local = world.local.get(s["name"])
        table.add_row(
            s["name"],
            s["region"],
            Text(link, style="bold red" if link == "CUT" else "green"),
            Text(s["availability"], style=_AVAILABILITY.get(s["availability"], "")),
            Text(s["sync_status"], style=_SYNC.get(s["sync_status"], "")),
            str(s["revision_lag"]),
            seen_ago(s).removesuffix(" ago"),
            str(s.get("instances", 0)),
            f"{short_bytes(s['bytes_in'])}/{short_bytes(s['bytes_out'])}",
            Text(local.text, style="" if local.ok else "red") if local else "",
        )
    return table


def instances_table(world: World) -> Table:
    table = _table("Instances, and their latest answer to the demo asking them directly")
    for col in ("instance", "site", "origin", "state", "port"):
        table.add_column(col, no_wrap=True)
    table.add_column("answer", no_wrap=True, overflow="ellipsis", ratio=1)
    for i in world.instances:
        probe = world.probes.get(i["id"])
        state = i["actual_state"]
        endpoint = i.get("endpoint") or ""
        table.add_row(
            i["name"],
            i["site"],
            i["origin"],
            Text(state, style=_STATE.get(state, "yellow")),
            ":" + endpoint.rpartition(":")[2] if endpoint else "-",
            Text(probe.text, style="" if probe.ok else "red") if probe else "",
        )
    return table


def render(world: World) -> RenderableType:
    story = Text()
    for at, line in world.story[-STORY_LINES:]:
        story.append(f"{at:6.1f}s ", style="dim")
        story.append(line + "\n")
    title = f"cloudlet demo · {world.phase} · {world.elapsed():.0f}s"
    return Group(
        Panel(story, title=title, title_align="left"),
        sites_table(world),
        instances_table(world),
    )


class LiveDisplay:
    """A dashboard redrawn twice a second from the latest :class:`World`."""

    def __init__(self, console: Console, world: World) -> None:
        self.live = Live(
            get_renderable=lambda: render(world),
            console=console,
            refresh_per_second=2,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def say(self, world: World, line: str) -> None:
        self.live.refresh()

    def refresh(self, world: World) -> None:
        pass  # Live redraws on its own schedule

    def checkpoint(self, world: World) -> None:
        self.live.refresh()

    def close(self, world: World) -> None:
        self.live.refresh()
        self.live.stop()


def site_line(world: World, s: dict[str, Any]) -> str:
    local = world.local.get(s["name"])
    return (
        f"  site {s['name']:<10} link {_link(world, s['name']):<9} {s['availability']:<8}"
        f" {s['sync_status']:<12} lag {s['revision_lag']:<3} seen {seen_ago(s):<10}"
        f" inst {s.get('instances', 0)}  bytes {human_bytes(s['bytes_in'])}"
        f"/{human_bytes(s['bytes_out'])}" + (f"  local API: {local.text}" if local else "")
    )


def instance_line(world: World, i: dict[str, Any]) -> str:
    probe = world.probes.get(i["id"])
    return (
        f"  inst {i['name']:<18} {i['app']:<11} @ {i['site']:<9} {i['origin']:<10}"
        f" {i['actual_state']:<8}"
        f" {i.get('endpoint') or '-':<16}" + (f"  {probe.text}" if probe else "")
    )


class PlainDisplay:
    """Timestamped lines, and the state of the fleet at each checkpoint; no terminal needed."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, world: World, line: str) -> None:
        at, text = world.story[-1] if world.story else (world.elapsed(), line)
        self.console.print(f"[{at:6.1f}s] {text}", highlight=False, markup=False, soft_wrap=True)

    def refresh(self, world: World) -> None:
        pass

    def checkpoint(self, world: World) -> None:
        for s in world.sites:
            self.console.print(site_line(world, s), highlight=False, markup=False, soft_wrap=True)
        for i in world.instances:
            self.console.print(
                instance_line(world, i), highlight=False, markup=False, soft_wrap=True
            )

    def close(self, world: World) -> None:
        pass
