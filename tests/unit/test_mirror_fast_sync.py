"""A page the snapshot cannot trust is refused, and nothing of it is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from supasync.core.errors import RestError
from supasync.mirror.sync import MirrorRest, TableSync
from supasync.repair.repairer import RepairConfig
from supasync.repair.rest import RawPage
from supasync.store.tables import MirrorStore, TableShape

SHAPE = TableShape("public", "todos", (("id", "int8"), ("task", "text")), ("id",))


async def token() -> str:
    return "unused"


async def test_pages_that_disagree_with_their_count_or_are_not_rows(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    store.ensure_table(SHAPE)
    rest = MirrorRest("http://127.0.0.1:9/rest/v1", "anon", token)  # never called here
    sync = TableSync(store, rest, SHAPE, RepairConfig())
    body = b'[{"id":1,"task":"a"},{"id":2,"task":"b"}]'
    assert sync._write(RawPage(body, 2, {"id": 2}), merge=False, mark=False,
                       column="task").values == ["a", "b"]
    with pytest.raises(RestError, match="Content-Range says 3 rows"):
        sync._write(RawPage(body.replace(b"1,", b"3,"), 3, {"id": 2}), merge=False,
                    mark=False, column=None)
    with pytest.raises(RestError, match="not a list of rows"):
        sync._write(RawPage(b'{"message":"oops"}', 1, None), merge=False, mark=False,
                    column=None)
    assert [r["id"] for r in store.rows(SHAPE)] == [1, 2]  # the refused pages left nothing
    await rest.aclose()
