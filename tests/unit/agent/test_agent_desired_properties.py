"""Property: whatever the network does to answers (lost, repeated, stale), the site's
desired state converges on the controller's once one honest pull gets through."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agent_fakes import doc, instance
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlet.agent import desired
from cloudlet.agent.desired import CursorGapError
from cloudlet.agent.store import Store
from cloudlet.schemas import DesiredInstance, DesiredStateDoc


class Controller:
    """A minimal controller: per-instance revisions, deltas since a cursor."""

    def __init__(self) -> None:
        self.revision = 0
        self.entries: dict[str, DesiredInstance] = {}

    def change(self, instance_id: str, state: str) -> None:
        self.revision += 1
        self.entries[instance_id] = instance(instance_id, state=state, revision=self.revision)

    def answer(self, since: int) -> DesiredStateDoc:
        if since == 0:
            live = [e for e in self.entries.values() if e.desired_state.value != "deleted"]
            return doc(self.revision, live, full=True)
        changed = [e for e in self.entries.values() if e.revision > since]
        return doc(self.revision, changed, since=since)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("change"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["running", "stopped", "deleted"]),
        ),
        st.tuples(st.just("pull"), st.booleans(), st.booleans()),  # (lost, then replayed)
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_site_converges_on_the_controller(script: list[tuple[object, ...]]) -> None:
    ctl = Controller()
    answered: list[DesiredStateDoc] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "a.db")
        force_full = False

        def pull(answer: DesiredStateDoc | None = None) -> None:
            nonlocal force_full
            since = 0 if force_full else store.cursor
            answer = answer or ctl.answer(since)
            answered.append(answer)
            try:
                desired.apply_doc(store, answer)
                force_full = False
            except CursorGapError:
                force_full = True

        for op in script:
            if op[0] == "change":
                ctl.change(str(op[1]), str(op[2]))
            else:
                lost, replay = op[1], op[2]
                if lost:
                    answered.append(ctl.answer(store.cursor))  # computed, never arrives
                elif replay and answered:
                    pull(answered[0])  # a stale answer shows up late
                else:
                    pull()
        pull()  # one honest exchange...
        if force_full:
            pull()  # ...or two, when the last one revealed a gap
        held = {
            i: e.state.value
            for i, e in desired.entries(store).items()
            if e.state.value != "deleted"
        }
        want = {
            i: e.desired_state.value
            for i, e in ctl.entries.items()
            if e.desired_state.value != "deleted"
        }
        assert held == want
        assert store.cursor == ctl.revision
        store.close()
