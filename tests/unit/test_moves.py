"""The pure move decision (supasync.core.moves): what an UPDATE received without server-side
filtering is for a filtered subscriber."""

from __future__ import annotations

from supasync.core.changes import Change
from supasync.core.filters import as_filter
from supasync.core.moves import apply_move, classify_update

F = as_filter("done=eq.false")
IN = {"id": 7, "done": False}
OUT = {"id": 7, "done": True}
KEY = {"id": 7}


def test_with_known_holding() -> None:
    assert classify_update(F, IN, KEY, held=True) == "update"
    assert classify_update(F, IN, KEY, held=False) == "insert"  # move-in
    assert classify_update(F, OUT, KEY, held=True) == "delete"  # move-out
    assert classify_update(F, OUT, KEY, held=False) == "drop"


def test_unknown_holding_asks_the_old_record() -> None:
    # REPLICA IDENTITY FULL: the old record proves where the row was.
    assert classify_update(F, OUT, IN, held=None) == "delete"
    assert classify_update(F, IN, OUT, held=None) == "insert"
    assert classify_update(F, IN, IN, held=None) == "update"
    assert classify_update(F, OUT, OUT, held=None) == "drop"
    # Default identity (key only): a matching row is an UPDATE, as the server sends it; a
    # non-matching one cannot be told from a row that never matched, so it is dropped.
    assert classify_update(F, IN, KEY, held=None) == "update"
    assert classify_update(F, OUT, KEY, held=None) == "drop"
    assert classify_update(F, OUT, None, held=None) == "drop"


def test_a_new_record_without_the_filter_column_cannot_be_judged() -> None:
    truncated = {"id": 7}  # Error 413 kept only the key
    assert classify_update(F, truncated, KEY, held=True) == "update"
    assert classify_update(F, truncated, KEY, held=False) == "drop"
    assert classify_update(F, truncated, IN, held=None) == "update"
    assert classify_update(F, truncated, KEY, held=None) == "drop"


def test_apply_move_rewrites_the_change() -> None:
    update = Change("public", "todos", "UPDATE", OUT, KEY, (7,), ("id",), None)
    assert apply_move(update, "update") is update
    assert apply_move(update, "drop") is None
    inserted = apply_move(update, "insert")
    assert inserted is not None and (inserted.op, inserted.new, inserted.old) == (
        "INSERT", OUT, None)
    deleted = apply_move(update, "delete", old_image=IN)
    assert deleted is not None and (deleted.op, deleted.new, deleted.old, deleted.pk) == (
        "DELETE", None, IN, (7,))
    assert apply_move(update, "delete") is not None
