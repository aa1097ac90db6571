"""Broadcast from Database as a change source (issue #14): ``supasync sql --broadcast
--apply`` installs the trigger and policy; ``subscribe(..., source="broadcast")`` delivers the
same Change model with the snapshot, live changes, filters and gap repair of a postgres_changes
subscription."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync import Change, ChannelUnauthorized, ConfigError, Realtime
from supasync.cli.sql import run_sql
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 30.0
USER = "00000000-0000-0000-0000-0000000000c3"


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    with StackProcess() as s:
        s.sql("""
            create table public.notes (id int primary key, body text not null,
                                       owner text not null);
            grant select on public.notes to authenticated;
            insert into public.notes values (1, 'before', 'alice');
            create table public.hidden (id int primary key);
        """)
        for table, role in (("public.notes", "authenticated"), ("public.hidden", None)):
            assert run_sql([table], apply=True, uninstall=False, retention="7 days",
                           db_url=s.db_url, env_file=Path("/nonexistent.env"),
                           toml_path=Path("/nonexistent.toml"), broadcast=True,
                           read_role=role, out=io.StringIO()) == 0
        yield s


def client(stack: StackProcess) -> Realtime:
    token = stack.mint({"role": "authenticated", "sub": USER, "aud": "authenticated"})
    return Realtime(stack.url, stack.anon_key, token=token, heartbeat_interval=1.0,
                    heartbeat_timeout=3.0)


class Seen:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.event = asyncio.Event()

    async def take(self, change: Change) -> None:
        self.changes.append(change)
        self.event.set()

    async def until(self, cond: object, what: str) -> None:
        assert callable(cond)

        async def wait() -> None:
            while not cond():
                self.event.clear()
                if cond():
                    return
                await self.event.wait()

        try:
            await asyncio.wait_for(wait(), WAIT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.changes}") from None


async def test_changes_from_broadcast_with_snapshot_live_and_repair(stack: StackProcess) -> None:
    seen = Seen()
    async with client(stack) as rt:
        notes = rt.subscribe("notes", source="broadcast", handler=seen.take)
        await rt.wait_synced(WAIT)
        await seen.until(lambda: any(c.origin == "snapshot" for c in seen.changes), "snapshot")
        assert [(c.origin, c.op, c.pk) for c in seen.changes] == [("snapshot", "INSERT", (1,))]

        await asyncio.to_thread(stack.sql, """
            insert into public.notes values (2, 'two', 'bob');
            update public.notes set body = 'changed' where id = 1;
            delete from public.notes where id = 2;
        """)
        await seen.until(lambda: len(seen.changes) >= 4, "three live changes")
        assert [(c.origin, c.op, c.pk) for c in seen.changes[1:]] == [
            ("live", "INSERT", (2,)), ("live", "UPDATE", (1,)), ("live", "DELETE", (2,))]
        assert seen.changes[2].new == {"id": 1, "body": "changed", "owner": "alice"}

        # A drop: what is written around it arrives once (live, replayed or repaired).
        await asyncio.to_thread(stack.drop_connections)
        await asyncio.to_thread(stack.sql, "insert into public.notes values (3, 'three', 'c')")
        await seen.until(lambda: any(c.pk == (3,) for c in seen.changes), "row 3")
        await rt.wait_synced(WAIT)
        assert [c.pk for c in seen.changes].count((3,)) == 1
        rows = notes.gate.rows()  # type: ignore[attr-defined]
        assert {pk: row["body"] for pk, row in rows.items()} == {(1,): "changed", (3,): "three"}


async def test_filter_applies_locally_and_refusals_are_typed(stack: StackProcess) -> None:
    seen = Seen()
    async with client(stack) as rt:
        rt.subscribe("notes", source="broadcast", filter="owner=eq.zed", handler=seen.take,
                     repair="off")
        await rt.wait_live(WAIT)
        await asyncio.to_thread(stack.sql, """
            insert into public.notes values (10, 'not mine', 'someone');
            insert into public.notes values (11, 'mine', 'zed');
        """)
        await seen.until(lambda: len(seen.changes) >= 1, "zed's row")
        assert [c.pk for c in seen.changes] == [(11,)]
        with pytest.raises(ConfigError, match="already listens to topic 'notes'"):
            rt.subscribe("notes", source="broadcast", name="again")

    async with client(stack) as rt:
        rt.subscribe("hidden", source="broadcast", repair="off")  # no read policy installed
        with pytest.raises(ChannelUnauthorized, match=r"realtime\.topic\(\) = 'hidden'"):
            await rt.wait_live(WAIT)


def test_sql_broadcast_prints_trigger_and_example_policy() -> None:
    out = io.StringIO()
    assert run_sql(["public.todos"], apply=False, uninstall=False, retention="7 days",
                   db_url=None, env_file=Path("/nonexistent.env"),
                   toml_path=Path("/nonexistent.toml"), broadcast=True, topic="todo-feed",
                   out=out) == 0
    text = out.getvalue()
    assert "realtime.broadcast_changes(%L, TG_OP" in text and "'todo-feed'" in text
    assert "security definer" in text
    assert "-- create policy \"supasync read todo-feed\" on realtime.messages" in text
    with pytest.raises(ConfigError, match="exactly one table"):
        run_sql(["a", "b"], apply=False, uninstall=False, retention="7 days", db_url=None,
                env_file=Path("/nonexistent.env"), toml_path=Path("/nonexistent.toml"),
                broadcast=True, out=io.StringIO())


def test_verify_broadcast(stack: StackProcess, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``supasync verify --broadcast``: trigger, read access and a probe, each with a fix."""
    import json

    from supasync.cli.verify import run_verify

    stack.sql("create table if not exists public.plain (id int primary key)")
    monkeypatch.chdir(tmp_path)  # no .env, no supasync.toml: the environment alone
    for key, value in stack.env.items():
        if key.startswith("SUPABASE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", stack.mint(
        {"role": "authenticated", "sub": USER, "aud": "authenticated"}))

    def run(table: str) -> dict[str, dict[str, object]]:
        code = run_verify(broadcast=table, probe=True, timeout=10, as_json=True,
                          env_file=Path(".env"), toml_path=Path("supasync.toml"))
        checks = {c["check"]: c for c in map(json.loads, capsys.readouterr().out.splitlines())}
        checks["exit"] = {"code": code}
        return checks

    ok = run("public.notes")
    assert [ok[c]["status"] for c in ("broadcast-trigger", "broadcast-read",
                                      "broadcast-probe")] == ["ok", "ok", "ok"]
    assert ok["exit"]["code"] == 0

    plain = run("public.plain")
    assert plain["broadcast-trigger"]["status"] == "fail"
    assert "supasync sql public.plain --broadcast" in str(plain["broadcast-trigger"]["fix"])
    assert plain["broadcast-read"]["status"] == "fail"  # no policy for topic 'plain' either
    assert "realtime.topic() = 'plain'" in str(plain["broadcast-read"]["fix"])
    assert plain["exit"]["code"] == 1
