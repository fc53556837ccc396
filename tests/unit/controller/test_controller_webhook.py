"""The alarm webhook against a real HTTP receiver: retried with backoff, bounded, in order."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cloudlet.controller.webhook import AlarmWebhook
from cloudlet.settings import AlarmSettings


class Flaky:
    """Answers 500 to the first ``fail`` POSTs, then 204; keeps what it accepted."""

    def __init__(self, fail: int) -> None:
        self.fail, self.tries, self.got = fail, 0, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.tries += 1
                ok = outer.tries > outer.fail
                if ok:
                    outer.got.append(body)
                self.send_response(204 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    f = Flaky(fail=2)
    yield f
    f.server.shutdown()
    f.server.server_close()


def _notice(n: int, state: str = "raise") -> dict[str, Any]:
    return {"alarm_id": f"a.{n}", "state": state, "entity": "site=lyon"}


def _run(hook: AlarmWebhook, notices: list[dict[str, Any]], until: Any) -> None:
    async def main() -> None:
        task = asyncio.create_task(hook.run())
        await asyncio.sleep(0)  # the task binds the loop
        hook.submit(notices)
        for _ in range(500):
            if until():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_failed_post_is_retried_and_order_is_kept(flaky: Flaky) -> None:
    settings = AlarmSettings(webhook_url=flaky.url, webhook_backoff_s=0.01, webhook_retries=3)
    hook = AlarmWebhook(settings)
    _run(hook, [_notice(1), _notice(1, "clear")], until=lambda: hook.sent == 2)
    assert [(n["alarm_id"], n["state"]) for n in flaky.got] == [("a.1", "raise"), ("a.1", "clear")]
    assert flaky.tries == 4 and hook.sent == 2 and hook.dropped == 0


def test_past_its_retries_a_notice_is_dropped_and_the_next_sent(flaky: Flaky) -> None:
    settings = AlarmSettings(webhook_url=flaky.url, webhook_backoff_s=0.01, webhook_retries=1)
    hook = AlarmWebhook(settings)
    _run(hook, [_notice(1), _notice(2)], until=lambda: hook.sent + hook.dropped == 2)
    assert [n["alarm_id"] for n in flaky.got] == ["a.2"]
    assert hook.dropped == 1


def test_a_full_queue_drops_the_newest_without_blocking(flaky: Flaky) -> None:
    flaky.fail = 0
    settings = AlarmSettings(webhook_url=flaky.url, webhook_queue=2)
    hook = AlarmWebhook(settings)

    async def main() -> None:
        hook._loop = asyncio.get_running_loop()  # queued, with nobody sending yet
        hook.submit([_notice(n) for n in range(5)])
        await asyncio.sleep(0)

    asyncio.run(main())
    assert hook.dropped == 3 and flaky.got == []
