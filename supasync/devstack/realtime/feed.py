"""The postgres_changes pipeline of the local Realtime server (realtime-protocol.md §5, §6).

:class:`ChangeFeed` owns one temporary logical replication slot (``pgoutput``, publication
``supabase_realtime``), created and polled on one dedicated connection (a temporary slot
belongs to its session, §6), and a registry of channel subscriptions. Each poll consumes
whole transactions from the slot; each batch then goes through the same steps as the real
server's ``apply_rls`` (§5.3), all in batched SQL:

1. candidates: subscriptions whose table pattern and event match, and that were active when
   the transaction committed (commit LSN at or after the subscription's start LSN);
2. 400 / 401 for tables without a primary key / roles that cannot read it;
3. filters, evaluated in SQL with both sides cast to the column type (one query per batch);
4. RLS for tables with row security (INSERT/UPDATE only), per role and claims, at poll time;
5. values rendered like ``to_jsonb`` (fast path in Python, the rest one query per batch);
6. one payload per channel and ``select`` list, delivered in commit order.

Cadence (§6, tuned for latency): a poll that returned rows is followed by another at once;
otherwise the loop waits ``fast_idle_s`` while changes flowed recently, ``slow_idle_s``
after a quiet second, and ``poll_interval_ms`` when nobody is subscribed. The cluster runs
with ``synchronous_commit=off`` and logical decoding only reads flushed WAL, so each poll
first flushes WAL when it lags (a transactional logical message committed synchronously by
this session; pgoutput ignores messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import psycopg

from . import authorize
from .authorize import RlsCheck, TableMeta
from .change_payloads import (
    ERROR_400,
    ERROR_401,
    Binding,
    Candidate,
    Channel,
    Deliver,
    RenderedRow,
    build_payloads,
)
from .pg_filters import ParamsError, filter_sql, like_regex, parse_params
from .pgoutput import ChangeAssembler, RowChange
from .values import SqlRenderer

if TYPE_CHECKING:
    from ..context import StackContext

log = logging.getLogger("supasync.devstack.realtime.feed")

class ChangeFeed:
    """postgres_changes for the local server: one slot, one poll loop, many channels.

    Contract (what the websocket layer relies on):

    * :meth:`subscribe` validates every binding like the real server and returns ``None`` on
      success or the exact system-error text. From its return on, every matching change
      committed afterwards is delivered to ``deliver`` (a plain callable, called once per
      change and channel with ``{"ids": [...], "data": {...}}``), in commit order.
    * :meth:`update_claims` re-validates with new claims (a refreshed token); on success the
      new role and claims apply to every later change. On failure the old claims stay.
    * :meth:`unsubscribe`: no delivery for that key once it returns.
    * :meth:`pause` stops reading the slot (changes wait there); :meth:`resume` lets them
      flow again, in order.
    """

    fast_idle_s = 0.002
    slow_idle_s = 0.010
    active_window_s = 1.0
    batch_changes = 2000
    catalog_ttl_s = 0.5
    max_statement_failures = 5

    def __init__(self, ctx: StackContext) -> None:
        self.ctx = ctx
        self.slot = f"supasync_rt_{os.getpid()}_{secrets.token_hex(4)}"
        self._channels: dict[Hashable, Channel] = {}
        self._lock = asyncio.Lock()  # held from reading the slot until dispatch is done
        self._ctl_lock = asyncio.Lock()
        self._slot_conn: psycopg.AsyncConnection[Any] | None = None
        self._ctl_conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._wake = asyncio.Event()
        self._last_activity = 0.0
        self._assembler = ChangeAssembler()
        self._type_names: dict[tuple[int, int], str] = {}
        self._slot_ready = asyncio.Event()
        self._tables: dict[int, TableMeta] = {}
        self._privileges: dict[tuple[str, int], frozenset[str]] = {}
        self._catalog_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Create the slot (so later commits are retained) and start polling."""
        self._running = True
        await self._open_slot()
        self._task = asyncio.create_task(self._run(), name=f"change-feed {self.slot}")

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        self._resumed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for conn in (self._slot_conn, self._ctl_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._slot_conn = self._ctl_conn = None

    async def _open_slot(self) -> None:
        self._slot_ready.clear()
        conn = await self.ctx.connect()
        # Our own commits (the WAL-flush nudge) must be synchronous; see module docstring.
        await conn.execute("set synchronous_commit = on")
        await conn.execute("set application_name = 'supasync realtime feed'")
        # Date/time text from the decoder feeds the Python fast path (values.py): ISO form.
        await conn.execute("set datestyle = 'ISO, MDY'")
        await conn.execute("set bytea_output = 'hex'")
        await conn.execute(
            "select pg_create_logical_replication_slot(%s, 'pgoutput', true)", [self.slot]
        )
        self._slot_conn = conn
        self._assembler = ChangeAssembler()
        self._slot_ready.set()
        # The poll statement: nudge a WAL flush if it lags, then consume up to N changes.
        # The slot name is ours (letters, digits, underscores), not client input.
        self._poll_sql = (
            "begin; do $$ begin if pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()"
            " then perform pg_logical_emit_message(true, 'supasync_flush', ''); end if; end $$;"
            " commit; "
            f"select data from pg_logical_slot_get_binary_changes('{self.slot}', NULL,"
            f" {int(self.batch_changes)}, 'proto_version', '1',"
            " 'publication_names', 'supabase_realtime')"
        )

    async def _ctl(self) -> psycopg.AsyncConnection[Any]:
        if self._ctl_conn is None or self._ctl_conn.closed:
            self._ctl_conn = await self.ctx.connect()
        return self._ctl_conn

    # -- subscriptions -------------------------------------------------------------------
    async def _validate(
        self, bindings: list[tuple[int, dict[str, Any]]], claims: dict[str, Any]
    ) -> list[Binding] | str:
        parsed: list[Binding] = []
        try:
            for bid, raw in bindings:
                p = parse_params(raw if isinstance(raw, dict) else {})
                parsed.append(
                    Binding(bid, p, like_regex(p.schema), like_regex(p.table), raw)
                )
        except ParamsError as exc:
            return exc.text
        role = claims.get("role")
        async with self._ctl_lock:
            conn = await self._ctl()
            try:
                for b in parsed:
                    await authorize.validate(
                        conn, b.params, role if isinstance(role, str) else None
                    )
            except ParamsError as exc:
                return exc.text
        return parsed

    async def subscribe(
        self,
        key: Hashable,
        bindings: list[tuple[int, dict[str, Any]]],
        claims: dict[str, Any],
        deliver: Deliver,
    ) -> str | None:
        """Register a channel's bindings; ``None`` on success, else the system-error text."""
        result = await self._validate(bindings, claims)
        if isinstance(result, str):
            return result
        await self._slot_ready.wait()
        async with self._lock:
            # Under the lock no batch is between reading the slot and dispatching, so every
            # transaction committing after this LSN will be seen with this channel registered.
            async with self._ctl_lock:
                conn = await self._ctl()
                cur = await conn.execute("select (pg_current_wal_insert_lsn() - '0/0')::int8")
                row = await cur.fetchone()
            start = int(row[0]) if row else 0
            self._channels[key] = Channel(key, result, dict(claims), deliver, start)
            self._catalog_at = 0.0
        self._wake.set()
        return None

    async def update_claims(self, key: Hashable, claims: dict[str, Any]) -> str | None:
        channel = self._channels.get(key)
        if channel is None:
            return None
        result = await self._validate(
            [(b.id, b.raw) for b in channel.bindings], claims
        )
        if isinstance(result, str):
            return result
        async with self._lock:
            current = self._channels.get(key)
            if current is not None:
                current.set_claims(claims)
            self._catalog_at = 0.0
        return None

    async def unsubscribe(self, key: Hashable) -> None:
        async with self._lock:
            self._channels.pop(key, None)

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    # -- the poll loop -------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while self._running:
            try:
                if self._slot_conn is None or self._slot_conn.closed:
                    await self._open_slot()
                while self._running:
                    if not self._resumed.is_set():
                        await self._resumed.wait()
                        continue
                    if await self.poll_once():
                        self._last_activity = time.monotonic()
                        failures = 0
                        continue
                    failures = 0
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                failures += 1
                conn = self._slot_conn
                broken = conn is None or conn.closed or isinstance(exc, psycopg.OperationalError)
                if not broken and failures < self.max_statement_failures:
                    # A statement failed on a live session (e.g. the publication is missing):
                    # the slot did not advance; keep it and try again.
                    log.warning("change feed: poll failed (%s); retrying", exc)
                    assert conn is not None
                    with contextlib.suppress(Exception):
                        await conn.rollback()
                else:
                    # Like the real poller: the slot dies with its connection; changes
                    # committed until it is recreated are lost (§6).
                    log.warning("change feed: %s; recreating the slot", exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    self._slot_conn = None
                    self._slot_ready.clear()
                    failures = 0
                await asyncio.sleep(0.2)  # retry delay after a database failure
            except Exception:
                log.exception("change feed: unexpected error in a batch; continuing")
                await asyncio.sleep(0.05)  # avoid a hot loop on a persistent bug

    async def _idle(self) -> None:
        if not self._channels:
            timeout = max(self.ctx.config.poll_interval_ms, 1) / 1000
        elif time.monotonic() - self._last_activity < self.active_window_s:
            timeout = self.fast_idle_s
        else:
            timeout = self.slow_idle_s
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def poll_once(self) -> int:
        """Read one batch from the slot and dispatch it. Returns the number of messages."""
        conn = self._slot_conn
        assert conn is not None
        async with self._lock:
            cur = await conn.execute(self._poll_sql)
            rows: list[Any] = []
            while True:
                if cur.description is not None:
                    rows = await cur.fetchall()
                if not cur.nextset():
                    break
            if not rows:
                return 0
            changes: list[RowChange] = []
            feed = self._assembler.feed
            for (data,) in rows:
                change = feed(data)
                if change is not None:
                    changes.append(change)
            if changes and self._channels:
                await self._dispatch(conn, changes)
            return len(rows)

    # -- one batch -----------------------------------------------------------------------
    async def _dispatch(self, conn: psycopg.AsyncConnection[Any], changes: list[RowChange]) -> None:
        channels = list(self._channels.values())
        route: dict[tuple[int, str], list[tuple[Channel, list[Binding]]]] = {}
        work: list[tuple[RowChange, list[Candidate]]] = []
        for change in changes:
            rel = change.relation
            rk = (rel.relid, change.op)
            targets = route.get(rk)
            if targets is None:
                targets = []
                for ch in channels:
                    bs = [b for b in ch.bindings if b.covers(rel.schema, rel.table, change.op)]
                    if bs:
                        targets.append((ch, bs))
                route[rk] = targets
            cands = [
                Candidate(ch, bs) for ch, bs in targets if change.commit_lsn >= ch.start_lsn
            ]
            if cands:
                work.append((change, cands))
        if not work:
            return
        tables, privileges = await self._catalog(
            conn,
            {c.relation.relid for c, _ in work},
            {(cand.channel.role, ch.relation.relid) for ch, cands in work for cand in cands},
        )
        # 400 / 401 before anything else, regardless of filters (§5.2).
        for change, cands in work:
            meta = tables.get(change.relation.relid)
            for cand in cands:
                if meta is None:
                    cand.visible = False
                    continue
                if change.op != "DELETE":
                    if not meta.pk:
                        cand.error = ERROR_400
                    elif not set(meta.pk) <= privileges[(cand.channel.role, meta.relid)]:
                        cand.error = ERROR_401
        # Values are rendered for every change that may be delivered, in the same round trip
        # as the filters (one statement per batch), then RLS narrows the deliveries.
        renderer = SqlRenderer(self._type_names)
        max_bytes = self.ctx.config.max_record_bytes
        prepared = []
        for change, cands in work:
            meta = tables.get(change.relation.relid)
            if meta is None or not any(c.visible for c in cands):
                continue
            rendered = RenderedRow.prepare(change, renderer, max_bytes)
            prepared.append((change, meta, cands, rendered))
        await renderer.prepare(conn)
        f_parts, f_params, f_done = self._filter_sql(work, tables)
        r_parts, r_params, r_keys = renderer.sql_parts()
        if f_parts or r_parts:
            statement = "select " + ", ".join(f_parts + r_parts)
            cur = await conn.execute(statement, f_params + r_params)
            found = await cur.fetchone()
            assert found is not None
            f_done(list(found[: len(f_parts)]))
            renderer.accept(r_keys, found[len(f_parts) :])
        else:
            f_done([])
        await self._apply_rls(conn, work, tables)
        for change, meta, cands, rendered in prepared:
            live = [c for c in cands if c.error is not None or (c.visible and c.passed)]
            if not live:
                continue
            rendered.resolve(renderer)
            shared: dict[Any, dict[str, Any]] = {}  # same role and select: same data
            for cand in live:
                for payload in build_payloads(change, meta, cand, rendered, privileges, shared):
                    try:
                        cand.channel.deliver(payload)
                    except Exception:
                        log.exception("change feed: deliver callback failed")

    async def _catalog(
        self,
        conn: psycopg.AsyncConnection[Any],
        relids: set[int],
        pairs: set[tuple[str, int]],
    ) -> tuple[dict[int, TableMeta], dict[tuple[str, int], frozenset[str]]]:
        """Table facts and column privileges, cached for ``catalog_ttl_s`` (and dropped on
        every subscribe): DDL and GRANTs take effect within that time, and a steady stream
        of changes costs no catalog round trips."""
        now = time.monotonic()
        if now - self._catalog_at > self.catalog_ttl_s:
            self._tables.clear()
            self._privileges.clear()
            self._catalog_at = now
        missing = relids - self._tables.keys()
        if missing:
            self._tables.update(await authorize.load_tables(conn, missing))
        missing_pairs = pairs - self._privileges.keys()
        if missing_pairs:
            self._privileges.update(await authorize.selectable_columns(conn, missing_pairs))
        return self._tables, self._privileges

    def _filter_sql(
        self,
        work: list[tuple[RowChange, list[Candidate]]],
        tables: dict[int, TableMeta],
    ) -> tuple[list[str], list[Any], Callable[[list[Any]], None]]:
        """The select-list items evaluating every filter of the batch, their parameters, and
        the function that takes the fetched arrays and marks the bindings that passed."""
        # Collect (filter, column text) pairs, deduplicated, grouped by SQL shape.
        groups: dict[tuple[str, str, bool, str], dict[tuple[str | None, str], int]] = {}
        pending: list[tuple[Candidate, Binding, list[list[tuple[Any, Any]]]]] = []
        for change, cands in work:
            meta = tables.get(change.relation.relid)
            if meta is None:
                continue
            types = {c.name: c.type_sql for c in meta.columns}
            # INSERT/UPDATE test the new row; DELETE passes on the new row (absent) or the old
            # identity (§5.3 step 3). A filter on a column missing from the row fails.
            rows = [change.old or {}] if change.op == "DELETE" else [change.new or {}]
            for cand in cands:
                if cand.error is not None:
                    continue
                for b in cand.bindings:
                    if not b.params.filters:
                        cand.passed.append(b)
                        continue
                    alternatives: list[list[tuple[Any, Any]]] = []
                    for row in rows:
                        refs: list[tuple[Any, Any]] | None = []
                        for f in b.params.filters:
                            if f.column not in row or f.column not in types:
                                refs = None
                                break
                            gk = (types[f.column], f.op, f.negate,
                                  f.value if f.op == "is" else "")
                            bucket = groups.setdefault(gk, {})
                            vk = (row[f.column], f.value)
                            if vk not in bucket:
                                bucket[vk] = len(bucket)
                            assert refs is not None
                            refs.append((gk, bucket[vk]))
                        if refs is not None:
                            alternatives.append(refs)
                    if alternatives:
                        pending.append((cand, b, alternatives))
        keys = list(groups)
        parts: list[str] = []
        params: list[Any] = []
        for gk in keys:
            type_sql, op, negate, is_value = gk
            expr = filter_sql(op, negate, type_sql, is_value, "x.a", "x.b")
            parts.append(
                f"array(select {expr} from unnest(%s::text[], %s::text[]) with ordinality"
                " as x(a, b, i) order by x.i)"
            )
            bucket = groups[gk]
            params.append([vk[0] for vk in bucket])
            params.append([vk[1] for vk in bucket])

        def done(arrays: list[Any]) -> None:
            results = dict(zip(keys, arrays, strict=True))
            for cand, b, alternatives in pending:
                if any(all(results[gk][i] for gk, i in refs) for refs in alternatives):
                    cand.passed.append(b)
            for _, cands in work:
                for cand in cands:
                    if len(cand.passed) > 1:  # ids in binding order
                        order = {id(b): i for i, b in enumerate(cand.bindings)}
                        cand.passed.sort(key=lambda b: order[id(b)])

        return parts, params, done

    async def _apply_rls(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: list[tuple[RowChange, list[Candidate]]],
        tables: dict[int, TableMeta],
    ) -> None:
        groups: dict[tuple[str, str], tuple[dict[str, Any], list[tuple[Candidate, RlsCheck]]]] = {}
        for change, cands in work:
            meta = tables.get(change.relation.relid)
            if meta is None or not meta.rls or change.op == "DELETE":
                continue
            new = change.new or {}
            pk_values = tuple(new.get(c) for c in meta.pk)
            for cand in cands:
                if cand.error is not None or not cand.passed:
                    continue
                claims = cand.channel.claims
                gk = (cand.channel.role, json.dumps(claims, sort_keys=True))
                entry = groups.setdefault(gk, (claims, []))
                entry[1].append((cand, RlsCheck(meta, pk_values)))
        for (role, _), (claims, items) in groups.items():
            seen = await authorize.visible(conn, role, claims, [chk for _, chk in items])
            for (cand, _), ok in zip(items, seen, strict=True):
                cand.visible = ok


