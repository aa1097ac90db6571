"""Channel logic of the Realtime server, sans I/O: join payloads, the join pipeline, binding
ids, system messages, tokens, and the postgres_changes subscription state.

Theory of operation. A socket holds at most one :class:`Channel` per topic. A join is
decided by :func:`check_join` (which raises :class:`JoinError` with the real reason text,
realtime-protocol.md §3.3/§3.5) and parsed by :func:`parse_join_payload` (§3.2, which never
rejects: bad fields fall back to defaults and are reported in ``problems``). A joined
channel is a small state machine over its postgres_changes subscription (``PG_TRANSITIONS``
below): the I/O layer tells it what the feed answered and sends the :class:`Message` values
the channel returns. Nothing here awaits, sleeps or reads a clock: callers pass ``now``.

Ordering rules this module encodes: a join reply goes out before anything else for that join
(§11.5); changes delivered while the subscription is still pending are held back until the
``Subscribed to PostgreSQL`` system message has been sent, so a client never sees a change
before it is told the subscription is live (§4, §11.6); a channel ends with a system error
followed by ``phx_close`` (§4, §11.7).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import zlib
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Final

from ..keys import TokenError, expired_for, verify
from .protocol import Message, Ref, dumps

__all__ = [
    "MAX_CHANNELS_PER_CLIENT",
    "TOKEN_RECHECK_S",
    "Channel",
    "JoinError",
    "JoinParams",
    "PgState",
    "binding_id",
    "check_join",
    "expiry_delay",
    "flexible_bool",
    "join_token",
    "legacy_params",
    "parse_join_payload",
    "sub_topic_of",
    "system_payload",
]

log = logging.getLogger("supasync.devstack.realtime")

TOPIC_PREFIX: Final = "realtime:"
#: [S] ``max_channels_per_client`` default (§10).
MAX_CHANNELS_PER_CLIENT: Final = 100
#: The expiry timer re-checks at least this often ([S] ``realtime_channel.ex`` §7.3).
TOKEN_RECHECK_S: Final = 300.0


def sub_topic_of(topic: str) -> str | None:
    """The sub topic of a routable topic, or ``None`` if the topic is not ``realtime:*``
    (then every message to it gets the ``unmatched topic`` reply, §3.1)."""
    if topic.startswith(TOPIC_PREFIX):
        return topic[len(TOPIC_PREFIX):]
    return None


# -- join payload (§3.2) ---------------------------------------------------------------------
def flexible_bool(value: Any, default: bool = False) -> tuple[bool, bool]:
    """``(value, valid)``: JSON booleans, or the strings "true"/"false" in any case
    ([S] ``payloads/flexible_boolean.ex``). ``None``/absent gives the default."""
    if value is None:
        return default, True
    if isinstance(value, bool):
        return value, True
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true", True
    return default, False


@dataclass(frozen=True)
class JoinParams:
    """What a join payload asks for, after defaults. ``legacy`` is the no-``config`` API."""

    broadcast_self: bool = False
    broadcast_ack: bool = False
    replay: Any = None
    replay_requested: bool = False
    replication_ready: bool = False
    presence_enabled: bool = False
    presence_key: str = ""
    private: bool = False
    postgres_changes: tuple[dict[str, Any], ...] = ()
    legacy: bool = False
    access_token: str | None = None
    user_token: str | None = None
    problems: tuple[str, ...] = ()


def _obj(value: Any, name: str, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    problems.append(f"{name} must be an object")
    return {}


def parse_join_payload(payload: Any) -> JoinParams:
    """Parse a ``phx_join`` payload. Never raises: invalid parts become defaults and are
    listed in ``problems`` (the real server logs ``InvalidJoinPayload`` and joins anyway)."""
    problems: list[str] = []
    if not isinstance(payload, dict):
        problems.append("payload must be an object")
        payload = {}
    legacy = "config" not in payload  # [S] realtime_channel.ex new_api?/1
    config = _obj(payload.get("config"), "config", problems)
    broadcast = _obj(config.get("broadcast"), "config.broadcast", problems)
    presence = _obj(config.get("presence"), "config.presence", problems)

    def flag(obj: dict[str, Any], key: str, name: str) -> bool:
        value, ok = flexible_bool(obj.get(key))
        if not ok:
            problems.append(f"{name} must be a boolean")
        return value

    pg_raw = config.get("postgres_changes")
    bindings: list[dict[str, Any]] = []
    if isinstance(pg_raw, list):
        for entry in pg_raw:
            if entry is None:  # null entries are dropped
                continue
            if isinstance(entry, dict):
                bindings.append(entry)
            else:
                problems.append("config.postgres_changes entries must be objects")
    elif pg_raw is not None:
        problems.append("config.postgres_changes must be a list")

    key = presence.get("key")
    if key is None:
        key = ""
    elif not isinstance(key, str):
        key = dumps(key) if not isinstance(key, int | float) else str(key)

    def token(name: str) -> str | None:
        value = payload.get(name)
        if value is None or isinstance(value, str):
            return value
        problems.append(f"{name} must be a string")
        return None

    return JoinParams(
        broadcast_self=flag(broadcast, "self", "config.broadcast.self"),
        broadcast_ack=flag(broadcast, "ack", "config.broadcast.ack"),
        replay=broadcast.get("replay"),
        replay_requested="replay" in broadcast and broadcast.get("replay") is not None,
        replication_ready=flag(broadcast, "replication_ready",
                               "config.broadcast.replication_ready"),
        presence_enabled=flag(presence, "enabled", "config.presence.enabled"),
        presence_key=key,
        private=flag(config, "private", "config.private"),
        postgres_changes=tuple(bindings),
        legacy=legacy,
        access_token=token("access_token"),
        user_token=token("user_token"),
        problems=tuple(problems),
    )


def legacy_params(sub_topic: str) -> dict[str, Any]:
    """The legacy API parses the sub topic as ``schema[:table[:filter]]`` (§3.2)."""
    parts = sub_topic.split(":", 2)
    params: dict[str, Any] = {"event": "*", "schema": parts[0]}
    if len(parts) > 1:
        params["table"] = parts[1]
    if len(parts) > 2:
        params["filter"] = parts[2]
    return params


def binding_id(params: dict[str, Any]) -> int:
    """A stable id for one postgres_changes parameter object: CRC32 of its canonical JSON,
    31 bits. Identical objects get identical ids (§3.4). Never 0, because realtime-py
    treats a falsy id as "no id" ([PY] ``types.py`` ``PostgresChangesCallback``)."""
    canonical = dumps_canonical(params)
    return (zlib.crc32(canonical.encode()) & 0x7FFFFFFF) or 1


def dumps_canonical(value: Any) -> str:
    """Key-sorted compact JSON: the same object always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


# -- join pipeline (§3.3, §3.5) ----------------------------------------------------------------
class JoinError(Exception):
    """A join is refused; the reply reason is ``"Code: text"``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.text}"


def join_token(params: JoinParams, socket_token: str) -> str:
    """The channel token: ``access_token``, else legacy ``user_token``, else the socket's
    ``apikey``; values starting ``sb_`` are replaced by the socket token (§3.2, [S]
    ``realtime_channel.ex`` ``assign_access_token/2``)."""
    for candidate in (params.access_token, params.user_token):
        if candidate is not None:
            return socket_token if candidate.startswith("sb_") else candidate
    return socket_token


def check_join(
    sub_topic: str,
    params: JoinParams,
    *,
    socket_token: str,
    secret: str,
    channel_count: int,
    now: float,
) -> tuple[str, dict[str, Any]]:
    """Run the join pipeline's checks in the server's order and return ``(token, claims)``.

    Raises :class:`JoinError` with the first failing check's reason. ``channel_count`` is
    the number of channels already joined on this socket (not counting a duplicate join's
    old channel, which is closed first).
    """
    if not sub_topic:
        raise JoinError("TopicNameRequired", "You must provide a topic name")
    if channel_count >= MAX_CHANNELS_PER_CLIENT:
        raise JoinError("ChannelRateLimitReached", "Too many channels")
    token = join_token(params, socket_token)
    try:
        claims = verify(token, secret, now=now)
    except TokenError as exc:
        raise JoinError(exc.code, exc.text) from exc
    if params.replay_requested:
        if not params.private:
            raise JoinError("UnableToReplayMessages", "Replay is not allowed for public channels")
        replay = params.replay
        since = replay.get("since") if isinstance(replay, dict) else None
        if not isinstance(since, int) or isinstance(since, bool):
            raise JoinError("UnableToReplayMessages", "Replay params are not valid")
    return token, claims


def expiry_delay(claims: dict[str, Any], now: float) -> float:
    """Seconds until the channel re-checks its token: ``min(5 min, exp - now)`` (§7.3)."""
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        return 0.0
    return max(0.0, min(TOKEN_RECHECK_S, round(exp) - now))


def system_payload(extension: str, status: str, message: str, channel: str) -> dict[str, Any]:
    """A ``system`` message payload (§4)."""
    return {"extension": extension, "status": status, "message": message, "channel": channel}


SUBSCRIBED_TEXT: Final = "Subscribed to PostgreSQL"


# -- the postgres_changes subscription state machine -----------------------------------------
class PgState(enum.Enum):
    NONE = "none"  # the join has no postgres_changes bindings
    PENDING = "pending"  # subscribe sent to the feed, no answer yet
    ACTIVE = "active"  # feed said ok; changes flow
    FAILED = "failed"  # feed refused; the channel stays joined (§4)
    ENDED = "ended"  # channel closed; the feed must be told to unsubscribe

#: ``(state, event) -> next state``. Events: ``subscribe`` (join with bindings), ``ok`` and
#: ``error`` (feed answers to subscribe or update_claims), ``close`` (leave, duplicate join,
#: token failure, socket gone). Pairs not listed leave the state unchanged.
PG_TRANSITIONS: Final[dict[tuple[PgState, str], PgState]] = {
    (PgState.NONE, "subscribe"): PgState.PENDING,
    (PgState.PENDING, "ok"): PgState.ACTIVE,
    (PgState.PENDING, "error"): PgState.FAILED,
    (PgState.ACTIVE, "ok"): PgState.ACTIVE,
    (PgState.ACTIVE, "error"): PgState.FAILED,
    (PgState.FAILED, "ok"): PgState.ACTIVE,
    (PgState.FAILED, "error"): PgState.FAILED,
    (PgState.NONE, "close"): PgState.ENDED,
    (PgState.PENDING, "close"): PgState.ENDED,
    (PgState.ACTIVE, "close"): PgState.ENDED,
    (PgState.FAILED, "close"): PgState.ENDED,
}


@dataclass
class Channel:
    """One joined channel on one socket.

    The I/O layer creates it after :func:`check_join` succeeded, sends
    :meth:`join_reply`, then the messages of :meth:`after_join`, and hands the feed
    :attr:`bindings` when :attr:`needs_feed` is true. ``key`` identifies it to the feed.
    """

    key: Hashable
    topic: str
    join_ref: Ref
    params: JoinParams
    token: str
    claims: dict[str, Any]
    presence_key: str = ""
    bindings: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    echo: list[dict[str, Any]] = field(default_factory=list)
    pg: PgState = PgState.NONE
    closed: bool = False
    subscribed_once: bool = False
    presence_on: bool = False
    was_feeding: bool = False
    # Private channels (§9.5): what RLS on realtime.messages allowed at join, the write checks
    # made so far (per extension), and the ids replayed at join (their live copies are skipped).
    broadcast_read: bool = True
    presence_read: bool = True
    can_write: dict[str, bool] = field(default_factory=dict)
    replayed_ids: set[str] = field(default_factory=set)
    sub_topic: str = field(init=False, default="")
    _held: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        sub = sub_topic_of(self.topic)
        self.sub_topic = sub if sub is not None else self.topic
        self.presence_on = self.params.presence_enabled
        if self.params.legacy:
            # Legacy joins subscribe to the sub topic itself and echo no bindings.
            legacy = legacy_params(self.sub_topic)
            self.bindings = [(binding_id(legacy), legacy)]
        else:
            for params in self.params.postgres_changes:
                bid = binding_id(params)
                self.bindings.append((bid, params))
                self.echo.append({**params, "id": bid})

    # -- replies and pushes --------------------------------------------------------------
    @property
    def namespace(self) -> tuple[bool, str]:
        """Public and private channels of one name are separate namespaces (§3.1)."""
        return (self.params.private, self.sub_topic)

    def join_reply(self, ref: Ref) -> Message:
        """``{"status":"ok","response":{"postgres_changes":[...]}}`` (§3.4)."""
        return Message.reply(self.join_ref, ref, self.topic, "ok",
                             {"postgres_changes": self.echo})

    def push(self, event: str, payload: Any) -> Message:
        return Message.push(self.join_ref, self.topic, event, payload)

    def system(self, extension: str, status: str, message: str) -> Message:
        return self.push("system", system_payload(extension, status, message, self.sub_topic))

    def close_message(self) -> Message:
        return Message.close(self.join_ref, self.topic)

    @property
    def needs_feed(self) -> bool:
        return bool(self.bindings)

    def _step(self, event: str) -> None:
        self.pg = PG_TRANSITIONS.get((self.pg, event), self.pg)

    # -- postgres_changes ------------------------------------------------------------------
    def begin_subscribe(self) -> None:
        """The I/O layer is about to call ``feed.subscribe``."""
        self._step("subscribe")

    def feed_answer(self, error: str | None) -> list[Message]:
        """The feed answered ``subscribe`` or ``update_claims``; returns what to send: the
        system message, then any changes held back while the subscription was pending."""
        if self.closed:
            return []
        if error is None:
            self._step("ok")
            self.subscribed_once = True
            out = [self.system("postgres_changes", "ok", SUBSCRIBED_TEXT)]
            held, self._held = self._held, []
            out.extend(self._change_message(p) for p in held)
            return out
        self._step("error")
        self._held.clear()
        return [self.system("postgres_changes", "error", error)]

    def deliver(self, payload: dict[str, Any]) -> Message | None:
        """A change from the feed (``{"ids","data"}``): the message to send now, or ``None``
        (held until subscribed, or dropped because the channel is gone)."""
        if self.pg is PgState.ACTIVE:
            return self._change_message(payload)
        if self.pg is PgState.PENDING:
            self._held.append(payload)
        return None

    def _change_message(self, payload: dict[str, Any]) -> Message:
        if self.params.legacy:
            # Legacy API: event named after the change type, bare change object (§3.2).
            data = payload.get("data") or {}
            return Message.fanout(self.topic, str(data.get("type", "*")), data)
        return Message.fanout(self.topic, "postgres_changes", payload)

    # -- ending ---------------------------------------------------------------------------
    def close(self) -> bool:
        """Mark the channel closed; returns True the first time (send ``phx_close`` then)
        and tells whether the feed must be told (see :attr:`was_feeding`)."""
        if self.closed:
            return False
        self.was_feeding = self.pg is not PgState.NONE
        self.closed = True
        self._step("close")
        self._held.clear()
        return True

    def shutdown(self, message: str) -> list[Message]:
        """End the channel after an error: system error then ``phx_close`` (§4)."""
        if not self.close():
            return []
        return [self.system("system", "error", message), self.close_message()]

    # -- tokens (§7) -----------------------------------------------------------------------
    def access_token(self, value: Any, secret: str, now: float) -> tuple[str, list[Message]]:
        """Handle an ``access_token`` push; the server never replies (§7.2).

        Returns ``(outcome, messages)``: ``"ignored"`` (null, same token, ``sb_`` key),
        ``"refreshed"`` (claims replaced; call ``feed.update_claims`` if subscribed and
        re-arm the expiry timer) or ``"closed"`` (messages = system error + phx_close).
        """
        if value is None or value == self.token:
            return "ignored", []
        if isinstance(value, str) and value.startswith("sb_"):
            return "ignored", []
        try:
            claims = verify(value, secret, now=now)
        except TokenError as exc:
            return "closed", self.shutdown(exc.text)
        assert isinstance(value, str)
        self.token, self.claims = value, claims
        return "refreshed", []

    def check_token(self, secret: str, now: float) -> list[Message]:
        """The expiry timer fired: re-validate; empty list means still valid (re-arm)."""
        try:
            self.claims = verify(self.token, secret, now=now)
        except TokenError as exc:
            return self.shutdown(exc.text)
        return []

    def expire(self, now: float) -> list[Message]:
        """Fault control: treat the token as expired now (N from the real ``exp``, else 0)."""
        try:
            seconds = expired_for(self.claims, now)
        except (KeyError, TypeError):
            seconds = 0
        return self.shutdown(f"Token has expired {max(0, math.floor(seconds))} seconds ago")
