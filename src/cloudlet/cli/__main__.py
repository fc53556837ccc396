"""`python -m cloudlet.cli`: the same as the `cloudlet` command."""

from __future__ import annotations

from cloudlet.cli.main import main

main()
