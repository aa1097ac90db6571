"""Broadcast and presence, sans I/O: the message model, the send outbox and the presence state.

Nothing here touches a socket or a clock of its own; :mod:`supasync.client.channels` drives it.

* :class:`Broadcast` is what a receiver sees: ``topic``, ``event``, ``payload``, ``id`` and
  ``replayed``. :func:`parse_broadcast` builds one from the server's ``broadcast`` payload
  (``{"type":"broadcast","event":…,"payload":{…}[, "meta":{"id":…,"replayed":true}]}``,
  realtime-protocol.md §9.1-9.4) and takes supasync's message id out of the payload.
* **Message ids.** The server gives an id (``meta.id``) only to messages that went through
  ``realtime.messages`` (database broadcasts, replay). Messages a client pushes over the socket
  are forwarded as they are, so supasync puts its id inside the payload under :data:`ID_KEY`
  (the one place every server version forwards unchanged); supasync receivers take it out again
  and expose it as :attr:`Broadcast.id`. A message re-sent after a reconnect keeps its id, so a
  receiver drops the copy with :class:`SeenIds`.
* :class:`Outbox` is the bounded FIFO of messages waiting for the server's ack. The sender takes
  :meth:`Outbox.head`, pushes it, and on the ack calls :meth:`Outbox.acked`; after a drop the
  head is simply sent again (same id), so order per sender holds and nothing is lost while the
  process lives. Full means :class:`OutboxFull` at ``put`` time - never a silent drop.
* :class:`PresenceState` applies ``presence_state`` / ``presence_diff`` payloads (Phoenix
  Presence format, §9.6: ``{key: {"metas": [{"phx_ref": …, …}]}}``) and returns the joins and
  leaves they mean. A ``presence_state`` after a rejoin replaces the state and yields only the
  real differences, so a reconnect does not look like everyone leaving and coming back.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import ConfigError, OutboxFull

__all__ = [
    "ID_KEY",
    "Broadcast",
    "Outbox",
    "OutboxFull",
    "OutgoingMessage",
    "PresenceChange",
    "PresenceState",
    "SeenIds",
    "new_message_id",
    "parse_broadcast",
    "validate_event",
    "validate_topic",
]

#: The payload key carrying supasync's message id on socket broadcasts (see module docstring).
ID_KEY: Final = "_supasync_id"


#: Ids are a random per-process prefix and a counter: unique across processes and restarts
#: (128 random bits) and several times cheaper than a uuid4 per message (measured in
#: bench/broadcast.py, where the id is on every send's path).
_PREFIX = uuid.uuid4().hex
_COUNTER = itertools.count(1)


def new_message_id() -> str:
    """A fresh message id: ``<32 random hex digits>-<counter in hex>``."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


def validate_topic(topic: object) -> str:
    """Check a channel topic as the user writes it (without the ``realtime:`` prefix).

    Raises:
        ConfigError: empty, not a string, or already prefixed with ``realtime:`` (the prefix is
            added on the wire, realtime-protocol.md §3.1).
    """
    if not isinstance(topic, str) or not topic:
        raise ConfigError("a channel topic must be a non-empty string", key="topic",
                          value=repr(topic), fix="e.g. rt.channel('room1')")
    if topic.startswith("realtime:"):
        raise ConfigError("a channel topic is given without the 'realtime:' prefix",
                          key="topic", value=topic, fix=f"use {topic[len('realtime:'):]!r}")
    return topic


def validate_event(event: object) -> str:
    """Check a broadcast event name (a non-empty string; ``"*"`` only for listening)."""
    if not isinstance(event, str) or not event:
        raise ConfigError("a broadcast event must be a non-empty string", key="event",
                          value=repr(event), fix="e.g. ch.send('progress', {...})")
    return event


@dataclass(frozen=True)
class Broadcast:
    """One broadcast message as a receiver sees it.

    Attributes:
        topic: the channel topic (without ``realtime:``).
        event: the event name.
        payload: the message body (supasync's id key removed).
        id: the message id: ``meta.id`` for database broadcasts and replays, supasync's id for
            messages a supasync client sent, else None.
        replayed: True for a message the server replayed at join (§9.4).
    """

    topic: str
    event: str
    payload: dict[str, Any]
    id: str | None = None
    replayed: bool = False


def parse_broadcast(topic: str, raw: Mapping[str, Any]) -> Broadcast | None:
    """Build a :class:`Broadcast` from a ``broadcast`` frame's payload; None if it is not one
    (no string ``event``). Pure."""
    event = raw.get("event")
    if not isinstance(event, str):
        return None
    body = raw.get("payload")
    payload: dict[str, Any] = dict(body) if isinstance(body, Mapping) else {"value": body}
    own_id = payload.pop(ID_KEY, None)
    meta = raw.get("meta")
    meta_id = meta.get("id") if isinstance(meta, Mapping) else None
    replayed = bool(meta.get("replayed")) if isinstance(meta, Mapping) else False
    mid = meta_id if isinstance(meta_id, str) else own_id if isinstance(own_id, str) else None
    return Broadcast(topic, event, payload, mid, replayed)


class SeenIds:
    """The last ``size`` message ids seen, for dropping re-sent copies. ``seen(id)`` returns
    True for a repeat (and records a new one)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, mid: str | None) -> bool:
        if mid is None:
            return False
        if mid in self._ids:
            return True
        self._ids[mid] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


@dataclass(eq=False)
class OutgoingMessage:
    """A message waiting in the outbox. ``seq`` orders it; ``attempts`` counts pushes."""

    seq: int
    id: str
    event: str
    payload: dict[str, Any]
    attempts: int = 0
    #: Anything the driver attaches (the client keeps the caller's future here).
    waiter: Any = field(default=None, repr=False)

    def wire_payload(self) -> dict[str, Any]:
        """The ``broadcast`` push payload (§9.1), the id inside the user payload."""
        return {"type": "broadcast", "event": self.event,
                "payload": {**self.payload, ID_KEY: self.id}}


class Outbox:
    """A bounded FIFO of messages not yet acknowledged by the server. Pure.

    ``put`` appends (raising :class:`OutboxFull` at ``limit``), ``head`` is the next to send,
    ``acked(msg)`` removes it, ``fail(msg)`` removes it for good (a permanent error), and
    ``drain()`` empties it (client closing) returning what was left.
    """

    def __init__(self, topic: str, limit: int = 1000) -> None:
        if limit < 1:
            raise ConfigError("outbox_size must be at least 1", key="outbox_size",
                              value=str(limit))
        self.topic = topic
        self.limit = limit
        self._items: deque[OutgoingMessage] = deque()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[OutgoingMessage]:
        return iter(self._items)

    def put(self, event: str, payload: Mapping[str, Any], *, mid: str | None = None,
            seq: int | None = None) -> OutgoingMessage:
        """Queue a message; ``mid``/``seq`` restore one loaded from a durable outbox."""
        if len(self._items) >= self.limit:
            raise OutboxFull(self.topic, self.limit)
        self._seq = max(self._seq + 1, (seq or 0))
        msg = OutgoingMessage(self._seq, mid or new_message_id(), event, dict(payload))
        self._items.append(msg)
        return msg

    @property
    def head(self) -> OutgoingMessage | None:
        return self._items[0] if self._items else None

    def acked(self, msg: OutgoingMessage) -> None:
        self._remove(msg)

    def fail(self, msg: OutgoingMessage) -> None:
        self._remove(msg)

    def _remove(self, msg: OutgoingMessage) -> None:
        try:
            self._items.remove(msg)
        except ValueError:
            pass  # already gone (acked twice, or drained)

    def drain(self) -> list[OutgoingMessage]:
        items = list(self._items)
        self._items.clear()
        return items


@dataclass(frozen=True)
class PresenceChange:
    """What a presence update meant: for each key, the metas that joined and that left.

    ``state`` is the whole state after the update (``{key: [meta, ...]}``, metas without
    ``phx_ref``/``phx_ref_prev``)."""

    joins: dict[str, list[dict[str, Any]]]
    leaves: dict[str, list[dict[str, Any]]]
    state: dict[str, list[dict[str, Any]]]

    @property
    def empty(self) -> bool:
        return not self.joins and not self.leaves


_REF_KEYS = ("phx_ref", "phx_ref_prev")


def _metas(entry: object) -> list[dict[str, Any]]:
    metas = entry.get("metas") if isinstance(entry, Mapping) else None
    if not isinstance(metas, list):
        return []
    return [dict(m) for m in metas if isinstance(m, Mapping)]


def _ref(meta: Mapping[str, Any]) -> object:
    return meta.get("phx_ref")


def _public(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _REF_KEYS}


class PresenceState:
    """The presence of one channel, kept across rejoins. Pure.

    Metas are identified by ``phx_ref`` (the Phoenix Presence rule); a ``presence_state``
    replaces the state and reports what differs; a ``presence_diff`` applies joins then leaves.
    """

    def __init__(self) -> None:
        self._state: dict[str, list[dict[str, Any]]] = {}

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """``{key: [meta, ...]}`` without the refs (a copy)."""
        return {k: [_public(m) for m in metas] for k, metas in self._state.items()}

    def clear(self) -> PresenceChange:
        """Forget everything (e.g. presence no longer known); reports everyone as left."""
        leaves = self.snapshot()
        self._state = {}
        return PresenceChange({}, leaves, {})

    def apply_state(self, raw: Mapping[str, Any]) -> PresenceChange:
        new: dict[str, list[dict[str, Any]]] = {}
        for key, entry in raw.items():
            metas = _metas(entry)
            if metas:
                new[str(key)] = metas
        joins: dict[str, list[dict[str, Any]]] = {}
        leaves: dict[str, list[dict[str, Any]]] = {}
        for key, metas in new.items():
            old_refs = {_ref(m) for m in self._state.get(key, [])}
            joined = [_public(m) for m in metas if _ref(m) not in old_refs]
            if joined:
                joins[key] = joined
        for key, metas in self._state.items():
            new_refs = {_ref(m) for m in new.get(key, [])}
            left = [_public(m) for m in metas if _ref(m) not in new_refs]
            if left:
                leaves[key] = left
        self._state = new
        return PresenceChange(joins, leaves, self.snapshot())

    def apply_diff(self, raw: Mapping[str, Any]) -> PresenceChange:
        joins: dict[str, list[dict[str, Any]]] = {}
        leaves: dict[str, list[dict[str, Any]]] = {}
        raw_joins = raw.get("joins")
        raw_leaves = raw.get("leaves")
        for key, entry in (raw_joins.items() if isinstance(raw_joins, Mapping) else ()):
            metas = _metas(entry)
            if not metas:
                continue
            current = self._state.setdefault(str(key), [])
            refs = {_ref(m) for m in current}
            # An update carries phx_ref_prev: the meta it replaces leaves without a leave event.
            prev = {m.get("phx_ref_prev") for m in metas} - {None}
            current[:] = [m for m in current if _ref(m) not in prev]
            added = [m for m in metas if _ref(m) not in refs]
            current.extend(added)
            if added:
                joins[str(key)] = [_public(m) for m in added]
        for key, entry in (raw_leaves.items() if isinstance(raw_leaves, Mapping) else ()):
            gone = {_ref(m) for m in _metas(entry)}
            current = self._state.get(str(key), [])
            left = [m for m in current if _ref(m) in gone]
            if left:
                leaves[str(key)] = [_public(m) for m in left]
            remaining = [m for m in current if _ref(m) not in gone]
            if remaining:
                self._state[str(key)] = remaining
            else:
                self._state.pop(str(key), None)
        return PresenceChange(joins, leaves, self.snapshot())
