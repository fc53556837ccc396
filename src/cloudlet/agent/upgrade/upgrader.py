"""The agent's side of an upgrade: follow the desired agent version, fetch and install
it beside the running one, stage the trial and exit into it; at start, commit a trial
of this version and report how the last one ended.

A target is acted on when it names another version than the running one and that
version has not failed here since the target last changed. The wheel is fetched by
HTTP range (resumed after a cut or a restart) and checked against the size and blake3
digest the desired state gives; a version the controller holds no package of must be
an install the site holds (the way back of a rollback). Every step that decides
something is an ``agent.upgrade`` event in the outbox (``staged``, ``upgraded``,
``failed``), so it reaches the controller also after an outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cloudlet import __version__
from cloudlet._digest import file_blake3
from cloudlet.agent import desired, outbox
from cloudlet.agent._wait import Backoff, sleep_or
from cloudlet.agent.fetch import download
from cloudlet.agent.store import Store, set_meta
from cloudlet.agent.upgrade import installs, record
from cloudlet.errors import (
    AuthError,
    ConfigError,
    ControllerUnreachableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    SyncError,
)
from cloudlet.schemas import EventKind
from cloudlet.schemas.sync import AgentTarget

log = logging.getLogger(__name__)

# Meta keys.
#: The outcome (trial id) last reported, so that each is reported once.
REPORTED = "upgrade_reported"
#: A version that failed here: not tried again until the target names another.
BLOCKED = "upgrade_blocked"
#: The version an agent without a supervisor last said it cannot move to (once each:
#: not a block, so that the same agent run supervised later does move).
TOLD_UNSUPERVISED = "upgrade_told_unsupervised"
#: The data of the last agent.upgrade event, with its time (for the local API).
LAST = "upgrade_last"
#: The wheel being fetched: its digest and the bytes of it held.
FETCHING = "upgrade_fetching"

#: How often the target is looked at again when nothing wakes the upgrader.
RECHECK_S = 60.0


class Upgrader:
    """Moves one site's agent to its target version, with a supervisor's help.

    Args:
        store: the agent's store (desired target, outbox, meta).
        data_dir: the agent's data directory (installs and the upgrade record).
        deadline_s: how long a new agent has to commit its trial.
        supervised: whether a supervisor runs this agent (nothing to restart into otherwise).
        remote: the controller's URL and the site's credential, once known.
        switch: stops the agent so that the supervisor starts the staged install.
    """

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        *,
        deadline_s: float,
        supervised: bool,
        remote: Callable[[], tuple[str, str] | None],
        switch: Callable[[], None],
        backoff_max_s: float = 30.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.store = store
        #: Verifies the controller and the site-local API (the pinned CA), and presents
        #: the site's certificate.
        self.verify = verify
        self.data_dir = data_dir
        self.deadline_s = deadline_s
        self.supervised = supervised
        self.remote = remote
        self.switch = switch
        self.backoff_max_s = backoff_max_s
        self.wake = asyncio.Event()
        self.last_error: str | None = None
        self._switching = False
        #: The trial this agent is on until it commits it (None: not on trial). An agent
        #: on trial leaves the workloads running whenever it exits: if it exits, the
        #: previous agent comes back and adopts them.
        self.trial = self._own_trial() if supervised else None

    def _own_trial(self) -> record.Trial | None:
        trial = record.read(self.data_dir).trial
        if trial is None or trial.state != record.RUNNING or trial.to_version != __version__:
            return None
        return trial

    def status(self) -> dict[str, Any]:
        """What the site-local API shows: supervision, target, the last outcome."""
        target = desired.agent_target(self.store)
        last = self.store.get_meta(LAST)
        return {
            "supervised": self.supervised,
            "target": target.version if target else None,
            "blocked": self.store.get_meta(BLOCKED),
            "last": json.loads(last) if last else None,
            "last_error": self.last_error,
        }

    # -- at start -----------------------------------------------------------------------

    async def settle(self, local_api: str) -> None:
        """Before sync starts: commit this agent's trial once its site-local API answers
        (the caller ran a reconcile pass first), then report the last trial's outcome
        unless it was reported already.

        Raises:
            ConfigError: this agent is on trial and its local API does not answer, or
                the supervisor gave the trial up meanwhile (the agent must exit).
        """
        trial = self.trial
        if trial is not None:
            await _check_serving(local_api, self.verify)
            if not await asyncio.to_thread(self._commit, trial):
                raise ConfigError(f"the supervisor gave up the trial of agent {__version__}")
            self.trial = None
            log.info(
                "agent %s is healthy: upgrade from %s committed", __version__, trial.from_version
            )
        self._report_outcome()

    def _commit(self, trial: record.Trial) -> bool:
        with record.update(self.data_dir) as rec:
            if rec.trial is None or rec.trial.id != trial.id:
                return False
            rec.current = trial.to_version
            rec.outcome = record.Outcome(
                trial.id, record.UPGRADED, trial.from_version, trial.to_version
            )
            rec.trial = None
        # The way back of a rollback stays: the version this one replaced.
        installs.remove_others(self.data_dir, {trial.to_version, trial.from_version})
        return True

    def _report_outcome(self) -> None:
        outcome = record.read(self.data_dir).outcome
        if outcome is None or self.store.get_meta(REPORTED) == outcome.id:
            return
        with self.store.transaction() as conn:
            self._event(conn, outcome.event_data())
            set_meta(conn, REPORTED, outcome.id)
            if outcome.phase == record.FAILED:
                set_meta(conn, BLOCKED, outcome.to_version)
        if outcome.phase == record.FAILED:
            log.warning(
                "the upgrade to agent %s failed and was rolled back: %s",
                outcome.to_version,
                outcome.reason,
            )

    # -- following the target -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Act on the target whenever it changes (``wake``) or every RECHECK_S."""
        backoff = Backoff(self.backoff_max_s)
        while not stop.is_set() and not self._switching:
            try:
                retry = await self._step()
            except Exception:
                log.exception("the agent upgrade step failed unexpectedly")
                retry = True
            if self._switching:
                return
            if retry:
                await sleep_or(stop, backoff.next(), self.wake)
            else:
                backoff.reset()
                await sleep_or(stop, RECHECK_S, self.wake)

    async def _step(self) -> bool:
        """One look at the target; True if a transient failure wants a retry soon."""
        target = desired.agent_target(self.store)
        blocked = self.store.get_meta(BLOCKED)
        if blocked is not None and (target is None or target.version != blocked):
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM meta WHERE key = ?", (BLOCKED,))
            blocked = None
        if target is None or target.version in (__version__, blocked):
            return False
        version = target.version
        if not self.supervised:
            if self.store.get_meta(TOLD_UNSUPERVISED) != version:
                self._fail(
                    version,
                    "this agent runs without a supervisor (cloudlet agent supervise), so it "
                    "cannot restart into another version",
                    remember=TOLD_UNSUPERVISED,
                )
            return False
        try:
            python = installs.python_of(self.data_dir, version, record.read(self.data_dir))
        except InvalidInputError as exc:
            self._fail(version, str(exc))
            return False
        if python is None:
            if target.digest is None:
                self._fail(
                    version,
                    f"the controller holds no package of agent {version} and this site "
                    "holds no install of it",
                )
                return False
            try:
                wheel = await self._fetch(target)
            except (SyncError, AuthError, NotFoundError) as exc:
                self.last_error = f"fetching agent {version}: {exc}"
                log.info("%s; retrying later", self.last_error)
                return True  # what arrived is kept: the next try resumes
            except IntegrityError as exc:
                self._discard_download()
                self._fail(version, str(exc))
                return False
            try:
                python = await asyncio.to_thread(installs.create, self.data_dir, version, wheel)
            except (InvalidInputError, OSError) as exc:
                self._fail(version, f"cannot install agent {version}: {exc}")
                return False
            finally:
                self._discard_download()
            self.last_error = None
        reported = await asyncio.to_thread(installs.reported_version, python)
        if reported != version:
            self._fail(version, f"the install of agent {version} says it is {reported!r}")
            return False
        if desired.agent_target(self.store) != target:
            return True  # the target moved on while this one was fetched
        self._stage(version)
        return False

    async def _fetch(self, target: AgentTarget) -> Path:
        """Download the target's wheel (resuming a partial one); check size and digest.

        Raises:
            ControllerUnreachableError, AuthError, NotFoundError, SyncError: try later.
            IntegrityError: the bytes are not the package the desired state names.
        """
        assert target.digest is not None
        remote = self.remote()
        if remote is None:
            raise ControllerUnreachableError("this site is not enrolled yet")
        url, credential = remote
        part = record.versions_dir(self.data_dir) / "downloads" / f"{target.digest}.whl"
        held = json.loads(self.store.get_meta(FETCHING) or "{}")
        offset = held.get("offset", 0) if held.get("digest") == target.digest else 0

        def progress(fetched: int, _total: int | None) -> None:
            self.store.set_meta(FETCHING, json.dumps({"digest": target.digest, "offset": fetched}))

        blob = f"{url.rstrip('/')}/v1/agent-packages/{quote(target.version, safe='')}/blob"
        async with httpx.AsyncClient(
            timeout=30.0, follow_redirects=True, verify=self.verify
        ) as http:
            size = await download(http, blob, credential, part, offset, on_progress=progress)
        digest = await asyncio.to_thread(file_blake3, part)
        if size != target.size or digest != target.digest:
            raise IntegrityError(
                f"the package is {size} bytes with digest {digest}, not the {target.size} "
                f"bytes with digest {target.digest} the desired state names"
            )
        return part

    def _discard_download(self) -> None:
        downloads = record.versions_dir(self.data_dir) / "downloads"
        for part in downloads.glob("*.whl") if downloads.is_dir() else ():
            part.unlink(missing_ok=True)
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (FETCHING,))

    def _stage(self, version: str) -> None:
        trial = record.Trial(uuid.uuid4().hex, __version__, version, self.deadline_s)
        with record.update(self.data_dir) as rec:
            rec.trial = trial
        with self.store.transaction() as conn:
            self._event(conn, {"phase": record.STAGED, "from": __version__, "to": version})
        log.info("agent %s staged; restarting into it (deadline %gs)", version, self.deadline_s)
        self._switching = True
        self.switch()

    def _fail(self, version: str, reason: str, remember: str = BLOCKED) -> None:
        """Report that ``version`` will not run here, and remember it under ``remember``
        (BLOCKED: not tried again until the target names another version)."""
        with self.store.transaction() as conn:
            self._event(
                conn, {"phase": record.FAILED, "from": __version__, "to": version, "reason": reason}
            )
            set_meta(conn, remember, version)
        log.warning("not upgrading to agent %s: %s", version, reason)

    @staticmethod
    def _event(conn: Any, data: dict[str, Any]) -> None:
        outbox.append(conn, EventKind.AGENT_UPGRADE, data=data)
        set_meta(conn, LAST, json.dumps({**data, "at": record.now_iso()}, sort_keys=True))


async def _check_serving(local_api: str, verify: ssl.SSLContext | bool = True) -> None:
    """Raise ConfigError unless this agent's site-local API answers as this version."""
    try:
        async with httpx.AsyncClient(timeout=5.0, verify=verify) as http:
            answer = await http.get(f"{local_api}/healthz")
        version = answer.json().get("agent_version") if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"the site-local API does not answer: {exc}") from exc
    if version != __version__:
        raise ConfigError(f"the site-local API answers {answer.status_code}, version {version}")
