"""Presence, sans I/O: who is tracked on a topic, in Phoenix's ``metas`` format.

Contract (realtime-protocol.md §9.6):

* :class:`PresenceTopic` holds the tracked entries of one namespace (public or private topic).
  ``track(owner, key, meta)`` and ``untrack(owner)`` return the ``presence_diff`` payload to
  fan out (``{"joins": {...}, "leaves": {...}}``), or ``None`` when nothing changed
  (re-tracking an identical object is a no-op). ``state()`` is the ``presence_state``
  payload. Each tracked meta is the client's object plus ``phx_ref``; an update replaces the
  old meta with a new one that also carries ``phx_ref_prev`` (joins: new, leaves: old).
* :func:`parse_presence_push` reads a client ``presence`` push and says what to do and what to
  reply.
* :class:`CallWindow` is the per-channel client presence rate limit (5 calls per 30 s).

``owner`` is any hashable that identifies one channel join (one socket, one topic).
"""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CLIENT_PRESENCE_MAX_CALLS",
    "CLIENT_PRESENCE_WINDOW_S",
    "CallWindow",
    "PresencePush",
    "PresenceTopic",
    "new_phx_ref",
    "parse_presence_push",
]

#: [S] ``config/runtime.exs`` ``CLIENT_PRESENCE_MAX_CALLS`` / ``CLIENT_PRESENCE_WINDOW_MS``.
CLIENT_PRESENCE_MAX_CALLS: Final = 5
CLIENT_PRESENCE_WINDOW_S: Final = 30.0

_counter = itertools.count(1)
_salt = os.urandom(4)


def new_phx_ref() -> str:
    """A unique opaque ref in the style Phoenix uses (``"F-3wnVUmNbUUFcHi"``)."""
    raw = _salt + next(_counter).to_bytes(8, "big")
    return "F" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class _Entry:
    key: str
    meta: dict[str, Any]  # the client's object plus phx_ref (and phx_ref_prev on update)
    tracked: dict[str, Any]  # the client's object as sent, to spot identical re-tracks


@dataclass
class PresenceTopic:
    """The tracked presences of one topic namespace."""

    entries: dict[Hashable, _Entry] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """``{key: {"metas": [meta, ...]}}`` in tracking order."""
        out: dict[str, Any] = {}
        for entry in self.entries.values():
            out.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
        return out

    def track(self, owner: Hashable, key: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Track (or update) ``owner`` under ``key``; returns the diff or ``None``."""
        old = self.entries.get(owner)
        if old is not None and old.key == key and old.tracked == obj:
            return None
        meta = {**obj, "phx_ref": new_phx_ref()}
        leaves: dict[str, Any] = {}
        if old is not None:
            meta["phx_ref_prev"] = old.meta["phx_ref"]
            leaves = {old.key: {"metas": [old.meta]}}
        self.entries[owner] = _Entry(key, meta, dict(obj))
        return {"joins": {key: {"metas": [meta]}}, "leaves": leaves}

    def untrack(self, owner: Hashable) -> dict[str, Any] | None:
        """Forget ``owner``; returns the leave diff or ``None`` if it was not tracked."""
        old = self.entries.pop(owner, None)
        if old is None:
            return None
        return {"joins": {}, "leaves": {old.key: {"metas": [old.meta]}}}

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class PresencePush:
    """What a client ``presence`` push asks for: ``action`` is ``"track"``, ``"untrack"`` or
    ``"error"``; ``reply`` is the ``(status, response)`` to send back."""

    action: str
    meta: dict[str, Any] | None
    reply: tuple[str, Any]


def parse_presence_push(payload: Any) -> PresencePush:
    """Read ``{"type":"presence","event":"track","payload":{...}}`` or ``..."untrack"``.

    The event name is case-insensitive and ``type`` is not required (realtime-py leaves it
    out). Replies follow §9.6: ``ok {}``; a non-object track payload gets
    ``Presence track payload must be a map``; anything else ``error {}``.
    """
    if not isinstance(payload, dict):
        return PresencePush("error", None, ("error", {}))
    event = payload.get("event")
    event = event.lower() if isinstance(event, str) else None
    if event == "track":
        meta = payload.get("payload")
        if not isinstance(meta, dict):
            return PresencePush(
                "error", None,
                ("error", {"reason": "Presence track payload must be a map"}))
        return PresencePush("track", meta, ("ok", {}))
    if event == "untrack":
        return PresencePush("untrack", None, ("ok", {}))
    return PresencePush("error", None, ("error", {}))


@dataclass
class CallWindow:
    """At most ``limit`` calls in any ``window`` seconds (a sliding log of call times)."""

    limit: int = CLIENT_PRESENCE_MAX_CALLS
    window: float = CLIENT_PRESENCE_WINDOW_S
    calls: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        """Record a call at ``now``; False when it is over the limit."""
        self.calls = [t for t in self.calls if now - t < self.window]
        self.calls.append(now)
        return len(self.calls) <= self.limit
