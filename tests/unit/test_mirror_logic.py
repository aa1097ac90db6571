"""The mirror's sans-I/O decisions: type spellings, value conversion, schema comparison,
schema hints from live changes, target selection, and the status/metrics figures."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path

import pytest

from supasync.client.config import Settings, SubscriptionSpec
from supasync.core.changes import Change, Column, change_from_row
from supasync.core.errors import CacheError, ConfigError, FilterError
from supasync.core.filters import parse_filter
from supasync.mirror.status import (
    TableFigures,
    eta_seconds,
    format_duration,
    lag_seconds,
    metrics_text,
    status_line,
    status_record,
)
from supasync.mirror.table import shape_from_info
from supasync.mirror.worker import MirrorTarget, mirror_targets
from supasync.repair.rest import TableInfo
from supasync.store.drift import schema_signature, schema_suspect
from supasync.store.tables import (
    MirrorStore,
    TableShape,
    canonical_type,
    compare_shapes,
    converter,
    sqlite_type,
)

T0 = _dt.datetime(2026, 11, 25, 12, 0, tzinfo=_dt.UTC)


@pytest.mark.parametrize(
    ("spelling", "canonical", "sqlite"),
    [
        ("bigint", "int8", "INTEGER"),
        ("int8", "int8", "INTEGER"),
        ("integer", "int4", "INTEGER"),
        ("numeric(10,2)", "numeric", "NUMERIC"),
        ("double precision", "float8", "REAL"),
        ("boolean", "bool", "INTEGER"),
        ("timestamp with time zone", "timestamptz", "TEXT"),
        ("timestamp(3) with time zone", "timestamptz", "TEXT"),
        ("character varying(20)", "varchar", "TEXT"),
        ("text[]", "_text", "TEXT"),
        ("_text", "_text", "TEXT"),
        ("integer[]", "_int4", "TEXT"),
        ("public.mood", "mood", "TEXT"),
        ("jsonb", "jsonb", "TEXT"),
    ],
)
def test_type_spellings(spelling: str, canonical: str, sqlite: str) -> None:
    assert canonical_type(spelling) == canonical
    assert sqlite_type(spelling) == sqlite


def test_values_are_converted_by_type() -> None:
    assert converter("int8") is None and converter("text") is None
    ts = converter("timestamptz")
    assert ts is not None
    assert ts("2026-01-01T10:00:00.5+00:00") == "2026-01-01T10:00:00.5+00:00"
    assert ts("2026-01-01 11:00:00+01") == "2026-01-01T10:00:00+00:00"
    assert ts("infinity") == "infinity" and ts(None) is None
    js = converter("jsonb")
    assert js is not None
    assert js({"a": [1, "é"]}) == '{"a":[1,"é"]}' and js("x") == '"x"' and js(None) is None
    arr = converter("text[]")
    assert arr is not None and arr(["a", None]) == '["a",null]'
    b = converter("bool")
    assert b is not None and b(True) == 1 and b(None) is None
    by = converter("bytea")
    assert by is not None and by("\\x00ff") == "00ff" and by("00ff") == "00ff"
    t = converter("timestamp")
    assert t is not None and t("2026-01-01 10:00:00") == "2026-01-01T10:00:00"
    other = converter("mood")
    assert other is not None and other({"x": 1}) == '{"x":1}' and other("happy") == "happy"


def test_shape_from_rest_equals_shape_from_live_types() -> None:
    rest = TableShape("public", "t", (("id", "bigint"), ("at", "timestamp with time zone"),
                                      ("tags", "text[]")), ("id",))
    live = TableShape("public", "t", (("id", "int8"), ("at", "timestamptz"), ("tags", "_text")),
                      ("id",))
    assert rest == live
    assert rest.row_values({"id": 1, "at": None, "tags": ["a"]}) == (1, None, '["a"]')
    assert rest.row_values({"id": 1}) == (1, None, None)  # partial rows: missing is NULL


def test_compare_shapes() -> None:
    old = TableShape("public", "t", (("id", "int8"), ("a", "text")), ("id",))
    assert compare_shapes(None, old).action == "created"
    assert compare_shapes(old, old).action == "unchanged"
    added = TableShape("public", "t", (*old.columns, ("b", "int4")), ("id",))
    change = compare_shapes(old, added)
    assert (change.action, change.added) == ("altered", ("b",))
    dropped = TableShape("public", "t", (("id", "int8"),), ("id",))
    assert compare_shapes(old, dropped).dropped == ("a",)
    retyped = TableShape("public", "t", (("id", "int8"), ("a", "int4")), ("id",))
    change = compare_shapes(old, retyped)
    assert change.action == "resnapshot"
    assert change.describe() == "a changed type text -> int4"
    varchar = TableShape("public", "t", (("id", "bigint"), ("a", "text")), ("id",))
    assert compare_shapes(old, varchar).action == "unchanged"
    rekeyed = TableShape("public", "t", old.columns, ("a",))
    assert compare_shapes(old, rekeyed).key_changed


def test_shape_from_info_refuses_unknown_tables_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match="not found"):
        shape_from_info("public", "nope", None)
    with pytest.raises(ConfigError, match="no primary key") as err:
        shape_from_info("public", "t", TableInfo((), {"a": "integer"}))
    assert "add primary key" in str(err.value)
    shape = shape_from_info("s", "t", TableInfo(("id",), {"id": "bigint", "x": "text"}))
    assert shape.name == "s_t" and shape.columns == (("id", "int8"), ("x", "text"))


SHAPE = TableShape("public", "t", (("id", "int8"), ("title", "text"), ("n", "int4"),
                                   ("tags", "_text")), ("id",))


def live(new: dict[str, object], columns: tuple[Column, ...] | None = None,
         **kw: object) -> Change:
    ch = change_from_row("public", "t", "UPDATE", new, {"id": new.get("id")}, ("id",),
                         origin="live")
    cols = columns if columns is not None else tuple(
        Column(c, t) for c, t in SHAPE.columns)
    return dataclasses.replace(ch, columns=cols, **kw)  # type: ignore[arg-type]


def test_schema_suspect() -> None:
    row = {"id": 1, "title": "a", "n": 2, "tags": ["x"]}
    assert not schema_suspect(SHAPE, live(row))
    assert not schema_suspect(SHAPE, live({**row, "n": None}))
    assert schema_suspect(SHAPE, live({**row, "extra": 1}))  # a column added
    assert schema_suspect(SHAPE, live({k: v for k, v in row.items() if k != "tags"}))
    assert schema_suspect(SHAPE, live({**row, "n": "high"}))  # a type change
    assert schema_suspect(SHAPE, live({**row, "n": True}))
    assert schema_suspect(SHAPE, live({**row, "tags": "x"}))
    stale = tuple(Column(c, t) for c, t in SHAPE.columns[:-1])
    assert schema_suspect(SHAPE, live(row, columns=stale))
    # truncated or emptied records say nothing about the schema
    assert not schema_suspect(SHAPE, live({"id": 1}, errors=("Error 413: Payload Too Large",)))
    delete = change_from_row("public", "t", "DELETE", None, {"id": 1}, ("id",), origin="live")
    assert not schema_suspect(SHAPE, delete)
    assert schema_signature(live(row)) == schema_signature(live({**row, "title": "b"}))
    assert schema_signature(live(row)) != schema_signature(live({**row, "n": "x"}))


def _settings(*specs: SubscriptionSpec) -> Settings:
    return Settings(url="http://x", realtime_url="ws://x", anon_key="k", subscriptions=specs)


def test_mirror_targets() -> None:
    assert mirror_targets(["todos", "sales.orders"], "done=eq.false", None) == [
        MirrorTarget("public", "todos", "done=eq.false"),
        MirrorTarget("sales", "orders", "done=eq.false"),
    ]
    with pytest.raises(ConfigError, match=r"SCHEMA\.TABLE"):
        mirror_targets(["a.b.c"], None, None)
    with pytest.raises(FilterError):
        mirror_targets(["todos"], "done=eq", None)
    with pytest.raises(ConfigError, match="nothing to mirror"):
        mirror_targets([], None, _settings())
    with pytest.raises(ConfigError, match="--filter needs --table"):
        mirror_targets([], "done=eq.true", _settings())
    with pytest.raises(ConfigError, match="repair"):
        mirror_targets(["todos"], None, None, repair="fast")
    spec = SubscriptionSpec(name="t", schema="public", table="todos",
                            filter=parse_filter("done=eq.false"), repair="cursor",
                            cursor_column="updated_at")
    off = SubscriptionSpec(name="o", schema="public", table="other", repair="off")
    assert mirror_targets([], None, _settings(spec, off)) == [
        MirrorTarget("public", "todos", "done=eq.false", "cursor", "updated_at"),
        MirrorTarget("public", "other", None, "diff"),
    ]


def test_store_refuses_missing_dirs_and_foreign_tables(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="does not exist"):
        MirrorStore(tmp_path / "nope" / "m.sqlite")
    store = MirrorStore(tmp_path / "m.sqlite")
    store.db.execute("create table t (x int)")
    with pytest.raises(CacheError, match="not a mirror table"):
        store.check_table(SHAPE)
    store.close()


def test_merge_rows_counts_only_real_changes_and_sweep(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    store.ensure_table(SHAPE)
    rows = [{"id": i, "title": f"r{i}", "n": i, "tags": []} for i in range(1, 6)]
    assert store.merge_rows(SHAPE, rows) == 5
    assert store.merge_rows(SHAPE, rows) == 0  # identical: nothing rewritten
    assert store.merge_rows(SHAPE, [{**rows[0], "title": "changed"}]) == 1
    store.begin_sweep(SHAPE)
    store.mark(SHAPE, [[1], [3], [5]])
    assert store.sweep(SHAPE) == 2
    assert [r["id"] for r in store.rows(SHAPE)] == [1, 3, 5]
    store.set_cursor("public", "t", {"mode": "exact", "horizon": "42"})
    assert store.get_cursor("public", "t") == {"mode": "exact", "horizon": "42"}
    added = TableShape("public", "t", (*SHAPE.columns, ("extra", "int4")), ("id",))
    assert store.ensure_table(added) == "altered"
    assert store.update_columns(added, ["extra"], [{"id": 3, "extra": 7}]) == 1
    assert store.get_row(added, [3])["extra"] == 7
    retyped = TableShape("public", "t", (("id", "int8"), ("title", "int4")), ("id",))
    assert store.ensure_table(retyped) == "resnapshot"
    assert store.get_cursor("public", "t") is None  # a re-snapshot starts over
    store.close()


def test_status_line_record_and_metrics() -> None:
    f = TableFigures("public.todos", state="live", rows=10, live_applied=4, reconnects=1,
                     last_commit=T0, last_applied=T0 + _dt.timedelta(milliseconds=40),
                     last_gap_reason="drop", last_gap_at=T0 - _dt.timedelta(seconds=65),
                     last_gap_mode="exact", last_gap_s=0.3)
    at = T0 + _dt.timedelta(milliseconds=40)
    line = status_line([f], at)
    assert line == ("public.todos live lag 0.04s rows 10 live 4 reconnects 1 last gap drop "
                    "1m05s ago, repaired by exact in 0.30s")
    record = status_record([f], at)
    assert record["event"] == "status"
    table = record["tables"][0]  # type: ignore[index]
    assert table["lag_s"] == pytest.approx(0.04) and table["last_gap"]["mode"] == "exact"
    assert table["delay_s"] == pytest.approx(0.04)
    text = metrics_text([f, TableFigures('we"ird')], at)
    assert 'supasync_mirror_rows{table="public.todos"} 10' in text
    assert 'supasync_mirror_reconnects_total{table="public.todos"} 1' in text
    assert 'supasync_mirror_state{table="public.todos",state="live"} 1' in text
    assert 'supasync_mirror_lag_seconds{table="we\\"ird"} nan' in text
    assert "# TYPE supasync_mirror_live_changes_total counter" in text
    assert status_line([TableFigures("t")], T0).endswith("last gap none")


def test_durations_and_eta() -> None:
    assert format_duration(None) == "-"
    assert format_duration(0.123) == "0.12s"
    assert format_duration(4.5) == "4.5s"
    assert format_duration(42) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(7260) == "2h01m"
    assert eta_seconds(250, 1000, 5.0) == pytest.approx(15.0)
    assert eta_seconds(0, 1000, 5.0) is None and eta_seconds(10, None, 1.0) is None


@pytest.mark.parametrize("pk_type", ["int8", "text", "numeric"])
def test_sweep_looks_keys_up_by_index(tmp_path: Path, pk_type: str) -> None:
    # A key table of another affinity makes SQLite scan it once per row (quadratic sweeps).
    shape = TableShape("public", "k", (("id", pk_type), ("v", "text")), ("id",))
    store = MirrorStore(tmp_path / "m.sqlite")
    store.ensure_table(shape)
    store.begin_sweep(shape)
    plan = store.db.execute(
        'explain query plan delete from "k" as t where not exists '
        '(select 1 from temp."seen_k" as s where s."id" = t."id")').fetchall()
    text = " ".join(str(r[-1]) for r in plan)
    assert "SCAN s" not in text and "SEARCH s" in text, text
    store.close()


def test_lag_grows_while_nothing_is_applied() -> None:
    """Issue #17: a frozen mirror said "repairing lag 0.03s" - the delay of its last change."""
    f = TableFigures("public.todos", state="live", last_commit=T0,
                     last_applied=T0 + _dt.timedelta(milliseconds=30))
    later = T0 + _dt.timedelta(seconds=42)
    assert lag_seconds(f, T0 + _dt.timedelta(milliseconds=30)) == pytest.approx(0.03)
    assert lag_seconds(f, later) == pytest.approx(42)
    assert "live lag 42s" in status_line([f], later)
    # a gap opened 5 s after the last change: behind since then, growing until repaired
    f.state, f.last_gap_at, f.last_gap_reason = "repairing", T0 + _dt.timedelta(seconds=5), "drop"
    assert lag_seconds(f, later) == pytest.approx(37)
    assert "repairing lag 37s" in status_line([f], later)
    assert lag_seconds(f, later + _dt.timedelta(seconds=10)) == pytest.approx(47)
    assert status_record([f], later)["tables"][0]["lag_s"] == pytest.approx(37)  # type: ignore[index]
    assert 'supasync_mirror_lag_seconds{table="public.todos"} 37' in metrics_text([f], later)
    # repaired: back to the newest commit applied
    f.state, f.last_gap_mode = "live", "exact"
    assert lag_seconds(f, later) == pytest.approx(42)
    assert lag_seconds(TableFigures("t"), later) is None


def test_a_missing_table_says_so_with_its_problem() -> None:
    f = TableFigures("public.dr", state="missing", problem="table not found upstream",
                     last_gap_at=T0, last_gap_reason="drop")
    at = T0 + _dt.timedelta(seconds=3)
    assert status_line([f], at).startswith(
        "public.dr missing (table not found upstream) lag 3.0s")
    table = status_record([f], at)["tables"][0]  # type: ignore[index]
    assert (table["state"], table["problem"]) == ("missing", "table not found upstream")
    assert 'supasync_mirror_state{table="public.dr",state="missing"} 1' in metrics_text([f], at)
