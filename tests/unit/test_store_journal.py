"""The store's change journal: every row change numbered (triggers), origins, resets,
retention, and positions older than the journal keeps."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from supasync.core.changes import Change, change_from_row
from supasync.store.tables import MirrorStore, TableShape

SHAPE = TableShape("public", "todos", (("id", "int8"), ("task", "text"), ("done", "bool")),
                   ("id",))
OTHER = TableShape("sales", "orders", (("a", "int4"), ("b", "text"), ("n", "int4")), ("a", "b"))


def change(op: str, row: dict[str, object],
           ts: str | None = "2026-12-01T10:00:00+00:00") -> Change:
    new = None if op == "DELETE" else row
    old = {"id": row["id"]} if op != "INSERT" else None
    ch = change_from_row("public", "todos", op, new, old, ("id",),  # type: ignore[arg-type]
                         origin="live")
    if ts is not None:
        ch = dataclasses.replace(ch, commit_timestamp=dt.datetime.fromisoformat(ts))
    return ch


def test_live_changes_are_numbered_with_op_key_origin_and_commit_time(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(SHAPE)
    start = store.seq()
    store.apply(SHAPE, [change("INSERT", {"id": 1, "task": "a", "done": False}),
                        change("INSERT", {"id": 2, "task": "b", "done": False})])
    store.apply(SHAPE, [change("UPDATE", {"id": 1, "task": "a2", "done": True}),
                        change("DELETE", {"id": 2}, ts="2026-12-01T10:00:01+00:00")])
    read = store.changes_since(SHAPE, start)
    assert not read.must_refetch
    assert [(e.op, e.pk, e.origin) for e in read.entries] == [
        ("I", (1,), "live"), ("I", (2,), "live"), ("U", (1,), "live"), ("D", (2,), "live")]
    seqs = [e.seq for e in read.entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert read.entries[-1].commit_timestamp == "2026-12-01T10:00:01+00:00"
    assert read.seq == store.seq() == seqs[-1]
    # Reading after a position gives exactly what came after it.
    assert [e.seq for e in store.changes_since(SHAPE, seqs[1]).entries] == seqs[2:]
    assert store.changes_since(SHAPE, store.seq()).entries == ()


def test_merges_sweeps_and_deletes_are_replayed_and_identical_rows_write_nothing(
        tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(SHAPE)
    store.begin_snapshot(SHAPE)
    with store.transaction():
        store.write_page(SHAPE, b'[{"id":1,"task":"a","done":false},'
                                b'{"id":2,"task":"b","done":true}]')
    store.end_snapshot(SHAPE)
    after_snapshot = store.seq()
    # The snapshot is one reset entry: a reader positioned before it reads everything again.
    assert store.changes_since(SHAPE, 0).must_refetch
    with store.transaction():
        store.merge_rows(SHAPE, [{"id": 1, "task": "a", "done": False},  # identical: nothing
                                 {"id": 3, "task": "c", "done": False}])
    store.begin_sweep(SHAPE)
    store.mark(SHAPE, [[1], [3]])
    with store.transaction():
        assert store.sweep(SHAPE) == 1
    read = store.changes_since(SHAPE, after_snapshot)
    assert [(e.op, e.pk, e.origin) for e in read.entries] == [
        ("I", (3,), "replay"), ("D", (2,), "replay")]


def test_counts_exclude_journal_rows(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(SHAPE)
    with store.transaction():
        assert store.merge_rows(SHAPE, [{"id": i, "task": "t", "done": False}
                                        for i in range(5)]) == 5
        assert store.delete_keys(SHAPE, [[0], [1], [99]]) == 2


def test_composite_keys_and_tables_outside_public(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(OTHER)
    with store.transaction():
        store.merge_rows(OTHER, [{"a": 1, "b": "x", "n": 1}])
    (entry,) = store.changes_since(OTHER, 0).entries
    assert (entry.table, entry.pk) == ("sales_orders", (1, "x"))


def test_a_rolled_back_batch_leaves_no_entry_and_the_origin_is_set_again(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(SHAPE)
    before = store.seq()
    with pytest.raises(RuntimeError), store.transaction():
        store.merge_rows(SHAPE, [{"id": 1, "task": "a", "done": False}])
        raise RuntimeError("crash mid-batch")
    assert store.changes_since(SHAPE, before).entries == ()
    store.apply(SHAPE, [change("INSERT", {"id": 5, "task": "e", "done": False})])
    (entry,) = store.changes_since(SHAPE, before).entries
    assert entry.origin == "live"  # not the rolled-back batch's "replay"


def test_retention_by_count_and_positions_older_than_the_journal(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite", journal_keep=10)
    store.ensure_table(SHAPE)
    first = store.seq()
    for i in range(30):
        store.apply(SHAPE, [change("INSERT", {"id": i, "task": "t", "done": False})])
    store.journal.prune()
    kept = store.changes_since(SHAPE, store.seq() - 10)
    assert len(kept.entries) == 10 and not kept.must_refetch
    assert store.changes_since(SHAPE, first).must_refetch
    count = store.db.execute("select count(*) from _supasync_journal").fetchone()[0]
    assert count <= 11  # at most keep (plus the tenth of slack maybe_prune allows)


def test_retention_by_age(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite", journal_max_age=60.0)
    store.ensure_table(SHAPE)
    store.apply(SHAPE, [change("INSERT", {"id": 1, "task": "t", "done": False})])
    newest = store.seq()
    assert store.journal.prune() == 0
    import time

    assert store.journal.prune(now=time.time() + 3600) == 1
    assert store.changes_since(SHAPE, 0).must_refetch
    assert store.changes_since(SHAPE, newest).entries == ()  # the newest position stays valid


def test_a_position_from_another_file_is_refused(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(SHAPE)
    with pytest.raises(ValueError, match="another store file"):
        store.changes_since(SHAPE, store.seq() + 1000)


def test_a_type_change_resets_the_table_in_the_journal(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "j.sqlite")
    store.ensure_table(SHAPE)
    store.apply(SHAPE, [change("INSERT", {"id": 1, "task": "t", "done": False})])
    position = store.seq()
    retyped = TableShape("public", "todos", (("id", "int8"), ("task", "int4"), ("done", "bool")),
                         ("id",))
    assert store.ensure_table(retyped) == "resnapshot"
    assert store.changes_since(retyped, position).must_refetch
    # The new table is journaled too.
    store.apply(retyped, [change("INSERT", {"id": 2, "task": 5, "done": False})])
    assert store.changes_since(retyped, store.seq() - 1).entries[0].pk == (2,)


def test_a_file_written_before_the_journal_gets_it_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = MirrorStore(path)
    store.ensure_table(SHAPE)
    store.close()
    # Make the file look like one written before the journal existed.
    db = sqlite3.connect(path)
    for (name,) in db.execute("select name from sqlite_master where type='trigger'").fetchall():
        db.execute(f'drop trigger "{name}"')
    db.execute("drop table _supasync_journal")
    db.execute("drop table _supasync_context")
    db.commit()
    db.close()
    store = MirrorStore(path)
    store.apply(SHAPE, [change("INSERT", {"id": 1, "task": "t", "done": False})])
    assert [e.pk for e in store.changes_since(SHAPE, 0).entries] == [(1,)]
    assert json.loads(store.db.execute("select pk from _supasync_journal").fetchone()[0]) == [1]


def test_a_snapshot_runs_without_triggers_and_a_dead_one_gets_them_back(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    store = MirrorStore(path)
    store.ensure_table(SHAPE)

    def triggers(db: sqlite3.Connection) -> int:
        return int(db.execute("select count(*) from sqlite_master where type = 'trigger'"
                              " and tbl_name = 'todos'").fetchone()[0])

    assert triggers(store.db) == 3
    store.begin_snapshot(SHAPE)
    assert triggers(store.db) == 0  # a snapshot's inserts pay for no trigger
    store.close()  # the process died mid-snapshot
    again = MirrorStore(path)
    assert triggers(again.db) == 3
    again.apply(SHAPE, [change("INSERT", {"id": 9, "task": "t", "done": False})])
    assert again.changes_since(SHAPE, again.seq() - 1).entries[0].pk == (9,)
