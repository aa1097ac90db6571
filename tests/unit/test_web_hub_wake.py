"""A hub over a store file wakes at a commit made in the same process (supasync.store.commits),
without waiting for its poll; polling still finds another process's commits."""

from __future__ import annotations

from pathlib import Path

from supasync.store import commits
from supasync.store.tables import MirrorStore, TableShape
from supasync.web.source import Hub, StoreSource

SHAPE = TableShape("public", "items", (("id", "int8"), ("title", "text")), ("id",))


async def test_a_commit_in_this_process_wakes_the_hub_at_once(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    store = MirrorStore(path)
    store.ensure_table(SHAPE)
    store.mark_snapshot_complete("public", "items")
    source = StoreSource(path, SHAPE.name)
    hub = Hub(source, poll_interval=3600.0)  # no poll would come within the test
    try:
        await hub.start()
        start = hub.seq
        for i in range(1, 4):
            with store.transaction():
                store.merge_rows(SHAPE, [{"id": i, "title": f"t{i}"}])
            assert await hub.wait_beyond(start + i - 1, timeout=10.0)
        batch = hub.after(start, 10)
        assert batch is not None and [e.key for e in batch.events] == [(1,), (2,), (3,)]
    finally:
        await hub.close()
        source.close()
        store.close()
    assert not commits._watchers  # the hub stopped watching the file


def test_a_failing_watcher_never_reaches_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    store = MirrorStore(path)
    store.ensure_table(SHAPE)
    seen: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    stop_broken = commits.watch(path, broken)
    stop_seen = commits.watch(str(path), lambda: seen.append(1))
    try:
        with store.transaction():
            store.merge_rows(SHAPE, [{"id": 1, "title": "a"}])
    finally:
        stop_broken()
        stop_seen()
        store.close()
    assert seen == [1]
