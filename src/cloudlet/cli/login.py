"""`cloudlet login` and `cloudlet logout`: sign in as a user; the token is kept for
the controller's URL in the CLI's credentials file and used when no --token or
CLOUDLET_TOKEN is given."""

from __future__ import annotations

import typer

from cloudlet.cli._context import JsonOpt, ctx_of
from cloudlet.cli._output import console, emit_json
from cloudlet.cli._password import PasswordStdinOpt, read_password

login_app = typer.Typer()
logout_app = typer.Typer()


@login_app.command("login")
def login(
    ctx: typer.Context,
    user: str = typer.Option(..., "--user", "-u", help="Your user name."),
    project: str | None = typer.Option(
        None, "--project", "-p", help="The project to act in (needed if you have several)."
    ),
    password_stdin: bool = PasswordStdinOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Sign in: asks for the password (hidden), stores the expiring token (mode 0600)."""
    from cloudlet.cli._client import Client
    from cloudlet.cli._credentials import save_login

    password = read_password(password_stdin)
    client = Client(ctx_of(ctx).client_config(), anonymous=True)
    body: dict[str, object] = {"user": user, "password": password}
    if project is not None:
        body["project"] = project
    got = client.post("/v1/auth/tokens", body)
    path = save_login(client.url, got)
    if as_json:
        emit_json({k: v for k, v in got.items() if k != "token"} | {"credentials": str(path)})
        return
    console.print(
        f"signed in to {client.url} as [bold]{got['user']}[/]: {got['role']} of project "
        f"[bold]{got['project']}[/] until {got['expires_at']}",
        highlight=False,
    )


@logout_app.command("logout")
def logout(ctx: typer.Context) -> None:
    """Sign out: the controller ends the stored token, and it is removed from this host."""
    from cloudlet.cli._client import ApiError, Client, controller_url
    from cloudlet.cli._credentials import forget_login
    from cloudlet.errors import ControllerUnreachableError

    config = ctx_of(ctx).client_config()
    url = controller_url(config)
    gone = forget_login(url)
    if gone is None:
        console.print(f"not signed in to {url}")
        return
    from cloudlet.cli._config import ClientConfig

    client = Client(
        ClientConfig(url, gone["token"], config.controller_port, config.data_dir, config.ca_file)
    )
    try:
        client.delete("/v1/auth/tokens/current")
    except ApiError as exc:
        if exc.status != 401:  # an expired or ended token is signed out already
            raise
    except ControllerUnreachableError:
        console.print(f"{url} is unreachable: the token is forgotten here and expires there")
        return
    console.print(f"signed out of {url}")
