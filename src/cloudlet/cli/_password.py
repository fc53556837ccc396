"""Reading a password: a hidden prompt on a terminal, or the first line of stdin."""

from __future__ import annotations

import sys

import typer

from cloudlet.errors import InvalidInputError

PasswordStdinOpt = typer.Option(
    False, "--password-stdin", help="Read the password from the first line of stdin."
)


def read_password(from_stdin: bool, confirm: bool = False) -> str:
    """The password, never echoed and never taken from the command line (where other
    users could see it in the process list)."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    else:
        raise InvalidInputError("no terminal to ask the password on: pass --password-stdin")
    if not password:
        raise InvalidInputError("the password is empty")
    return password
