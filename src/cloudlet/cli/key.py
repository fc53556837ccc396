"""`cloudlet key ...`: publisher keys that sign a project's images and overlays."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import ago, emit_json, err_console, show, show_one

app = typer.Typer(help="Publisher keys: sign images and overlays.", no_args_is_help=True)

KEY_COLUMNS = [
    ("NAME", lambda k: k["name"]),
    ("PROJECT", lambda k: k["project"]),
    ("KEY ID", lambda k: k["kid"]),
    ("CREATED", lambda k: ago(k["created_at"])),
    ("REVOKED", lambda k: ago(k["revoked_at"]) if k["revoked_at"] else "-"),
]


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The key's name in its project."),
    project: str | None = typer.Option(None, "--project", help="Project (default: yours)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", dir_okay=False, help="Private key file (default: the key dir)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Make an Ed25519 key pair here and register its public half for the project."""
    from cloudlet.cli._signing import forget_key, key_path, write_key
    from cloudlet.signing import PublisherKey

    client = ctx_of(ctx).client()
    key = PublisherKey.generate()
    path = out if out is not None else key_path(name)
    write_key(key, path)  # first: a registered key whose private half was lost is no use
    body: dict[str, object] = {"name": name, "public_key": key.x}
    if project is not None:
        body["project"] = project
    try:
        registered = client.post("/v1/publisher-keys", body)
    except BaseException:
        forget_key(path)
        raise
    if as_json:
        emit_json({**registered, "private_key_file": str(path)})
        return
    err_console.print(
        f"key {registered['name']} ({registered['kid']}) registered for project "
        f"{registered['project']}; private key in {path}",
        highlight=False,
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    project: str | None = typer.Option(None, "--project", help="Only this project (admins)."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """The publisher keys of your project (admins: every project's)."""
    rows = ctx_of(ctx).client().get("/v1/publisher-keys", project=project)
    show(rows, KEY_COLUMNS, output_format(output, as_json))


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="Key id, or the key's name in --project / yours."),
    project: str | None = typer.Option(None, "--project", help="The key's project."),
    as_json: bool = JsonOpt,
) -> None:
    """Revoke a key: sites refuse its signatures from their next pull on."""
    from cloudlet.errors import NotFoundError

    client = ctx_of(ctx).client()
    keys = client.get("/v1/publisher-keys", project=project)
    match = [k for k in keys if key in (k["kid"], k["name"])]
    if len(match) != 1:
        where = f" in project {project!r}" if project else ""
        raise NotFoundError(
            f"publisher key {key!r} not found{where}"
            if not match
            else f"{key!r} names keys in several projects: give --project"
        )
    revoked = client.post("/v1/publisher-keys/revocations", {"kid": match[0]["kid"]})
    if as_json:
        emit_json(revoked)
        return
    err_console.print(f"key {revoked['name']} ({revoked['kid']}) revoked", highlight=False)


@app.command("policy")
def policy(
    ctx: typer.Context,
    project: str = typer.Argument(..., help="The project."),
    require: bool | None = typer.Option(
        None, "--require/--no-require", help="Set: sites run only signed artifacts (admins)."
    ),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Show or set whether a project's instances run only signed images and overlays."""
    client = ctx_of(ctx).client()
    path = f"/v1/projects/{project}/signing-policy"
    if require is None:
        answer = client.get(path)
    else:
        answer = client.request("PUT", path, json={"require_signatures": require})
    show_one(answer, output_format(output, as_json))
