"""The snapshot's fast path (a PostgREST page decoded straight into stored tuples, JSON columns
compacted with the page by msgspec) stores exactly what the reference path (``json.loads`` of
the page, then ``upsert_rows``/``merge_rows`` with the Python converters) stores, value by
value and type by type, for awkward values; pages it cannot take go through the reference
path."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supasync.store.tables import MirrorStore, TableShape
from supasync.store.values import (
    PageDecodeError,
    _json_clean,
    _json_fix,
    _timestamptz_clean,
    _timestamptz_fix,
    page_decoder,
)

SHAPE = TableShape(
    "public", "awkward",
    (("id", "int8"), ("title", "text"), ("done", "bool"), ("score", "float8"),
     ("price", "numeric"), ("at", "timestamptz"), ("local", "timestamp"), ("meta", "jsonb"),
     ("raw", "json"), ("tags", "_text"), ("nums", "_float8"), ("docs", "_jsonb"),
     ("olds", "_json"), ("blob", "bytea"), ("mood", "mood"), ("addr", "address"),
     ("uid", "uuid"), ("day", "date")),
    ("id",),
)

# Rows as PostgreSQL renders them (row_to_json: compact at the top, jsonb with ", " and ": ",
# json kept as written, float8 in its shortest form, NaN and infinities as strings).
ROWS = [
    '{"id":1,"title":"plain","done":true,"score":1.5,"price":1000.25,'
    '"at":"2026-01-01T10:00:00+00:00","local":"2026-01-01T10:00:00","meta":{"n": 1, "tag": "t1"},'
    '"raw":{"a":1},"tags":["a","b"],"nums":[1,2],"docs":[{"k": 1}],"olds":[{"k" : 1}],'
    '"blob":"\\\\x00ff","mood":"happy","addr":{"street":"Main","no":5},'
    '"uid":"6f1c2a4e-0000-4000-8000-000000000001","day":"2026-01-01"}',
    # unicode, escapes and control characters everywhere; non-UTC offset; a space separator
    '{"id":2,"title":"caf\u00e9 \\"q\\" \\\\ \\n\\t\\u0001\\u001f \U0001F600 \u4e2d","done":false,'
    '"score":-0.0,"price":0.1,"at":"2026-01-01T10:00:00.5+02:00","local":"2026-01-01 10:00:00",'
    '"meta":{"s": "caf\u00e9 \\"q\\" \\\\ \\n\\u0001 \U0001F600", "k, x": "a: b", "nested": '
    '{"list": [1, "two", null, true, false, {}], "empty": []}},'
    '"raw":{"a" : 1, "a": "\\u00e9", "b":[1.0, 2.50]},"tags":["x,y","\\"z\\"",null],'
    '"nums":[1e+300,1.5e-07,-2.5],"docs":[{"n": 1.50}, null],"olds":[{"b":1,"b":2}],'
    '"blob":"\\\\xdeadbeef","mood":"so-so","addr":null,"uid":null,"day":"0044-03-15 BC"}',
    # JSON null vs SQL NULL, scalars in jsonb, numbers in jsonb and numerics
    '{"id":3,"title":null,"done":null,"score":"NaN","price":"Infinity","at":"infinity",'
    '"local":"-infinity","meta":null,"raw":null,"tags":[],"nums":[],"docs":[],"olds":null,'
    '"blob":null,"mood":null,"addr":{"street":null,"no":null},"uid":null,"day":null}',
    '{"id":4,"title":"","done":true,"score":1e+300,"price":123456789012345678.25,'
    '"at":"0044-03-15T10:00:00+00:00 BC","local":"2026-01-01T10:00:00.123456",'
    '"meta":"just a string","raw":"x","tags":["1.5"],"nums":[null],"docs":["s"],"olds":[],'
    '"blob":"","mood":"","addr":{"street":"a.b","no":-1},"uid":null,"day":null}',
    '{"id":5,"meta":123456789012345678901234567890,"raw":[1,{"x":[]}],"docs":[true, 5]}',
    '{"id":6,"meta":{"price": 1.50, "big": 1000000000000000000000, "neg": -5},'
    '"tags":["e+1","e-1"],"score":0.1,"price":-0.5,"at":"2026-06-30T23:59:59.999999-07:30"}',
    '{"id":7,"meta":true,"raw":false,"done":false,"score":100,"price":5}',
    '{"id":8,"meta":{}, "docs":[[]], "tags":[["a"],["b"]], "nums":[[1.5],[2]]}',
]
PAGE = ("[" + ",".join(ROWS) + "]").encode()


def typed(rows: list[dict[str, Any]]) -> list[list[tuple[str, str, Any]]]:
    """Rows with each value's type, so 1, 1.0 and True do not compare equal."""
    return [[(k, type(v).__name__, v) for k, v in r.items()] for r in rows]


def reference(tmp_path: Path, page: bytes, *, merge: bool = False) -> list[dict[str, Any]]:
    store = MirrorStore(tmp_path / "reference.sqlite")
    store.ensure_table(SHAPE)
    rows = json.loads(page)
    with store.transaction():
        if merge:
            store.merge_rows(SHAPE, rows)
        else:
            store.upsert_rows(SHAPE, rows)
    out = store.rows(SHAPE)
    store.close()
    return out


def test_the_page_takes_the_fast_path() -> None:
    decoded = page_decoder(SHAPE.columns).decode(PAGE)
    assert len(decoded.rows) == len(ROWS)
    # Every value arrives as stored: no parameter goes through an SQL function.
    assert set(page_decoder(SHAPE.columns).params) == {"?"}


def test_page_compaction_keeps_tokens_as_sqlite_json_does() -> None:
    """The page is compacted by msgspec.json.format before decoding; for canonical JSON
    values that gives the text SQLite's json() gives (whitespace between tokens dropped,
    strings and numbers as written)."""
    db = sqlite3.connect(":memory:")
    texts = [
        '{"n": 1, "tag": "t1"}', '{"s": "caf\\u00e9 \\"q\\" \\\\ \\n\\u0001 \U0001F600", '
        '"k, x": "a: b", "nested": {"list": [1, "two", null, true, false, {}], "empty": []}}',
        '[{"n": 1.50}, null]', '["x,y", "\\"z\\"", null]', '[[1.5], [2]]', '[1e+300, -2.5]',
        '123456789012345678901234567890', '"just a string"', '{}', '[[]]',
        '{"a": [ 1 ,\t2 ],\n "b" : {"c": "  spaced  "}}',
    ]
    for text in texts:
        want = db.execute("select json(?)", (text,)).fetchone()[0]
        assert msgspec.json.format(text.encode(), indent=-1).decode() == want, text
    db.close()


def test_fast_path_stores_what_the_reference_path_stores(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "fast.sqlite")
    store.ensure_table(SHAPE)
    with store.transaction():
        done = store.write_page(SHAPE, PAGE)
    assert (done.rows, done.written, done.values) == (len(ROWS), len(ROWS), [])
    assert (store.pages_fast, store.pages_reference) == (1, 0)
    got = store.rows(SHAPE)
    want = reference(tmp_path, PAGE)
    assert typed(got) == typed(want)
    # spot checks of the conversions themselves
    by_id = {r["id"]: r for r in got}
    assert by_id[1]["meta"] == '{"n":1,"tag":"t1"}'
    assert by_id[2]["meta"].startswith('{"s":"caf\u00e9 \\"q\\" \\\\ \\n\\u0001 \U0001F600"')
    assert by_id[2]["raw"] == '{"a":"\u00e9","b":[1.0,2.5]}'
    assert by_id[2]["at"] == "2026-01-01T08:00:00.500000+00:00"
    assert by_id[2]["local"] == "2026-01-01T10:00:00"
    assert by_id[3]["meta"] is None and by_id[3]["tags"] == "[]"
    assert by_id[5]["meta"] == "123456789012345678901234567890"
    assert by_id[6]["meta"] == '{"price":1.5,"big":1000000000000000000000,"neg":-5}'
    assert by_id[1]["blob"] == "00ff" and by_id[1]["done"] == 1 and by_id[2]["done"] == 0


def test_merge_path_and_marks(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "fast.sqlite")
    store.ensure_table(SHAPE)
    with store.transaction():
        store.write_page(SHAPE, b'[{"id":1,"title":"old"},{"id":99,"title":"gone"}]')
    store.begin_sweep(SHAPE)
    with store.transaction():
        done = store.write_page(SHAPE, PAGE, merge=True, mark=True, column="at")
    assert done.values == [json.loads(r).get("at") for r in ROWS]
    assert done.written == len(ROWS)  # 7 inserted, 1 changed
    with store.transaction():
        again = store.write_page(SHAPE, PAGE, merge=True, mark=True)
        assert again.written == 0  # identical rows are not rewritten
        assert store.sweep(SHAPE) == 1  # id 99 was not marked
    assert (store.pages_fast, store.pages_reference) == (3, 0)
    assert typed(store.rows(SHAPE)) == typed(reference(tmp_path, PAGE, merge=True))


@pytest.mark.parametrize("row", [
    '{"id":1,"score":1E400}',  # out of float range: msgspec refuses, json gives inf
    '{"id":1,"raw":{"x": -1e999}}',  # the same inside a json value
    '{"id":1,"done":"yes"}',  # not what a boolean column sends
    '{"id":1,"meta":{"n": NaN}}',  # not JSON, but Python's json reads it
])
def test_pages_the_fast_path_refuses_take_the_reference_path(tmp_path: Path, row: str) -> None:
    page = f"[{row}]".encode()
    store = MirrorStore(tmp_path / "fast.sqlite")
    store.ensure_table(SHAPE)
    with store.transaction():
        done = store.write_page(SHAPE, page)
    assert (done.rows, store.pages_fast, store.pages_reference) == (1, 0, 1)
    assert typed(store.rows(SHAPE)) == typed(reference(tmp_path, page))


def test_a_page_both_paths_refuse_leaves_nothing_behind(tmp_path: Path) -> None:
    # The fast path's partial writes are undone (savepoint) before the reference path runs,
    # and the reference path raises what it raises (SQLite has no integers beyond 64 bits).
    page = b'[{"id":1,"title":"fine"},{"id":2,"score":123456789012345678901234567890}]'
    store = MirrorStore(tmp_path / "fast.sqlite")
    store.ensure_table(SHAPE)
    with pytest.raises(OverflowError), store.transaction():
        store.write_page(SHAPE, page)
    assert store.rows(SHAPE) == []
    with pytest.raises(OverflowError), store.transaction():
        store.upsert_rows(SHAPE, json.loads(page))


def test_decoder_refusals_and_non_pages(tmp_path: Path) -> None:
    decoder = page_decoder(SHAPE.columns)
    for body in (b'{"id":1}', b'[1, 2]', b"not json", b'[{"id":1,"title":"\\ud800"}]'):
        with pytest.raises(PageDecodeError):
            decoder.decode(body)
    store = MirrorStore(tmp_path / "fast.sqlite")
    store.ensure_table(SHAPE)
    for body in (b'{"id":1}', b"[1, 2]", b"not json"):
        with pytest.raises(ValueError):
            store.write_page(SHAPE, body)


def test_missing_json1_falls_back(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "fast.sqlite")
    store.ensure_table(SHAPE)
    store._json1 = False  # an SQLite built without JSON1
    with store.transaction():
        store.write_page(SHAPE, PAGE)
    assert (store.pages_fast, store.pages_reference) == (0, 1)
    assert typed(store.rows(SHAPE)) == typed(reference(tmp_path, PAGE))


# --------------------------------------------------------------------------- page checks
# Timestamps and canonical JSON are checked a page column at a time (a few C passes) and
# converted value by value only where the check fails; a check may say "convert" needlessly,
# never "leave" where a conversion would change a value.

TIMESTAMPTZ_COLUMNS = [
    ["2026-01-01T10:00:00+00:00", None, "2026-01-01T10:00:00.123456+00:00"],
    [None, None],
    [],
    ["2026-01-01T10:00:00+02:00"],  # another offset
    ["2026-01-01 10:00:00+00:00"],  # a space separator
    ["2026-01-01T10:00:00+00:00\n2026-01-01 10:00:00+02:00"],  # a newline inside one value
    ["2026-01-01T10:00:00+00:00", "x+00:00"],  # too short for index 10
    ["infinity", "-infinity"],
    ["0044-03-15T10:00:00+00:00 BC"],
    ["", 0, False],  # falsy values are returned unchanged either way
    [5, "2026-01-01T10:00:00+00:00"],  # not a string
    [["2026-01-01T10:00:00+00:00"] * 11],  # a list long enough to have an index 10
]

JSON_COLUMNS = [
    ['{"n":1,"tag":"t1"}', '[1,2]', '"s"', '{}'],
    ['null', '{"n":1}'],  # JSON null is SQL NULL
    ['{"a":null}'],  # null inside a value stays
    ['{"p":1.50}'],
    ['[1e+300]', '[1e-07]'],
    ['"a.b"'],  # a dot inside a string: Python's path, which gives the same text
    ['{"n":1}', 'nullx', 'xnull'],
]


def _unchanged(column: list[Any], fix: Any) -> bool:
    fixed = [fix(v) for v in column]
    return [(type(v), v) for v in fixed] == [(type(v), v) for v in column]


@pytest.mark.parametrize("column", TIMESTAMPTZ_COLUMNS)
def test_timestamptz_page_check_implies_no_conversion(column: list[Any]) -> None:
    if _timestamptz_clean(column):
        assert _unchanged(column, _timestamptz_fix), column


@pytest.mark.parametrize("column", JSON_COLUMNS)
def test_json_page_check_implies_no_conversion(column: list[str]) -> None:
    if _json_clean(column):
        assert _unchanged(column, _json_fix), column


def test_page_checks_pass_the_usual_pages() -> None:
    # The point of the checks: a page as PostgreSQL renders it in a UTC session needs no
    # conversion at all.
    assert _timestamptz_clean(TIMESTAMPTZ_COLUMNS[0]) and _timestamptz_clean([None])
    assert _json_clean(JSON_COLUMNS[0]) and _json_clean(['{"a":null}'])
    assert not _json_clean(["null"]) and not _json_clean(['{"p":1.50}'])


_TIMESTAMPISH = st.one_of(
    st.none(), st.just(""), st.integers(-2, 2),
    st.text(alphabet="0123456789-:T+. \nBCZ", max_size=32),
    st.builds(lambda a, b: f"2026-01-01{a}10:00:00{b}", st.sampled_from("T "),
              st.sampled_from(["+00:00", "+02:00", "Z", "", "+00:00 BC", "+00:00\n"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TIMESTAMPISH, max_size=8))
def test_timestamptz_page_check_property(column: list[Any]) -> None:
    if _timestamptz_clean(column):
        assert _unchanged(column, _timestamptz_fix), column


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.just("null"), st.text(alphabet='{}[]":,.e+-0123456789nul ab', max_size=16),
    st.builds(lambda v: json.dumps(v, separators=(",", ":")), st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                allow_infinity=False)
        | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                    inner, max_size=3),
        max_leaves=6)),
), max_size=6))
def test_json_page_check_property(column: list[str]) -> None:
    if _json_clean(column):
        assert _unchanged(column, _json_fix), column


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(ROWS))), min_size=1, max_size=len(ROWS),
                unique=True))
def test_any_mix_of_clean_and_awkward_rows_stores_what_the_reference_stores(
    tmp_path_factory: pytest.TempPathFactory, picked: list[int]
) -> None:
    """Pages where a column passes its check, fails it, or passes it in one column and not
    in another: the stored values never depend on which."""
    page = ("[" + ",".join(ROWS[i] for i in picked) + "]").encode()
    tmp = tmp_path_factory.mktemp("mix")
    store = MirrorStore(tmp / "fast.sqlite")
    store.ensure_table(SHAPE)
    with store.transaction():
        store.write_page(SHAPE, page)
    assert store.pages_fast == 1
    got = store.rows(SHAPE)
    store.close()
    assert typed(got) == typed(reference(tmp, page))
