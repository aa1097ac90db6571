"""The sans-I/O merge: replay against the view, buffering, dedupe, ordering
(supasync.core.merge)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supasync.core.changes import Change, Op
from supasync.core.merge import CachedRow, Merger, Versioning, same_row, version_value
from supasync.repair.repairer import Capabilities, RepairConfig, choose, plan, touched_columns
from supasync.repair.rest import keyset_after, quote


def live(op: Op, new: Mapping[str, Any] | None, old: Mapping[str, Any] | None = None) -> Change:
    row = new if new is not None else old
    assert row is not None
    return Change(
        schema="public", table="t", op=op, new=new, old=old, pk=(row["id"],),
        pk_columns=("id",), commit_timestamp=None,
    )


def merger(**kw: Any) -> Merger:
    return Merger(schema="public", table="t", pk_columns=("id",), subscription="s", **kw)


def test_replay_diff_produces_insert_update_delete_with_old_from_view() -> None:
    m = merger(rows=[CachedRow((1,), {"id": 1, "v": "a"}), CachedRow((2,), {"id": 2, "v": "b"})])
    m.gap()
    out = m.replay_rows([{"id": 1, "v": "a2"}, {"id": 3, "v": "c"}])
    out += m.replay_missing({(1,), (3,)})
    out += m.finish()
    assert [(c.op, c.pk, c.origin) for c in out] == [
        ("UPDATE", (1,), "replay"), ("INSERT", (3,), "replay"), ("DELETE", (2,), "replay")
    ]
    assert out[0].old == {"id": 1, "v": "a"}
    assert out[2].old == {"id": 2, "v": "b"} and out[2].new is None
    assert (m.counts.inserted, m.counts.updated, m.counts.deleted) == (1, 1, 1)
    writes = {w.pk: w.row for w in m.take_writes()}
    assert writes == {(1,): {"id": 1, "v": "a2"}, (3,): {"id": 3, "v": "c"}, (2,): None}
    assert m.take_writes() == []


def test_identical_rows_replay_nothing_and_timestamps_compare_as_instants() -> None:
    m = merger(rows=[CachedRow((1,), {"id": 1, "at": "2026-01-01 10:00:00+00"})])
    m.gap()
    assert m.replay_rows([{"id": 1, "at": "2026-01-01T10:00:00+00:00"}]) == []
    assert same_row({"a": "2026-01-01T11:00:00+01:00"}, {"a": "2026-01-01T10:00:00Z"})


def test_live_changes_wait_for_replay_and_reflected_ones_are_dropped() -> None:
    m = merger(rows=[CachedRow((1,), {"id": 1, "v": 0})])
    m.gap()
    # Arrive during repair: both committed before the read, which therefore shows v=2.
    assert m.live(live("UPDATE", {"id": 1, "v": 1})) == []
    assert m.live(live("UPDATE", {"id": 1, "v": 2})) == []
    # Committed after the read.
    assert m.live(live("UPDATE", {"id": 1, "v": 3})) == []
    replayed = m.replay_rows([{"id": 1, "v": 2}])
    drained = m.finish()
    assert [c.new for c in replayed] == [{"id": 1, "v": 2}]
    assert [(c.origin, c.new, c.old) for c in drained] == [
        ("live", {"id": 1, "v": 3}, {"id": 1, "v": 2})
    ]


def test_versions_drop_stale_and_duplicate_live_changes() -> None:
    m = merger(versioning=Versioning("ver"), rows=[CachedRow((1,), {"id": 1, "ver": 5}, 5)])
    assert m.live(live("UPDATE", {"id": 1, "ver": 4})) == []  # older
    assert m.live(live("UPDATE", {"id": 1, "ver": 5})) == []  # already held
    out = m.live(live("UPDATE", {"id": 1, "ver": 6}))
    assert [c.new for c in out] == [{"id": 1, "ver": 6}]
    # A read is authoritative: it heals a version column that a write moved backwards.
    m.gap()
    healed = m.replay_rows([{"id": 1, "ver": 2}])
    assert [(c.op, c.new) for c in healed] == [("UPDATE", {"id": 1, "ver": 2})]
    assert m.finish() == []
    assert m.view[(1,)].version == 2


def test_version_values() -> None:
    assert version_value(7) == 7
    assert version_value("12") == 12
    assert version_value("1970-01-01T00:00:01.5Z") == 1_500_000
    assert version_value("1970-01-01 00:00:01.5+00") == 1_500_000
    assert version_value(None) is None and version_value(True) is None
    assert version_value("abc") is None


def test_deletes_of_unknown_keys_are_not_for_this_subscriber() -> None:
    m = merger()
    assert m.live(live("DELETE", None, {"id": 9})) == []
    out = m.live(live("INSERT", {"id": 9, "v": 1}))
    assert [c.op for c in out] == ["INSERT"]
    out = m.live(live("DELETE", None, {"id": 9}))
    assert [(c.op, c.old) for c in out] == [("DELETE", {"id": 9, "v": 1})]


def test_row_leaving_the_filter_is_a_delete_and_update_of_unknown_row_an_insert() -> None:
    m = merger(matches=lambda r: r.get("owner") == "me")
    out = m.live(live("UPDATE", {"id": 1, "owner": "me"}))
    assert [c.op for c in out] == ["INSERT"]
    out = m.live(live("UPDATE", {"id": 1, "owner": "you"}))
    assert [(c.op, c.old) for c in out] == [("DELETE", {"id": 1, "owner": "me"})]
    assert m.view == {}
    m.gap()
    assert m.replay_rows([{"id": 2, "owner": "you"}]) == []  # filtered out of the replay


def test_events_filter_delivery_not_the_view() -> None:
    m = merger(events=frozenset({"INSERT"}))
    assert [c.op for c in m.live(live("INSERT", {"id": 1, "v": 1}))] == ["INSERT"]
    assert m.live(live("UPDATE", {"id": 1, "v": 2})) == []
    assert m.view[(1,)].row == {"id": 1, "v": 2}


def test_columns_restrict_comparison_and_storage() -> None:
    m = merger(columns=("v",))
    out = m.live(live("INSERT", {"id": 1, "v": 1, "noise": 1}))
    assert out[0].new == {"id": 1, "v": 1}
    m.gap()
    assert m.replay_rows([{"id": 1, "v": 1, "noise": 2}]) == []


def test_partial_live_change_merges_over_the_view_and_live_key_is_recomputed() -> None:
    m = Merger(schema="public", table="t", pk_columns=("a", "b"), rows=[
        CachedRow((1, 2), {"a": 1, "b": 2, "big": "x", "v": 1})
    ])
    change = Change(
        schema="public", table="t", op="UPDATE", new={"a": 1, "b": 2, "v": 2}, old=None,
        pk=(1,), pk_columns=("a",), commit_timestamp=None, partial=True,
    )
    out = m.live(change)
    assert out[0].pk == (1, 2)
    assert out[0].new == {"a": 1, "b": 2, "big": "x", "v": 2}


def test_primary_key_required() -> None:
    with pytest.raises(ValueError, match="primary key is required"):
        Merger(schema="public", table="t", pk_columns=())


# --------------------------------------------------------------------------- property test


@dataclass
class World:
    """A server history: each write yields (event, state after it)."""

    versioned: bool
    state: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[Change] = field(default_factory=list)
    states: list[dict[int, dict[str, Any]]] = field(default_factory=list)
    clock: int = 0

    def write(self, key: int, value: int | None) -> None:
        self.clock += 1
        old = self.state.get(key)
        if value is None:
            if old is None:
                return
            del self.state[key]
            self.events.append(live("DELETE", None, {"id": key}))
        else:
            row: dict[str, Any] = {"id": key, "v": value}
            if self.versioned:
                row["ver"] = self.clock
            self.state[key] = row
            self.events.append(live("INSERT" if old is None else "UPDATE", row, {"id": key}))
        self.states.append({k: dict(v) for k, v in self.state.items()})

    def state_at(self, n: int) -> dict[int, dict[str, Any]]:
        return self.states[n - 1] if n > 0 else {}


writes = st.lists(
    st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 2))), min_size=1, max_size=40
)


@settings(max_examples=400, deadline=None)
@given(
    ops=writes,
    versioned=st.booleans(),
    cuts=st.lists(st.floats(0, 1), min_size=4, max_size=4),
    late=st.booleans(),
)
def test_random_interleavings_converge_in_order(
    ops: list[tuple[int, int | None]], versioned: bool, cuts: list[float], late: bool
) -> None:
    """Live until a gap, lost events, re-subscribe, a read at some point, buffered arrivals
    before/after the read, finish, then the rest live: the view and the handlers' view equal
    the server; with versions (and all pre-read events arrived) no row ever steps back."""
    world = World(versioned)
    for key, value in ops:
        world.write(key, value)
    n = len(world.events)
    g, s, r, a = sorted(int(c * n) for c in cuts)  # gap <= subscribe <= read <= arrival
    if late:
        r, a = a, r  # the read saw commits whose live change had not arrived by the finish
    m = merger(versioning=Versioning("ver" if versioned else None))
    handler: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    delivered: list[Change] = []

    def deliver(changes: list[Change]) -> None:
        for c in changes:
            delivered.append(c)
            if c.op == "DELETE":
                handler.pop(c.pk, None)
            else:
                assert c.new is not None
                handler[c.pk] = c.new

    for e in world.events[:g]:
        deliver(m.live(e))
    m.gap()
    for e in world.events[s:a]:  # events between the gap and the subscription are lost
        deliver(m.live(e))
    snapshot = world.state_at(r)
    deliver(m.replay_rows(snapshot.values()))
    deliver(m.replay_missing({(k,) for k in snapshot}))
    deliver(m.finish())
    for e in world.events[max(a, s):]:
        deliver(m.live(e))

    expected = {(k,): row for k, row in world.state.items()}
    assert {pk: dict(r.row) for pk, r in m.view.items()} == expected
    assert {pk: dict(row) for pk, row in handler.items()} == expected
    if versioned and not late:
        last: dict[tuple[Any, ...], int] = {}
        for c in delivered:
            if c.op != "DELETE":
                assert c.new is not None
                assert c.new["ver"] > last.get(c.pk, 0), "a row stepped back or repeated"
                last[c.pk] = c.new["ver"]


# --------------------------------------------------------------------------- repair planning
# The planner and the PostgREST query helpers are pure too; they are tested here with the merge.

LOGGED = Capabilities(logged=True, horizon="100", pruned_max="0", cursor_column="updated_at")
PLAIN = Capabilities(logged=False, horizon=None, pruned_max=None, cursor_column=None)


def test_plan_auto_prefers_exact_then_a_verified_cursor_then_diff() -> None:
    auto = RepairConfig()
    assert plan(auto, {"mode": "exact", "horizon": "50"}, LOGGED).mode == "exact"
    verified = Capabilities(False, None, None, "updated_at", cursor_verified=True)
    cur = {"mode": "cursor", "column": "updated_at", "value": "2026-01-01T00:00:00Z"}
    chosen = plan(auto, cur, verified)
    assert chosen.mode == "cursor"
    assert chosen.why == ("auto -> cursor on updated_at: no change log installed; updated_at "
                          "is bumped by a supasync trigger")
    assert plan(auto, {"mode": "diff"}, PLAIN).mode == "diff"


def test_plan_auto_never_trusts_an_unverified_cursor() -> None:
    # updated_at with only `default now()`: present, but no supasync trigger bumps it. Cursor
    # mode would miss every UPDATE made during a gap (issue #13), so auto diffs.
    auto = RepairConfig()
    unverified = Capabilities(False, None, None, "updated_at")
    cur = {"mode": "cursor", "column": "updated_at", "value": "2026-01-01T00:00:00Z"}
    chosen = plan(auto, cur, unverified)
    assert (chosen.mode, chosen.report, chosen.fallback) == ("diff", "diff", None)
    assert chosen.why == ("auto -> diff: no change log installed and updated_at is not bumped "
                          "by a supasync trigger")
    assert choose(auto, PLAIN) == (
        "diff", "auto -> diff: no change log installed and no column is bumped by a supasync "
        "trigger")
    assert plan(auto, None, unverified).why == chosen.why  # the first fill says it too
    # The change log wins over any cursor, verified or not.
    assert choose(auto, replace(LOGGED, cursor_verified=True))[0] == "exact"


def test_plan_explicit_cursor_is_trusted_as_given() -> None:
    cursor_mode = RepairConfig(mode="cursor", cursor_column="updated_at")
    unverified = Capabilities(False, None, None, "updated_at")
    cur = {"mode": "cursor", "column": "updated_at", "value": "2026-01-01T00:00:00Z"}
    chosen = plan(cursor_mode, cur, unverified)
    assert (chosen.mode, chosen.why) == ("cursor", "cursor: asked for")


def test_touched_columns_reads_the_rpc_answer_for_one_table() -> None:
    answer = [{"schema": "public", "table": "items", "column": "updated_at"},
              {"schema": "public", "table": "other", "column": "changed_at"},
              {"schema": "app", "table": "items", "column": "modified"}, "junk", {"schema": 1}]
    assert touched_columns(answer, "public", "items") == frozenset({"updated_at"})
    assert touched_columns({"message": "not found"}, "public", "items") == frozenset()
    assert touched_columns(None, "public", "items") == frozenset()


def test_plan_first_fill_is_a_snapshot() -> None:
    for mode in ("auto", "exact", "cursor", "diff"):
        chosen = plan(RepairConfig(mode=mode), None, LOGGED)
        assert (chosen.mode, chosen.report, chosen.fallback) == ("diff", "snapshot", None)


def test_plan_exact_falls_back_and_says_why() -> None:
    exact = RepairConfig(mode="exact")
    pruned = Capabilities(True, "300", "120", None)
    chosen = plan(exact, {"mode": "exact", "horizon": "120"}, pruned)
    assert chosen.mode == "diff" and "retention exceeded" in (chosen.fallback or "")
    assert plan(exact, {"mode": "exact", "horizon": "121"}, pruned).mode == "exact"
    chosen = plan(exact, {"mode": "exact", "horizon": "1"}, PLAIN)
    assert chosen.mode == "diff" and "not installed" in (chosen.fallback or "")
    chosen = plan(exact, {"mode": "cursor", "column": "x", "value": 1}, LOGGED)
    assert chosen.mode == "diff" and "horizon" in (chosen.fallback or "")


def test_plan_cursor_needs_its_column() -> None:
    chosen = plan(RepairConfig(mode="cursor"), {"mode": "cursor"}, PLAIN)
    assert chosen.mode == "diff" and "no cursor column" in (chosen.fallback or "")


def test_repair_config_validates() -> None:
    with pytest.raises(Exception, match="unknown repair mode"):
        RepairConfig(mode="fast")  # type: ignore[arg-type]


def test_keyset_and_quoting() -> None:
    assert keyset_after(["id"], [5]) == [("id", "gt.5")]
    assert keyset_after(["updated_at", "id"], ["2026-01-01T00:00:00+00:00", 3]) == [
        ("and", '(or(updated_at.gt."2026-01-01T00:00:00+00:00",'
                'and(updated_at.eq."2026-01-01T00:00:00+00:00",id.gt.3)))')
    ]
    assert quote("plain") == "plain"
    assert quote('a,"b"') == '"a,\\"b\\""'
    assert quote(None) == "null" and quote(True) == "true" and quote(1.5) == '"1.5"'
    with pytest.raises(ValueError):
        keyset_after(["a", "b"], [1])
