"""Private channels and Broadcast from Database on the local Realtime server
(realtime-protocol.md §9.3-9.5).

* :class:`ChannelAuthorizer` answers the real server's RLS questions on ``realtime.messages``
  ([S] ``lib/realtime/tenants/authorization.ex``, read, not copied):

  - **read** (at join of a private channel): in one transaction, insert a probe row per
    extension (``broadcast``, and ``presence`` when presence is on) for the topic as the
    server's own role, set ``role``, ``realtime.topic``, ``request.jwt.claims``,
    ``request.jwt.claim.sub``/``.role`` and ``request.headers`` transaction-locally, select the
    probes back as that role, roll back. A visible probe = read allowed for its extension.
  - **write** (on the first broadcast or presence push of a private channel): set the same
    settings, insert a row as the role, roll back; ``insufficient_privilege`` (an RLS
    ``with check`` failure) = no write.
  - **replay** (join with ``config.broadcast.replay``): the newest ``min(max(limit, 1), 25)``
    private broadcast rows of the topic inserted at or after ``since`` (and within 72 h),
    oldest first.

* :class:`MessagesFeed` streams inserts into ``realtime.messages`` the way the real server
  does: a temporary logical replication slot (``pgoutput``) on the publication
  ``supabase_realtime_messages_publication`` (created by bootstrap.sql), polled; every insert
  with a topic, event, ``private``, id and a JSON payload becomes a user broadcast to that topic
  in the private or public namespace, with ``meta: {"id": …}``. Inserts made while the feed is
  not reading are still in the slot (it is created when the server starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from .pgoutput import ChangeAssembler

if TYPE_CHECKING:
    from ..context import StackContext

__all__ = ["REPLAY_MAX", "ChannelAuthorizer", "DbMessage", "MessagesFeed", "Policies"]

log = logging.getLogger("supasync.devstack.realtime.messages")

PUBLICATION = "supabase_realtime_messages_publication"
#: At most this many messages are replayed at a join (§9.4).
REPLAY_MAX = 25
#: Messages older than this are gone (the real server drops daily partitions after ~72 h).
RETENTION_S = 72 * 3600

_SETTINGS = (
    "select set_config('role', %s, true), set_config('realtime.topic', %s, true),"
    " set_config('request.jwt.claims', %s, true), set_config('request.jwt.claim.sub', %s, true),"
    " set_config('request.jwt.claim.role', %s, true), set_config('request.headers', '{}', true)"
)


@dataclass(frozen=True)
class Policies:
    broadcast_read: bool
    presence_read: bool


@dataclass(frozen=True)
class DbMessage:
    id: str
    topic: str
    event: str
    private: bool
    payload: bytes  # JSON text


class PolicyError(Exception):
    """The policy check itself failed (e.g. the claims' role does not exist)."""


def _settings_params(topic: str, claims: dict[str, Any]) -> list[Any]:
    role = str(claims.get("role") or "anon")
    sub = claims.get("sub")
    return [role, topic, json.dumps(claims), "" if sub is None else str(sub), role]


class ChannelAuthorizer:
    """RLS checks for private channels on one database connection (serialised by a lock)."""

    def __init__(self, ctx: StackContext) -> None:
        self.ctx = ctx
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await self.ctx.connect()
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def read(self, topic: str, claims: dict[str, Any], *, presence: bool) -> Policies:
        extensions = ["broadcast", "presence"] if presence else ["broadcast"]
        probes = {ext: str(uuid.uuid4()) for ext in extensions}
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction(force_rollback=True):
                    for ext, pid in probes.items():
                        await conn.execute(
                            "insert into realtime.messages (id, topic, extension) "
                            "values (%s, %s, %s)", [pid, topic, ext])
                    await conn.execute(_SETTINGS, _settings_params(topic, claims))
                    cur = await conn.execute(
                        "select id::text, extension from realtime.messages "
                        "where id = any(%s::uuid[])", [list(probes.values())])
                    seen = {ext for _id, ext in await cur.fetchall()}
            except psycopg.Error as exc:
                raise PolicyError(str(exc).strip()) from exc
        return Policies("broadcast" in seen, "presence" in seen)

    async def write(self, topic: str, claims: dict[str, Any], extension: str) -> bool:
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction(force_rollback=True):
                    await conn.execute(_SETTINGS, _settings_params(topic, claims))
                    await conn.execute(
                        "insert into realtime.messages (topic, extension) values (%s, %s)",
                        [topic, extension])
            except psycopg.errors.InsufficientPrivilege:
                return False
            except psycopg.Error as exc:
                log.info("write check for %s failed: %s", topic, exc)
                return False
        return True

    async def replay(self, topic: str, since_ms: int, limit: int | None) -> list[DbMessage]:
        n = REPLAY_MAX if limit is None else min(max(int(limit), 1), REPLAY_MAX)
        since = max(since_ms / 1000, time.time() - RETENTION_S)
        async with self._lock:
            conn = await self._connection()
            cur = await conn.execute(
                "select id::text, topic, event, payload::text from realtime.messages"
                " where topic = %s and private is true and extension = 'broadcast'"
                " and payload is not null and inserted_at >= to_timestamp(%s) at time zone 'UTC'"
                " order by inserted_at desc limit %s", [topic, since, n])
            rows = await cur.fetchall()
        return [DbMessage(i, t, e or "", True, p.encode()) for i, t, e, p in reversed(rows)]


class MessagesFeed:
    """Inserts into ``realtime.messages``, streamed to ``deliver`` in commit order."""

    idle_s = 0.005
    batch = 5000

    def __init__(self, ctx: StackContext, deliver: Callable[[DbMessage], None]) -> None:
        self.ctx = ctx
        self.deliver = deliver
        self.slot = f"supasync_rt_msg_{os.getpid()}_{secrets.token_hex(4)}"
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._assembler = ChangeAssembler()
        self.delivered = 0

    async def start(self) -> None:
        await self._open()
        self._task = asyncio.create_task(self._run(), name=f"messages-feed {self.slot}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _open(self) -> None:
        conn = await self.ctx.connect()
        await conn.execute("set synchronous_commit = on")
        await conn.execute("set application_name = 'supasync realtime messages'")
        await conn.execute(
            "select pg_create_logical_replication_slot(%s, 'pgoutput', true)", [self.slot])
        self._conn = conn
        self._assembler = ChangeAssembler()
        # The slot name is ours (letters, digits, underscores), not client input.
        self._poll_sql = (
            "begin; do $$ begin if pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()"
            " then perform pg_logical_emit_message(true, 'supasync_flush', ''); end if; end $$;"
            " commit; "
            f"select data from pg_logical_slot_get_binary_changes('{self.slot}', NULL,"
            f" {int(self.batch)}, 'proto_version', '1', 'publication_names', '{PUBLICATION}')"
        )

    async def _run(self) -> None:
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    await self._open()
                if not await self.poll_once():
                    await asyncio.sleep(self.idle_s)  # nothing in the slot: poll again soon
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("messages feed: %s; reopening", exc)
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                self._conn = None
                await asyncio.sleep(0.2)  # retry delay after a database failure
            except Exception:
                log.exception("messages feed: unexpected error; continuing")
                await asyncio.sleep(0.05)

    async def poll_once(self) -> int:
        conn = self._conn
        assert conn is not None
        cur = await conn.execute(self._poll_sql)
        rows: list[Any] = []
        while True:
            if cur.description is not None:
                rows = await cur.fetchall()
            if not cur.nextset():
                break
        feed = self._assembler.feed
        for (data,) in rows:
            change = feed(data)
            if change is None or change.op != "INSERT" or change.new is None:
                continue
            if (change.relation.schema, change.relation.table) != ("realtime", "messages"):
                continue
            row = change.new
            mid, topic, event = row.get("id"), row.get("topic"), row.get("event")
            private, payload = row.get("private"), row.get("payload")
            if None in (mid, topic, event, private, payload, row.get("inserted_at")):
                continue  # e.g. a binary payload (not sent to V1 clients) or a probe row
            if row.get("extension") != "broadcast":
                continue
            assert mid is not None and topic is not None and event is not None
            assert payload is not None
            self.delivered += 1
            self.deliver(DbMessage(mid, topic, event, private == "t", payload.encode()))
        return len(rows)
