"""A page the snapshot cannot trust is refused, and nothing of it is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from supasync.core.errors import RestError
from supasync.store.cache import CacheFile
from supasync.store.tables import MirrorStore, TableShape

SHAPE = TableShape("public", "todos", (("id", "int8"), ("task", "text")), ("id",))


def test_pages_that_disagree_with_their_count_or_are_not_rows(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    cache = CacheFile.over(store)
    cache.reset("public.todos", "f")
    cache.prepare("public.todos", SHAPE)
    body = b'[{"id":1,"task":"a"},{"id":2,"task":"b"}]'
    assert cache.write_page("public.todos", body, 2, column="task").values == ["a", "b"]
    with pytest.raises(RestError, match="Content-Range says 3 rows"):
        cache.write_page("public.todos", body.replace(b"1,", b"3,"), 3)
    with pytest.raises(RestError, match="Content-Range says 3 rows"):
        cache.merge_page("public.todos", body.replace(b"1,", b"3,"), first=True, expected=3)
    with pytest.raises(RestError, match="not a list of rows"):
        cache.write_page("public.todos", b'{"message":"oops"}', 1)
    assert [r["id"] for r in store.rows(SHAPE)] == [1, 2]  # the refused pages left nothing
    cache.close()
    store.close()
