"""Applying desired-state documents by cursor: snapshots, deltas, duplicates, gaps."""

from __future__ import annotations

import pytest
from agent_fakes import doc, instance

from cloudlet.agent import desired
from cloudlet.agent.desired import CursorGapError
from cloudlet.agent.store import Store
from cloudlet.schemas import DesiredState, InstanceOrigin
from cloudlet.schemas.sync import AgentTarget


def states(store: Store) -> dict[str, tuple[str, int]]:
    return {i: (e.state.value, e.revision) for i, e in desired.entries(store).items()}


def test_snapshot_stores_everything_and_sets_cursor(store: Store) -> None:
    assert desired.apply_doc(store, doc(5, [instance("a", revision=3), instance("b")], full=True))
    assert store.cursor == 5
    assert states(store) == {"a": ("running", 3), "b": ("running", 1)}


def test_snapshot_replaces_and_deletes_what_it_omits(store: Store) -> None:
    desired.apply_doc(store, doc(5, [instance("a"), instance("b")], full=True))
    assert desired.apply_doc(store, doc(9, [instance("b", state="stopped", revision=8)], full=True))
    assert store.cursor == 9
    assert states(store) == {"a": ("deleted", 9), "b": ("stopped", 8)}


def test_snapshot_keeps_site_origin_entries(store: Store) -> None:
    desired.apply_doc(store, doc(1, [instance("a")], full=True))
    with store.transaction() as conn:
        conn.execute("UPDATE desired SET origin = ? WHERE id = 'a'", (InstanceOrigin.SITE.value,))
    desired.apply_doc(store, doc(2, [], full=True))
    assert desired.entries(store)["a"].state is DesiredState.RUNNING


def test_identical_snapshot_changes_nothing(store: Store) -> None:
    desired.apply_doc(store, doc(5, [instance("a")], full=True))
    assert not desired.apply_doc(store, doc(6, [instance("a")], full=True))
    assert store.cursor == 6


def test_snapshot_is_authoritative_even_with_older_revisions(store: Store) -> None:
    # A controller restored from a backup may send lower revisions in its snapshot.
    desired.apply_doc(store, doc(10, [instance("a", revision=10)], full=True))
    assert desired.apply_doc(store, doc(4, [instance("a", state="stopped", revision=3)], full=True))
    assert states(store) == {"a": ("stopped", 3)}
    assert store.cursor == 4


def test_delta_after_snapshot_applies_by_instance(store: Store) -> None:
    desired.apply_doc(
        store, doc(5, [instance("a", revision=2), instance("b", revision=5)], full=True)
    )
    delta = doc(7, [instance("a", state="stopped", revision=6), instance("c", revision=7)], since=5)
    assert desired.apply_doc(store, delta)
    assert store.cursor == 7
    assert states(store) == {"a": ("stopped", 6), "b": ("running", 5), "c": ("running", 7)}


def test_delta_deletion(store: Store) -> None:
    desired.apply_doc(store, doc(1, [instance("a")], full=True))
    desired.apply_doc(store, doc(2, [instance("a", state="deleted", revision=2)], since=1))
    assert states(store) == {"a": ("deleted", 2)}


def test_duplicate_and_older_entries_are_ignored(store: Store) -> None:
    desired.apply_doc(store, doc(5, [instance("a", state="stopped", revision=5)], full=True))
    # Same revision again (a retried answer) and an older one: neither wins.
    assert not desired.apply_doc(store, doc(6, [instance("a", revision=5)], since=5))
    assert not desired.apply_doc(store, doc(7, [instance("a", revision=4)], since=6))
    assert states(store) == {"a": ("stopped", 5)}
    assert store.cursor == 7


def test_delta_not_starting_at_cursor_is_a_gap(store: Store) -> None:
    desired.apply_doc(store, doc(5, [instance("a")], full=True))
    with pytest.raises(CursorGapError, match="starts at revision 3"):
        desired.apply_doc(store, doc(8, [instance("a", state="stopped", revision=8)], since=3))
    assert store.cursor == 5
    assert states(store) == {"a": ("running", 1)}


def test_first_delta_must_start_at_zero(store: Store) -> None:
    with pytest.raises(CursorGapError):
        desired.apply_doc(store, doc(3, [instance("a")], since=2))
    assert desired.apply_doc(store, doc(3, [instance("a")], since=0))
    assert store.cursor == 3


def test_forget_drops_only_deleted_entries(store: Store) -> None:
    desired.apply_doc(store, doc(2, [instance("a", state="deleted"), instance("b")], full=True))
    desired.forget(store, ["a", "b"])
    assert set(desired.entries(store)) == {"b"}


def test_the_agent_target_is_whatever_the_last_document_said(store: Store) -> None:
    assert desired.agent_target(store) is None
    target = AgentTarget(version="0.1.1", digest="ab" * 32, size=10)
    desired.apply_doc(store, doc(1, [], full=True).model_copy(update={"agent": target}))
    assert desired.agent_target(store) == target
    desired.apply_doc(store, doc(2, [], since=1))  # always complete: none any more
    assert desired.agent_target(store) is None
