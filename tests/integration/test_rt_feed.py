"""ChangeFeed against a real PostgreSQL: payload shapes (§5.2), filters (§5.1/§5.3), RLS,
413, error texts, activation point, pause/resume and ordering."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from supasync.devstack.app import StackConfig, StackContext
from supasync.devstack.keys import StackKeys
from supasync.devstack.postgres import Cluster
from supasync.devstack.realtime.feed import ChangeFeed

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
_keys = itertools.count(1)

ANON = {"role": "anon"}
SERVICE = {"role": "service_role"}
USER_A = "6f1e0000-0000-0000-0000-00000000000a"
USER_B = "6f1e0000-0000-0000-0000-00000000000b"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def feed(cluster: Cluster) -> AsyncIterator[ChangeFeed]:
    ctx = StackContext(StackConfig(max_record_bytes=1_048_576), StackKeys.generate(), cluster)
    f = ChangeFeed(ctx)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
def db(cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    with cluster.connect() as conn:
        yield conn


class Sink:
    """Collects deliveries; wait for a count with a timeout (no sleeps)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, payload: dict[str, Any]) -> None:
        self.items.append(payload)
        self._changed.set()

    async def wait(self, n: int, within: float = TIMEOUT) -> list[dict[str, Any]]:
        async def _until() -> None:
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_until(), within)
        return self.items

    @property
    def data(self) -> list[dict[str, Any]]:
        return [p["data"] for p in self.items]


def table(db: psycopg.Connection[Any], name: str, ddl: str, *, publish: bool = True) -> None:
    db.execute(f"drop table if exists public.{name} cascade")
    db.execute(f"create table public.{name} ({ddl})")
    db.execute(f"grant all on public.{name} to anon, authenticated, service_role")
    if publish:
        db.execute(f"alter publication supabase_realtime add table public.{name}")


async def sub(
    feed: ChangeFeed,
    params: dict[str, Any] | list[dict[str, Any]],
    claims: dict[str, Any] | None = None,
) -> tuple[Any, Sink]:
    plist = params if isinstance(params, list) else [params]
    sink = Sink()
    key = next(_keys)
    bindings = [(i + 1, p) for i, p in enumerate(plist)]
    err = await feed.subscribe(key, bindings, claims or SERVICE, sink)
    assert err is None, err
    return key, sink


async def marker(db: psycopg.Connection[Any], feed: ChangeFeed) -> Sink:
    """Subscribe to a marker table and write to it: once the marker arrives, every change
    committed before it has been dispatched (commit order)."""
    table(db, "zz_marker", "id serial primary key")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "zz_marker"})
    db.execute("insert into zz_marker default values")
    await sink.wait(1)
    return sink


async def test_insert_update_delete_payloads(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "todos", "id int8 primary key, task text, done bool")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "todos"})
    db.execute("insert into todos values (1, 'buy milk', false)")
    db.execute("update todos set done = true where id = 1")
    db.execute("delete from todos where id = 1")
    items = await sink.wait(3)
    assert [p["ids"] for p in items] == [[1], [1], [1]]
    ins, upd, dele = (p["data"] for p in items)
    cols = [{"name": "id", "type": "int8"}, {"name": "task", "type": "text"},
            {"name": "done", "type": "bool"}]
    assert list(ins) == ["schema", "table", "commit_timestamp", "type", "errors", "columns",
                         "record"]
    assert ins["schema"] == "public" and ins["table"] == "todos" and ins["type"] == "INSERT"
    assert ins["errors"] is None and ins["columns"] == cols
    assert ins["record"] == {"id": 1, "task": "buy milk", "done": False}
    ts = ins["commit_timestamp"]
    assert len(ts) == 24 and ts[10] == "T" and ts.endswith("Z") and ts[19] == "."
    assert upd["type"] == "UPDATE" and upd["record"] == {"id": 1, "task": "buy milk", "done": True}
    assert upd["old_record"] == {"id": 1}
    assert "record" not in dele and dele["type"] == "DELETE"
    assert dele["old_record"] == {"id": 1} and dele["columns"] == cols


async def test_replica_identity_full(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "full_t", "id int primary key, a text, b int")
    db.execute("alter table full_t replica identity full")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "full_t"})
    db.execute("insert into full_t values (1, 'x', 10)")
    db.execute("update full_t set b = 11, id = 2 where id = 1")
    db.execute("delete from full_t where id = 2")
    _, upd, dele = (p["data"] for p in await sink.wait(3))
    assert upd["record"] == {"id": 2, "a": "x", "b": 11}
    assert upd["old_record"] == {"id": 1, "a": "x", "b": 10}
    assert dele["old_record"] == {"id": 2, "a": "x", "b": 11}


async def test_default_identity_key_change(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "keyed", "id int primary key, a text")
    _, sink = await sub(feed, {"event": "UPDATE", "schema": "public", "table": "keyed"})
    db.execute("insert into keyed values (1, 'x')")
    db.execute("update keyed set id = 5 where id = 1")
    (upd,) = (p["data"] for p in await sink.wait(1))
    assert upd["old_record"] == {"id": 1} and upd["record"] == {"id": 5, "a": "x"}


async def test_unchanged_toast_column_absent(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "toasty", "id int primary key, big text, n int")
    db.execute("alter table toasty alter column big set storage external")
    _, sink = await sub(feed, {"event": "UPDATE", "schema": "public", "table": "toasty"})
    db.execute("insert into toasty values (1, repeat('x', 100000), 1)")
    db.execute("update toasty set n = 2 where id = 1")
    (upd,) = (p["data"] for p in await sink.wait(1))
    assert upd["record"] == {"id": 1, "n": 2}  # unchanged TOAST value left out


async def test_event_filter_and_case(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "ev", "id int primary key")
    _, ins = await sub(feed, {"event": "insert", "schema": "public", "table": "ev"})
    _, dele = await sub(feed, {"event": "Delete", "schema": "public", "table": "ev"})
    _, star = await sub(feed, {"event": "whatever", "schema": "public", "table": "ev"})
    db.execute("insert into ev values (1)")
    db.execute("update ev set id = 2")
    db.execute("delete from ev")
    await star.wait(3)
    await marker(db, feed)
    assert [d["type"] for d in ins.data] == ["INSERT"]
    assert [d["type"] for d in dele.data] == ["DELETE"]
    assert [d["type"] for d in star.data] == ["INSERT", "UPDATE", "DELETE"]


FILTER_CASES: list[tuple[str, set[int]]] = [
    ("n=eq.5", {5}),
    ("n=neq.5", {1, 7}),
    ("n=lt.5", {1}),
    ("n=lte.5", {1, 5}),
    ("n=gt.5", {7}),
    ("n=gte.5", {5, 7}),
    ("n=in.(1,7)", {1, 7}),
    ("n=not.in.(1,7)", {5}),
    ("n=not.eq.5", {1, 7}),  # NULL rows fail even when negated
    ("s=like.ab%", {1, 5}),
    ("s=ilike.AB%", {1, 5, 7}),
    ("s=not.like.ab%", {7, 9, 10}),
    ("s=match.^a.c", {1}),
    ("s=imatch.^AB", {1, 5, 7}),
    ("s=eq.\"a,b\"", {9}),
    ('s=eq."q\\"x"', {10}),
    ("n=is.null", {9, 10}),
    ("n=not.is.null", {1, 5, 7}),
    ("b=is.true", {1}),
    ("b=is.unknown", {7, 9, 10}),
    ("b=not.is.true", {5, 7, 9, 10}),
    ("n=isdistinct.5", {1, 7, 9, 10}),
    ("n=not.isdistinct.5", {5}),
    ("n=gt.1,s=ilike.ab%", {5, 7}),
    ("id=in.(9,10),s=in.(\"a,b\",zz)", {9}),
    ("  ", {1, 5, 7, 9, 10}),
]


async def test_filter_operators(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "flt", "id int primary key, n int, s text, b bool")
    sinks = []
    for flt, _ in FILTER_CASES:
        _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "flt",
                                   "filter": flt})
        sinks.append(sink)
    db.execute("""insert into flt values (1, 1, 'abc', true), (5, 5, 'abd', false),
                  (7, 7, 'ABx', null), (9, null, 'a,b', null), (10, null, 'q"x', null)""")
    await marker(db, feed)
    for (flt, expected), sink in zip(FILTER_CASES, sinks, strict=True):
        got = {d["record"]["id"] for d in sink.data}
        assert got == expected, flt


async def test_delete_filters_use_old_identity(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "delf", "id int primary key, n int")
    _, by_pk = await sub(feed, {"event": "DELETE", "schema": "public", "table": "delf",
                                "filter": "id=eq.2"})
    _, by_col = await sub(feed, {"event": "DELETE", "schema": "public", "table": "delf",
                                 "filter": "n=eq.20"})
    db.execute("insert into delf values (1, 10), (2, 20)")
    db.execute("delete from delf")
    await marker(db, feed)
    assert [d["old_record"] for d in by_pk.data] == [{"id": 2}]
    assert by_col.data == []  # n is not in the DEFAULT identity


async def test_several_bindings_ids(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "multi", "id int primary key, n int")
    _, sink = await sub(feed, [
        {"event": "*", "schema": "public", "table": "multi", "filter": "n=eq.1"},
        {"event": "INSERT", "schema": "public", "table": "multi"},
        {"event": "UPDATE", "schema": "public", "table": "multi"},
    ])
    db.execute("insert into multi values (1, 1)")
    db.execute("insert into multi values (2, 2)")
    db.execute("update multi set n = 1 where id = 2")
    items = await sink.wait(3)
    assert [p["ids"] for p in items] == [[1, 2], [2], [1, 3]]


async def test_changes_before_subscribe_not_delivered(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "early", "id int primary key")
    feed.pause()
    db.execute("insert into early values (1)")  # waits in the slot
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "early"})
    db.execute("insert into early values (2)")
    feed.resume()
    await marker(db, feed)
    assert [d["record"]["id"] for d in sink.data] == [2]


async def test_pause_resume_in_order(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "pr", "id int primary key")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "pr"})
    feed.pause()
    for i in range(20):
        db.execute("insert into pr values (%s)", (i,))
    # nothing flows while paused: a marker written now is held as well
    table(db, "zz_pause_marker", "id int primary key")
    _, held = await sub(feed, {"event": "*", "schema": "public", "table": "zz_pause_marker"})
    db.execute("insert into zz_pause_marker values (1)")
    with pytest.raises(TimeoutError):
        await held.wait(1, within=0.3)
    assert sink.items == []
    feed.resume()
    await sink.wait(20)
    assert [d["record"]["id"] for d in sink.data] == list(range(20))


async def test_commit_order_across_tables(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "oa", "id int primary key")
    table(db, "ob", "id int primary key")
    _, sink = await sub(feed, [{"event": "*", "schema": "public", "table": "oa"},
                               {"event": "*", "schema": "public", "table": "ob"}])
    expected = []
    with db.cursor() as cur:
        for i in range(30):
            t = "oa" if i % 3 else "ob"
            cur.execute(f"insert into {t} values (%s)", (i,))
            expected.append((t, i))
    # one transaction touching both tables keeps its statement order
    with db.transaction():
        db.execute("insert into ob values (100)")
        db.execute("insert into oa values (101)")
    expected += [("ob", 100), ("oa", 101)]
    await sink.wait(len(expected))
    assert [(d["table"], d["record"]["id"]) for d in sink.data] == expected


async def test_select_list_and_column_privileges(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "sel", "id int primary key, a text, secret text, c int")
    db.execute("revoke select on sel from anon")
    db.execute("grant select (id, a, c) on sel to anon")
    _, anon = await sub(feed, {"event": "*", "schema": "public", "table": "sel"}, ANON)
    _, picked = await sub(feed, {"event": "*", "schema": "public", "table": "sel",
                                 "select": ["c"]})
    db.execute("insert into sel values (1, 'x', 's', 3)")
    (a,) = (p["data"] for p in await anon.wait(1))
    (p,) = (p["data"] for p in await picked.wait(1))
    assert [c["name"] for c in a["columns"]] == ["id", "a", "c"]
    assert a["record"] == {"id": 1, "a": "x", "c": 3}
    assert [c["name"] for c in p["columns"]] == ["id", "c"]
    assert p["record"] == {"id": 1, "c": 3}


async def test_rls(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "notes", "id int primary key, owner uuid, body text")
    db.execute("alter table notes enable row level security")
    db.execute("create policy own on notes for select to authenticated"
               " using (owner = auth.uid())")
    base = {"event": "*", "schema": "public", "table": "notes"}
    _, a = await sub(feed, base, {"role": "authenticated", "sub": USER_A})
    _, b = await sub(feed, base, {"role": "authenticated", "sub": USER_B})
    _, anon = await sub(feed, base, ANON)
    _, svc = await sub(feed, base, SERVICE)
    db.execute("insert into notes values (1, %s, 'for a'), (2, %s, 'for b')", (USER_A, USER_B))
    db.execute("update notes set body = 'a2' where id = 1")
    # RLS reads the table at poll time (§5.3): delete only once the inserts were judged
    await svc.wait(3)
    db.execute("delete from notes where id = 2")
    await svc.wait(4)
    await marker(db, feed)
    assert [(d["type"], d["record"]["id"]) for d in a.data if "record" in d] == [
        ("INSERT", 1), ("UPDATE", 1)]
    assert [(d["type"], d["record"]["id"]) for d in b.data if "record" in d] == [("INSERT", 2)]
    # DELETE skips RLS and carries only the primary key under RLS
    for s in (a, b, anon, svc):
        deletes = [d for d in s.data if d["type"] == "DELETE"]
        assert [d["old_record"] for d in deletes] == [{"id": 2}]
    assert [d["type"] for d in anon.data] == ["DELETE"]
    assert [d["type"] for d in svc.data] == ["INSERT", "INSERT", "UPDATE", "DELETE"]


async def test_update_claims_changes_rls_identity(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "claimed", "id int primary key, owner uuid")
    db.execute("alter table claimed enable row level security")
    db.execute("create policy own on claimed for select using (owner = auth.uid())")
    key, sink = await sub(feed, {"event": "INSERT", "schema": "public", "table": "claimed"},
                          {"role": "authenticated", "sub": USER_A})
    db.execute("insert into claimed values (1, %s), (2, %s)", (USER_A, USER_B))
    assert await feed.update_claims(key, {"role": "authenticated", "sub": USER_B}) is None
    db.execute("insert into claimed values (3, %s), (4, %s)", (USER_A, USER_B))
    await sink.wait(2)
    await marker(db, feed)
    assert [d["record"]["id"] for d in sink.data] == [1, 4]


async def test_no_primary_key_400(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "nopk", "a int, b text")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "nopk"})
    db.execute("insert into nopk values (1, 'x')")
    (d,) = (p["data"] for p in await sink.wait(1))
    assert d == {"schema": "public", "table": "nopk", "commit_timestamp": None,
                 "type": "INSERT", "errors": ["Error 400: Bad Request, no primary key"],
                 "columns": [], "record": {}}


async def test_unreadable_primary_key_401(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "hidden_pk", "id int primary key, a text")
    db.execute("revoke select on hidden_pk from anon")
    db.execute("grant select (a) on hidden_pk to anon")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "hidden_pk"}, ANON)
    db.execute("insert into hidden_pk values (1, 'x')")
    (d,) = (p["data"] for p in await sink.wait(1))
    assert d["errors"] == ["Error 401: Unauthorized"] and d["record"] == {}
    assert d["commit_timestamp"] is None and d["columns"] == []


async def test_payload_too_large_413(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "huge", "id int primary key, small text, big text, n numeric")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "huge"})
    db.execute("insert into huge values (1, 'tiny', repeat('x', 2 * 1024 * 1024), 1.50)")
    (d,) = (p["data"] for p in await sink.wait(1))
    assert d["errors"] == ["Error 413: Payload Too Large"]
    assert d["record"] == {"id": 1, "small": "tiny", "n": 1.5}
    assert [c["name"] for c in d["columns"]] == ["id", "small", "big", "n"]
    assert d["commit_timestamp"].endswith("Z")


async def test_wildcard_subscriptions(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    db.execute("create schema if not exists wild")
    db.execute("grant usage on schema wild to anon, authenticated, service_role")
    db.execute("drop table if exists wild.w1, wild.w2")
    db.execute("create table wild.w1 (id int primary key)")
    db.execute("create table wild.w2 (id int primary key)")
    db.execute("alter publication supabase_realtime add table wild.w1, wild.w2")
    _, whole = await sub(feed, {"schema": "wild"})
    _, pattern = await sub(feed, {"schema": "wild", "table": "w_"})
    _, one = await sub(feed, {"schema": "wild", "table": "w2"})
    db.execute("insert into wild.w1 values (1)")
    db.execute("insert into wild.w2 values (2)")
    await whole.wait(2)
    await marker(db, feed)
    assert [d["table"] for d in whole.data] == ["w1", "w2"]
    assert [d["table"] for d in pattern.data] == ["w1", "w2"]
    assert [d["table"] for d in one.data] == ["w2"]


async def test_unpublished_table_never_delivered(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "private_t", "id int primary key", publish=False)
    _, star = await sub(feed, {"schema": "public"})
    db.execute("insert into private_t values (1)")
    await marker(db, feed)
    assert all(d["table"] != "private_t" for d in star.data)


async def test_unsubscribe_stops_delivery(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "unsub", "id int primary key")
    key, sink = await sub(feed, {"event": "*", "schema": "public", "table": "unsub"})
    db.execute("insert into unsub values (1)")
    await sink.wait(1)
    await feed.unsubscribe(key)
    db.execute("insert into unsub values (2)")
    await marker(db, feed)
    assert len(sink.items) == 1


EXC = ("Unable to subscribe to changes with given parameters. An exception happened so please "
       "check your connect parameters: ")
ERROR_CASES: list[tuple[dict[str, Any], str]] = [
    ({"event": "*", "schema": "public", "table": "doesnotexist"},
     "Unable to subscribe to changes with given parameters. Please check Realtime is enabled "
     "for the given connect parameters: [event: *, schema: public, table: doesnotexist, "
     "filters: [], select: nil]"),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "notacolumn=eq.123"},
     EXC + '[event: *, schema: public, table: errs, filters: [{"notacolumn", "eq", "123", '
     "false}], select: nil]. Exception: ERROR P0001 (raise_exception) invalid column for "
     "filter notacolumn"),
    ({"event": "INSERT", "schema": "public", "table": "errs", "filter": "n=eq.abc"},
     EXC + '[event: INSERT, schema: public, table: errs, filters: [{"n", "eq", "abc", false}], '
     'select: nil]. Exception: ERROR 22P02 (invalid_text_representation) invalid input syntax '
     'for type integer: "abc"'),
    ({"event": "*", "schema": "public", "table": "errs",
      "filter": "n=in.(" + ",".join(str(i) for i in range(101)) + ")"},
     "ERROR P0001 (raise_exception) too many values for `in` filter. Maximum 100"),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "n=is.maybe"},
     "ERROR P0001 (raise_exception) invalid value for is filter: must be null, true, false, "
     "or unknown"),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "n=is.true"},
     "ERROR P0001 (raise_exception) is true filter requires a boolean column, got integer"),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "n=like.1%"},
     "ERROR P0001 (raise_exception) operator like is not supported on column n of type "
     "integer: "),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "s=match.(("},
     "ERROR P0001 (raise_exception) invalid regular expression for match filter: invalid "
     "regular expression: parentheses () not balanced"),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "s=wat.x"},
     'Error parsing `filter` params: ["wat", "x"]'),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "undefined"},
     'Error parsing `filter` params: ["undefined"]'),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "n=eq.1,,s=eq.x"},
     "Error parsing `filter` params: filter must not contain empty segments (check for extra "
     "commas)"),
    ({"event": "*", "schema": "public", "table": "errs", "filter": "n=in.1,2"},
     "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"),
    ({"event": "*", "schema": None, "table": "errs"},
     "No subscription params provided. Please provide at least a `schema` or `table` to "
     'subscribe to: %{"event" => "*", "schema" => nil, "table" => "errs"}'),
    ({"event": "*", "schema": "public", "table": "errs", "select": ["nope"]},
     EXC + '[event: *, schema: public, table: errs, filters: [], select: ["nope"]]. '
     "Exception: ERROR P0001 (raise_exception) invalid column for select nope"),
]


async def test_subscription_error_texts(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "errs", "id int primary key, n int, s text")
    for params, expected in ERROR_CASES:
        got = await feed.subscribe(next(_keys), [(1, params)], SERVICE, Sink())
        assert got is not None and expected in got, (params, got)
        if expected.startswith(("Unable", "Error", "No ")):
            assert got == expected


async def test_unknown_role_error(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "roles_t", "id int primary key")
    got = await feed.subscribe(next(_keys), [(1, {"table": "roles_t"})], {"role": "nobody"},
                               Sink())
    assert got is not None
    assert got.endswith('Exception: ERROR 42704 (undefined_object) role "nobody" does not exist')


async def test_recovers_after_losing_its_connection(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "recover", "id int primary key")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "recover"})
    db.execute("insert into recover values (0)")
    await sink.wait(1)
    db.execute("select pg_terminate_backend(pid) from pg_stat_activity"
               " where application_name = 'supasync realtime feed'")
    # Changes committed before the new slot exists are lost (like the real server); keep
    # writing until one gets through, each attempt bounded by a timeout.
    for i in range(1, 60):
        db.execute("insert into recover values (%s)", (i,))
        try:
            await sink.wait(2, within=0.5)
            break
        except TimeoutError:
            continue
    assert len(sink.items) >= 2
    ids = [d["record"]["id"] for d in sink.data]
    assert ids == sorted(ids)


async def test_failing_deliver_does_not_stop_others(
    feed: ChangeFeed, db: psycopg.Connection[Any]
) -> None:
    table(db, "boom", "id int primary key")

    def bad(payload: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    assert await feed.subscribe(next(_keys), [(1, {"table": "boom"})], SERVICE, bad) is None
    _, good = await sub(feed, {"table": "boom"})
    db.execute("insert into boom values (1), (2)")
    assert [d["record"]["id"] for d in (await good.wait(2), good.data)[1]] == [1, 2]


async def test_typed_values_in_records(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    db.execute("drop type if exists feed_mood cascade")
    db.execute("create type feed_mood as enum ('sad', 'happy')")
    table(db, "typed", "id int primary key, n numeric(6,2), f float8, j json, jb jsonb,"
                       " arr int[], tags text[], ts timestamptz, d date, b bytea,"
                       " m feed_mood, iv interval, u uuid, c char(4)")
    _, sink = await sub(feed, {"table": "typed"})
    db.execute("""insert into typed values (1, 1.5, 'NaN', '{"b": 1, "a": 2, "a": 3}',
                  '{"z": [1, 2.50]}', '{1,NULL,3}', '{"x,y",z}', '2026-01-02 03:04:05.6+00',
                  '2026-01-02', '\\x00ff', 'happy', '1 day 02:00:00',
                  '6f1e0000-0000-0000-0000-00000000000a', 'ab')""")
    (d,) = (p["data"] for p in await sink.wait(1))
    rec = d["record"]
    assert rec == {
        "id": 1, "n": 1.5, "f": "NaN", "j": {"a": 3, "b": 1}, "jb": {"z": [1, 2.5]},
        "arr": [1, None, 3], "tags": ["x,y", "z"], "ts": "2026-01-02T03:04:05.6+00:00",
        "d": "2026-01-02", "b": "00ff", "m": "happy", "iv": "1 day 02:00:00",
        "u": "6f1e0000-0000-0000-0000-00000000000a", "c": "ab  ",
    }
    assert rec["n"].text == "1.50"  # exact digits kept (values.ExactNumber)
    assert [c["type"] for c in d["columns"]] == [
        "int4", "numeric", "float8", "json", "jsonb", "_int4", "_text", "timestamptz", "date",
        "bytea", "feed_mood", "interval", "uuid", "bpchar"]
