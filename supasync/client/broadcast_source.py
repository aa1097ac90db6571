"""Broadcast from Database as a change source: ``rt.subscribe("todos", source="broadcast")``.

Supabase recommends Broadcast over Postgres Changes at scale: a trigger calls
``realtime.broadcast_changes(topic, TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD)``,
which inserts ``{"record", "old_record", "operation", "table", "schema"}`` into
``realtime.messages``; the server streams it to the (private) channel ``topic``, authorised by RLS
on ``realtime.messages`` instead of one RLS check per subscriber per change
(realtime-protocol.md §9.3-9.5). ``supasync sql <table> --broadcast`` prints or installs the
trigger and an example policy.

A :class:`BroadcastSource` is the connection member
(:class:`~supasync.client.connection.ChannelEndpoint`) of such a subscription: it joins the
topic (private by default), turns each message of the subscription's table into the payload a
postgres_changes subscription would have received (:func:`as_postgres_changes`) and feeds the
:class:`~supasync.client.subscription.Subscription` unchanged - so the same ``Change`` model,
store, gap repair, read model and handlers apply. What the server would have filtered
(postgres_changes filters are applied by the server) is filtered here, binding by binding, with
the subscription's own filter (:meth:`~supasync.core.filters.Filter.matches`).

Gaps: every drop, expiry or restart is a gap the subscription's gate repairs as usual (REST,
with the subscriber's token), which covers everything the gap missed. The server's replay
(``config.broadcast.replay``, private channels, at most 25 messages, §9.4) is used only by a
subscription without repair (``repair="off"``): each rejoin asks for the messages since just
before the gap, which closes a short gap. With repair, replayed messages are not fed: they
carry no commit time (only the time they are received), so the gate could not order them
against the rows its repair just read - found by the drop test in
tests/integration/test_broadcast_source.py, where a replayed INSERT brought back a row deleted
before the gap. (Skipping the repair when a replay returned fewer than its limit would need the
gate's cooperation: not done.)

``commit_timestamp``: a broadcast message carries none; the time it was received is used.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from realtime import AsyncRealtimeChannel, AsyncRealtimeClient

from ..core.broadcast import validate_topic
from ..core.errors import ChannelUnauthorized, SubscriptionError, Unauthorized
from .channels import REPLAY_MARGIN_S, GuardedChannel, leave_channel
from .subscription import PassThroughGate, Subscription, SubscriptionInfo

__all__ = ["BroadcastSource", "as_postgres_changes"]

logger = logging.getLogger("supasync.client.broadcast_source")

#: How long a leave may wait for the server's reply.
LEAVE_TIMEOUT = 10.0


def as_postgres_changes(sub: Subscription, message: Mapping[str, Any],
                        received_at: str) -> dict[str, Any] | None:
    """The postgres_changes payload (``{"ids", "data"}``) the server would have sent ``sub``
    for one ``realtime.broadcast_changes`` message, or None when ``sub`` would not have got it
    (another table, an event it did not ask for, a row its filter leaves out). Pure.

    ``message`` is the broadcast's payload: ``{"record", "old_record", "operation", "table",
    "schema"[, "id"]}``.
    """
    op = message.get("operation")
    if message.get("table") != sub.table or message.get("schema") != sub.schema:
        return None
    if op not in ("INSERT", "UPDATE", "DELETE"):
        return None
    record = message.get("record") if isinstance(message.get("record"), Mapping) else None
    old = message.get("old_record") if isinstance(message.get("old_record"), Mapping) else None
    ids: list[int] = []
    select: tuple[str, ...] | None = None
    for index, binding in enumerate(sub.bindings):
        if binding.event not in ("*", op):
            continue
        if binding.filter is not None:
            row = old if op == "DELETE" else record
            if row is None or not sub.filter.matches(row):
                continue
        ids.append(index)
        select = binding.select
    if not ids:
        return None
    if select is not None:
        record = {k: v for k, v in record.items() if k in select} if record else record
        old = {k: v for k, v in old.items() if k in select} if old else old
    return {"ids": ids, "data": {
        "schema": sub.schema, "table": sub.table, "commit_timestamp": received_at,
        "type": op, "columns": [], "errors": None,
        "record": dict(record) if record is not None and op != "DELETE" else {},
        "old_record": dict(old) if old is not None else {},
    }}


class BroadcastSource:
    """Feeds a :class:`Subscription` from a broadcast topic (see the module docstring)."""

    repairs_gaps = True

    def __init__(self, sub: Subscription, topic: str, *, private: bool = True,
                 replay: bool = True) -> None:
        self.sub = sub
        self.name = sub.name
        self.topic = validate_topic(topic)
        self.private = private
        # The server replays private channels only; a repairing gate does better (docstring).
        self.replay = replay and private and isinstance(sub.gate, PassThroughGate)
        self._replay_since: float | None = None
        self._live = False
        self.received = 0
        self.replayed = 0

    def __repr__(self) -> str:
        return f"<BroadcastSource {self.topic!r} -> {self.name!r}>"

    @property
    def error(self) -> SubscriptionError | None:
        return self.sub.error if isinstance(self.sub.error, SubscriptionError) else None

    @error.setter
    def error(self, value: SubscriptionError | None) -> None:
        if isinstance(value, Unauthorized) and not isinstance(value, ChannelUnauthorized) \
                and self.private:
            value = ChannelUnauthorized(value.subscription, value.reason, topic=self.topic)
        self.sub.error = value

    async def _start(self, info: SubscriptionInfo | None, report: Callable[[object], None],
                     on_overflow: Callable[[], None]) -> None:
        assert info is not None, "the connection knows the subscription this source feeds"
        await self.sub._start(info, on_overflow=on_overflow)

    def _open_channel(self, client: AsyncRealtimeClient) -> AsyncRealtimeChannel:
        broadcast: dict[str, Any] = {"ack": False, "self": False}
        if self.replay and self._replay_since is not None:
            broadcast["replay"] = {"since": int(self._replay_since * 1000), "limit": 25}
        params: dict[str, Any] = {"config": {
            "broadcast": broadcast, "presence": {"key": "", "enabled": False},
            "private": self.private}}
        rt = GuardedChannel(client, f"realtime:{self.topic}", params)
        client.channels[rt.topic] = rt
        rt.on_broadcast("*", self._on_message)
        return rt

    async def _leave_channel(self, client: AsyncRealtimeClient,
                             channel: AsyncRealtimeChannel) -> None:
        await leave_channel(client, channel, LEAVE_TIMEOUT)

    def _on_message(self, raw: Mapping[str, Any]) -> None:
        # In realtime-py's listen task: never raise.
        try:
            body = raw.get("payload")
            if not isinstance(body, Mapping):
                return
            meta = raw.get("meta")
            if isinstance(meta, Mapping) and meta.get("replayed"):
                self.replayed += 1
                if not self.replay:
                    return
            now = _dt.datetime.now(_dt.UTC).isoformat().replace("+00:00", "Z")
            payload = as_postgres_changes(self.sub, body, now)
            if payload is None:
                return
            self.received += 1
            self.sub._feed(payload)
        except Exception:
            logger.exception("%r: a message could not be fed", self)

    def _mark_gap(self, reason: str) -> None:
        if self._live:
            self._replay_since = time.time() - REPLAY_MARGIN_S
        self._live = False
        self.sub._mark_gap(reason)

    def _mark_subscribed(self) -> None:
        self._live = True
        self.sub._mark_subscribed()

    async def _close(self) -> None:
        await self.sub._close()
