"""The pull loop against a scripted controller: cursor use, gaps answered by a snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_fakes import doc, instance

from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.agent.sync import Syncer
from cloudlet.compute import FakeDriver
from cloudlet.errors import AuthError, ControllerUnreachableError
from cloudlet.schemas import DesiredStateDoc


class ScriptedClient:
    """Answers pulls from a script; sets ``stop`` when the script runs out."""

    def __init__(self, answers: list[object], stop: asyncio.Event) -> None:
        self.answers = answers
        self.stop = stop
        self.sinces: list[int] = []
        self.bytes_sent = self.bytes_received = 0
        self.credential = "c"

    async def pull(self, since: int, wait: float) -> DesiredStateDoc | None:
        self.sinces.append(since)
        if not self.answers:
            self.stop.set()
            return None
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]


def run_pulls(store: Store, tmp_path: Path, answers: list[object]) -> tuple[Syncer, list[int]]:
    async def main() -> tuple[Syncer, list[int]]:
        stop = asyncio.Event()
        client = ScriptedClient(answers, stop)
        syncer = Syncer(
            store,
            client,  # type: ignore[arg-type]
            Reconciler(store, FakeDriver()),
            data_dir=tmp_path,
            poll_wait_s=1,
            report_interval_s=1,
            backoff_max_s=0.01,
        )
        await asyncio.wait_for(syncer.pull_loop(stop), 30)
        return syncer, client.sinces

    return asyncio.run(main())


def test_first_pull_sends_zero_then_follows_the_cursor(store: Store, tmp_path: Path) -> None:
    answers = [
        doc(4, [instance("a")], full=True),
        None,
        doc(6, [instance("b", revision=6)], since=4),
    ]
    syncer, sinces = run_pulls(store, tmp_path, answers)
    assert sinces == [0, 4, 4, 6]
    assert store.cursor == 6
    assert syncer.status.last_pull_at is not None
    assert syncer.status.reachable is True


def test_gap_is_answered_by_pulling_a_snapshot(store: Store, tmp_path: Path) -> None:
    answers = [
        doc(4, [instance("a")], full=True),
        doc(9, [instance("a", state="stopped", revision=9)], since=7),  # skips 4..7
        doc(9, [instance("a", state="stopped", revision=9)], full=True),
    ]
    _, sinces = run_pulls(store, tmp_path, answers)
    assert sinces == [0, 4, 0, 9]
    assert store.cursor == 9


def test_unreachable_backs_off_and_retries(store: Store, tmp_path: Path) -> None:
    answers = [ControllerUnreachableError("down"), doc(1, [], full=True)]
    syncer, sinces = run_pulls(store, tmp_path, answers)
    assert sinces == [0, 0, 1]
    assert syncer.status.reachable is True


def test_refused_credential_pauses_pulls_until_accepted_again(store: Store, tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], bool]:
        stop = asyncio.Event()
        client = ScriptedClient([AuthError("401 revoked"), doc(3, [], full=True)], stop)
        syncer = Syncer(
            store,
            client,  # type: ignore[arg-type]
            Reconciler(store, FakeDriver()),
            data_dir=tmp_path,
            poll_wait_s=1,
            report_interval_s=1,
            backoff_max_s=60,
        )
        loop = asyncio.create_task(syncer.pull_loop(stop))
        while not syncer.status.revoked:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        paused = list(client.sinces)  # no pulls while refused
        was_revoked = syncer.status.revoked
        # What the report loop does when the controller accepts the credential again.
        syncer.status.revoked = False
        syncer.pull_wake.set()
        await asyncio.wait_for(loop, 30)
        return paused, client.sinces, was_revoked

    paused, sinces, was_revoked = asyncio.run(main())
    assert was_revoked and paused == [0]
    assert sinces == [0, 0, 3]
    assert store.cursor == 3


def test_a_bug_in_the_loop_does_not_end_it(store: Store, tmp_path: Path) -> None:
    answers = [RuntimeError("bug"), doc(2, [], full=True)]
    _, sinces = run_pulls(store, tmp_path, answers)
    assert sinces == [0, 0, 2]
    assert store.cursor == 2
