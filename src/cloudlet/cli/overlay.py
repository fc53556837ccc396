"""`cloudlet overlay ...`: create, inspect, verify and apply VM overlays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import (
    ago,
    emit_json,
    err_console,
    human_bytes,
    progress_bars,
    show,
    show_one,
)
from cloudlet.cli._upload import DEFAULT_CHUNK, as_bar, upload_file

# cloudlet.synthesis (numpy and all) is imported by the commands that use it, so that
# `overlay list` starts as fast as any list command.

app = typer.Typer(help="Create, inspect, verify and apply VM overlays.", no_args_is_help=True)


@app.command()
def create(
    base: Path = typer.Option(..., "--base", help="Base disk image (raw or qcow2)."),
    modified: Path = typer.Option(..., "--modified", help="Modified disk image (raw or qcow2)."),
    out: Path = typer.Option(..., "-o", "--output", help="Overlay file to write."),
    memory_base: Path | None = typer.Option(None, "--memory-base", help="Base memory image."),
    memory: Path | None = typer.Option(None, "--memory", help="Modified memory image (raw)."),
    device_state: Path | None = typer.Option(
        None,
        "--device-state",
        help="QEMU device state saved with --memory (a suspended VM's vmstate): the "
        "overlay then resumes the VM instead of booting it.",
    ),
    level: int | None = typer.Option(
        None,
        "--level",
        min=1,
        max=19,
        help="Compression level 1..19 (zstd levels; 19 is the smallest and slowest; default 3).",
    ),
    threads: int | None = typer.Option(None, "--threads", help="Compression threads."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Write the overlay that turns BASE (+ memory base) into MODIFIED (+ memory)."""
    from cloudlet.synthesis import DEFAULT_LEVEL, create_overlay

    with progress_bars(quiet) as progress:
        s = create_overlay(
            base,
            modified,
            out,
            memory_base=memory_base,
            memory=memory,
            device_state=device_state,
            level=DEFAULT_LEVEL if level is None else level,
            threads=threads,
            force=force,
            progress=progress,
        )
    summary = {
        "overlay": str(s.path),
        "overlay_size": s.overlay_size,
        "disk_size": s.disk_size,
        "memory_size": s.memory_size,
        "resumable": device_state is not None,
        "chunks": s.chunks,
        "literal_bytes": s.literal_bytes,
        "segments": s.segments,
        "seconds": round(s.seconds, 3),
    }
    if as_json:
        emit_json(summary)
    else:
        err_console.print(
            f"wrote {s.path}: {human_bytes(s.overlay_size)} "
            f"({s.segments} segments, {human_bytes(s.literal_bytes)} literal) "
            f"in {s.seconds:.1f}s",
            highlight=False,
        )


@app.command()
def capture(
    disk: Path = typer.Option(
        ..., "--disk", help="The app VM's disk (raw or qcow2), changed in place."
    ),
    out: Path = typer.Option(
        ..., "-o", "--output", help="RAM file to write; the device state goes to OUTPUT.vmstate."
    ),
    memory_mib: int = typer.Option(..., "--memory", help="Guest RAM in MiB (the app's memory)."),
    guest_port: int | None = typer.Option(
        None, "--guest-port", help="The service's port: capture once it answers HTTP."
    ),
    console_marker: str | None = typer.Option(
        None, "--console-marker", help="Capture once the serial console shows this (a base VM)."
    ),
    vcpus: int = typer.Option(1, "--vcpus", help="vCPUs (the app's)."),
    kernel: Path | None = typer.Option(None, "--kernel", help="Kernel to boot directly."),
    initrd: Path | None = typer.Option(None, "--initrd", help="Its initramfs."),
    append: str | None = typer.Option(None, "--append", help="Its command line."),
    accel: str = typer.Option("auto", "--accel", help="auto, kvm or tcg: what sites will use."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
) -> None:
    """Boot an app VM, suspend it once ready, and keep its RAM and device state.

    Then: cloudlet overlay create --base BASE --modified DISK --memory OUTPUT
    --device-state OUTPUT.vmstate. Sites resume the VM instead of booting it.
    """
    from cloudlet.compute.base import WorkloadSpec
    from cloudlet.compute.qemu import VM_APPEND, VM_INITRD, VM_KERNEL
    from cloudlet.compute.qemu.snapshot import capture as capture_vm
    from cloudlet.errors import InvalidInputError

    if (guest_port is None) == (console_marker is None):
        raise InvalidInputError("give one of --guest-port and --console-marker")
    env = {
        key: str(value.resolve() if isinstance(value, Path) else value)
        for key, value in ((VM_KERNEL, kernel), (VM_INITRD, initrd), (VM_APPEND, append))
        if value is not None
    }
    spec = WorkloadSpec(
        "capture", guest_port=guest_port or 1, vcpus=vcpus,
        memory_mib=memory_mib, disk_image=disk.resolve(), env=env,
    )  # fmt: skip
    with err_console.status("booting the VM and waiting until it is ready"):
        snap = capture_vm(
            spec, out.resolve(), console_marker=console_marker, timeout=timeout, accel=accel
        )
    err_console.print(
        f"wrote {snap.memory} and {snap.device_state}; {snap.disk} is the disk to diff",
        highlight=False,
    )


@app.command()
def info(
    overlay: Path = typer.Argument(..., help="Overlay file."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Sizes, chunk counts per kind, compression ratio and base digest."""
    from cloudlet.synthesis import overlay_info

    show_one(overlay_info(overlay), as_json)


@app.command()
def verify(
    overlay: Path = typer.Argument(..., help="Overlay file."),
    as_json: bool = typer.Option(False, "--json", help="Print the overlay info as JSON."),
) -> None:
    """Check every digest of an overlay (header, manifest root, segments)."""
    from cloudlet.synthesis import verify_overlay

    data = verify_overlay(overlay)
    if as_json:
        emit_json(data)
    else:
        err_console.print(f"{overlay}: ok ({data['segments']} segments)", highlight=False)


@app.command()
def apply(
    overlay: Path = typer.Argument(..., help="Overlay file."),
    base: Path = typer.Option(..., "--base", help="The raw base disk image."),
    out: Path = typer.Option(..., "-o", "--output", help="Disk image to write."),
    fmt: str = typer.Option("raw", "--format", help="raw (sparse) or qcow2 (backed by BASE)."),
    memory_base: Path | None = typer.Option(None, "--memory-base", help="Base memory image."),
    memory_out: Path | None = typer.Option(None, "--memory-out", help="Memory image to write."),
    device_state_out: Path | None = typer.Option(
        None, "--device-state-out", help="Device state to write (needs --memory-out)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Decompression threads."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Rebuild the modified image(s) from BASE and OVERLAY (checked before writing)."""
    from cloudlet.synthesis import apply_overlay

    with progress_bars(quiet) as progress:
        s = apply_overlay(
            base,
            overlay,
            out,
            fmt=fmt,
            memory_base=memory_base,
            memory_out=memory_out,
            device_state_out=device_state_out,
            threads=threads,
            force=force,
            progress=_chunkprogress_bars(progress),
        )
    written = [str(p) for p in (s.disk, s.memory, s.device_state) if p is not None]
    err_console.print("wrote " + ", ".join(written), highlight=False)


def _chunkprogress_bars(
    progress: Callable[[str, int, int], None] | None,
) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    from cloudlet.synthesis.format import CHUNK_SIZE

    last = [0]

    def update(done: int, total: int) -> None:
        progress("apply", (done - last[0]) * CHUNK_SIZE, total * CHUNK_SIZE)
        last[0] = done

    return update


OVERLAY_COLUMNS = [
    ("NAME", lambda o: o["name"]),
    ("ID", lambda o: o["id"][:16]),
    ("BASE", lambda o: o["base"][:16]),
    ("SIZE", lambda o: human_bytes(o["size"])),
    ("DISK", lambda o: human_bytes(o["disk_size"])),
    ("MEMORY", lambda o: human_bytes(o["memory_size"]) if o["memory_size"] else "-"),
    ("PROJECT", lambda o: o["project"]),
    ("CREATED", lambda o: ago(o["created_at"])),
]


@app.command("upload")
def upload(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Overlay file."),
    name: str = typer.Option(..., "--name", "-n", help="Overlay name in the catalog."),
    project: str | None = typer.Option(None, "--project", help="Project (default: yours)."),
    chunk_mib: int = typer.Option(
        DEFAULT_CHUNK >> 20, "--chunk-size", min=1, max=1024, help="MiB per request."
    ),
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Upload an overlay (its base image first) in resumable chunks."""
    from cloudlet.synthesis import read_manifest

    root = read_manifest(file).root_digest.hex()
    with progress_bars(quiet) as progress:
        overlay, resumed = upload_file(
            ctx_of(ctx).client(),
            file,
            "overlay",
            name,
            digest=root,
            project=project,
            chunk_size=chunk_mib << 20,
            progress=as_bar(progress),
        )
    if as_json:
        emit_json(overlay)
        return
    note = f" (resumed at {human_bytes(resumed)})" if resumed else ""
    err_console.print(
        f"overlay {overlay['name']}: {human_bytes(overlay['size'])}, id {overlay['id']}, "
        f"base {overlay['base'][:16]}{note}",
        highlight=False,
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    project: str | None = typer.Option(None, "--project", help="Only this project."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Overlays in the catalog."""
    rows = ctx_of(ctx).client().get("/v1/overlays", project=project)
    show(rows, OVERLAY_COLUMNS, output_format(output, as_json))


@app.command("sign")
def sign(
    ctx: typer.Context,
    overlay: str = typer.Argument(..., help="Overlay file, or its id, name or id prefix."),
    key: str = typer.Option(..., "--key", "-k", help="Publisher key name or key file."),
    as_json: bool = JsonOpt,
) -> None:
    """Sign an overlay's root digest and upload the signature (checked by the controller)."""
    from cloudlet.cli._signing import sign_artifact
    from cloudlet.schemas.artifacts import ArtifactKind

    stored = sign_artifact(ctx_of(ctx).client(), ArtifactKind.OVERLAY, overlay, key)
    if as_json:
        emit_json(stored)
        return
    err_console.print(
        f"overlay {stored['digest']} signed by {stored['key_name']} ({stored['kid']})",
        highlight=False,
    )
