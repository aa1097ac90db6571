"""Phoenix wire format of the Realtime server, sans I/O: messages in, text or bytes out.

Contract:

* :class:`Message` is one Phoenix message, ``(join_ref, ref, topic, event, payload)``.
  Refs are echoed verbatim, so they are whatever JSON scalar the client sent.
* :func:`serializer_for` picks the serializer for a ``vsn`` query value, or returns ``None``
  when the server must refuse the upgrade (HTTP 403, empty body; realtime-protocol.md §1.2,
  [PHXEX] ``socket.ex`` ``negotiate_serializer``). Missing ``vsn`` means ``1.0.0``.
* ``decode_text`` / ``decode_binary`` return a :class:`Message` or raise
  :class:`ProtocolError`; the caller logs it and keeps the socket open (§2.1, [S]
  ``socket.ex`` ``handle_in/2`` rescue). They never raise anything else.
* ``encode`` turns a :class:`Message` into one text frame. ``encode_user_broadcast`` turns a
  :class:`UserBroadcast` into a frame for that serializer, or ``None`` when this kind of
  receiver must not get it (binary payloads never reach V1 sockets, §2.1).

Both serializers are stateless; encode a fan-out message once per serializer and reuse the
frame for every socket of that version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from .values import contains_exact
from .values import dumps as exact_dumps

__all__ = [
    "BINARY",
    "JSON",
    "V1",
    "V2",
    "Message",
    "ProtocolError",
    "Serializer",
    "UserBroadcast",
    "V1Serializer",
    "V2Serializer",
    "dumps",
    "serializer_for",
]

# Encoding byte of binary broadcast frames (§2.2 kinds 3 and 4).
BINARY: Final = 0
JSON: Final = 1

KIND_USER_BROADCAST_PUSH: Final = 3
KIND_USER_BROADCAST: Final = 4

#: A ref or join ref as sent by the client: usually a decimal string or null, but echoed
#: verbatim whatever JSON scalar it is ([PHXEX] ``message.ex`` does not check it).
Ref = Any


class ProtocolError(ValueError):
    """A frame that cannot be understood. The server logs it and keeps going."""


def dumps(value: Any) -> str:
    """Compact JSON, as the real server (Jason) writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_payload(event: str, value: Any) -> str:
    """Like :func:`dumps`, but postgres_changes values keep PostgreSQL's exact digits
    (``numeric`` 1.50 stays ``1.50``, as ``to_jsonb`` renders it; §5.2)."""
    if event == "postgres_changes" and contains_exact(value):
        return exact_dumps(value)
    return dumps(value)


@dataclass(frozen=True, slots=True)
class UserBroadcast:
    """A "user broadcast" (§2.2): a kind-3 push, a DB message or a single-message REST call.

    ``payload`` holds the user payload bytes exactly as received; ``encoding`` says whether
    they are JSON text (:data:`JSON`) or opaque bytes (:data:`BINARY`). ``meta`` is a JSON
    object or ``None``.
    """

    topic: str
    event: str
    payload: bytes
    encoding: int = JSON
    meta: dict[str, Any] | None = None

    def json_payload(self) -> Any:
        """The payload parsed as JSON; raises :class:`ProtocolError` if it is not JSON."""
        if self.encoding != JSON:
            raise ProtocolError("binary payload")
        try:
            return json.loads(self.payload)
        except ValueError as exc:
            raise ProtocolError("user broadcast payload is not JSON") from exc

    def as_broadcast_payload(self) -> dict[str, Any]:
        """The JSON ``broadcast`` payload a V1 receiver gets ([S] ``user_broadcast.ex``
        ``convert_to_json_broadcast``): ``{"event","payload","type"[, "meta"]}``."""
        out: dict[str, Any] = {
            "event": self.event,
            "payload": self.json_payload(),
            "type": "broadcast",
        }
        if self.meta is not None:
            out["meta"] = self.meta
        return out


@dataclass(slots=True)
class Message:
    """One Phoenix message. ``size`` is the length of the frame it came from (0 if built
    here); ``user`` is set for kind-3 binary pushes."""

    join_ref: Ref
    ref: Ref
    topic: str
    event: str
    payload: Any
    size: int = 0
    user: UserBroadcast | None = field(default=None)

    # -- constructors for what the server sends ([PHXEX] socket.ex, §2 and §8.2) ---------
    @classmethod
    def reply(cls, join_ref: Ref, ref: Ref, topic: str, status: str, response: Any) -> Message:
        """A ``phx_reply`` to the push whose ref is ``ref``."""
        return cls(join_ref, ref, topic, "phx_reply", {"status": status, "response": response})

    @classmethod
    def push(cls, join_ref: Ref, topic: str, event: str, payload: Any) -> Message:
        """A channel push (system, presence_state): carries the join's ref, ``ref`` null."""
        return cls(join_ref, None, topic, event, payload)

    @classmethod
    def close(cls, join_ref: Ref, topic: str) -> Message:
        """``phx_close`` for a join: ``ref`` and ``join_ref`` are both the join's ref (§8.2)."""
        return cls(join_ref, join_ref, topic, "phx_close", {})

    @classmethod
    def error(cls, join_ref: Ref, topic: str) -> Message:
        """``phx_error`` after a channel crash (Phoenix 1.8 payload, §8.2)."""
        return cls(join_ref, join_ref, topic, "phx_error", {"reason": "channel_crash"})

    @classmethod
    def fanout(cls, topic: str, event: str, payload: Any) -> Message:
        """A fan-out broadcast (broadcast, presence_diff, postgres_changes): refs null."""
        return cls(None, None, topic, event, payload)


def _check_names(topic: Any, event: Any) -> tuple[str, str]:
    if not isinstance(topic, str):
        raise ProtocolError("topic must be a string")
    if not isinstance(event, str):
        raise ProtocolError("event must be a string")
    return topic, event


def _load_json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("frame is not JSON") from exc


class Serializer:
    """Common interface of the two serializers."""

    vsn: str = ""

    def decode_text(self, text: str | bytes) -> Message:
        raise NotImplementedError

    def decode_binary(self, data: bytes) -> Message:
        raise ProtocolError("binary frames are not accepted by this serializer")

    def encode(self, msg: Message) -> str:
        raise NotImplementedError

    def encode_user_broadcast(self, ub: UserBroadcast) -> str | bytes | None:
        raise NotImplementedError


class V1Serializer(Serializer):
    """``vsn=1.0.0``: one JSON object per text frame ([PHXEX] ``v1_json_serializer.ex``).

    Inbound objects need ``topic``, ``event``, ``payload`` and ``ref`` (``join_ref``
    optional); outbound objects never carry ``join_ref``.
    """

    vsn = "1.0.0"

    def decode_text(self, text: str | bytes) -> Message:
        data = _load_json(text)
        if not isinstance(data, dict):
            raise ProtocolError("V1 frame must be a JSON object")
        try:
            topic, event = _check_names(data["topic"], data["event"])
            payload, ref = data["payload"], data["ref"]
        except KeyError as exc:  # [PHXEX] message.ex from_map! needs all four keys
            raise ProtocolError(f"missing key {exc.args[0]!r}") from exc
        return Message(data.get("join_ref"), ref, topic, event, payload, len(text))

    def encode(self, msg: Message) -> str:
        return dumps_payload(msg.event, {"topic": msg.topic, "event": msg.event,
                                         "payload": msg.payload, "ref": msg.ref})

    def encode_user_broadcast(self, ub: UserBroadcast) -> str | None:
        # V1 cannot carry binary payloads: they are skipped ([S] message_dispatcher.ex).
        if ub.encoding != JSON:
            return None
        try:
            payload = ub.as_broadcast_payload()
        except ProtocolError:
            return None
        return self.encode(Message.fanout(ub.topic, "broadcast", payload))


class V2Serializer(Serializer):
    """``vsn=2.0.0``: JSON arrays ``[join_ref, ref, topic, event, payload]`` in text frames,
    kind-3 binary pushes in and kind-4 binary broadcasts out ([S] ``v2_serializer.ex``)."""

    vsn = "2.0.0"

    def decode_text(self, text: str | bytes) -> Message:
        data = _load_json(text)
        # The server accepts arrays of five or more elements; the rest is ignored.
        if not isinstance(data, list) or len(data) < 5:
            raise ProtocolError("V2 text frame must be an array of at least 5 elements")
        join_ref, ref, topic, event, payload = data[:5]
        topic, event = _check_names(topic, event)
        return Message(join_ref, ref, topic, event, payload, len(text))

    def decode_binary(self, data: bytes) -> Message:
        """Decode a kind-3 user broadcast push into a ``broadcast`` message whose payload is
        ``{"type","event","payload"}`` and whose ``user`` holds the raw parts (§2.2)."""
        if len(data) < 7:
            raise ProtocolError("binary frame too short")
        kind = data[0]
        if kind != KIND_USER_BROADCAST_PUSH:
            raise ProtocolError(f"unsupported binary frame kind {kind}")
        jr_len, ref_len, topic_len, event_len, meta_len, encoding = data[1:7]
        if encoding not in (BINARY, JSON):
            raise ProtocolError(f"unknown payload encoding {encoding}")
        pos = 7
        parts: list[str] = []
        for n in (jr_len, ref_len, topic_len, event_len, meta_len):
            if pos + n > len(data):
                raise ProtocolError("binary frame shorter than its header says")
            try:
                parts.append(data[pos:pos + n].decode())
            except UnicodeDecodeError as exc:
                raise ProtocolError("binary frame header field is not UTF-8") from exc
            pos += n
        join_ref, ref, topic, event, meta_text = parts
        meta: dict[str, Any] | None = None
        if meta_text:
            loaded = _load_json(meta_text)
            if not isinstance(loaded, dict):
                raise ProtocolError("binary frame metadata must be a JSON object")
            meta = loaded
        body = bytes(data[pos:])
        # The server forwards no client metadata ([S] broadcast_handler.ex build_broadcast).
        ub = UserBroadcast(topic, event, body, encoding, None)
        user_payload: Any = body
        if encoding == JSON:
            user_payload = _load_json(body)
        payload = {"type": "broadcast", "event": event, "payload": user_payload}
        if meta is not None:
            payload["meta"] = meta
        return Message(join_ref or None, ref or None, topic, "broadcast", payload, len(data), ub)

    def encode(self, msg: Message) -> str:
        return dumps_payload(msg.event, [msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload])

    def encode_user_broadcast(self, ub: UserBroadcast) -> str | bytes | None:
        topic, event = ub.topic.encode(), ub.event.encode()
        meta = dumps(ub.meta).encode() if ub.meta is not None else b""
        if max(len(topic), len(event), len(meta)) > 255:
            # One-byte length fields cannot hold this; send the JSON shape instead of
            # failing the way the real server does (it raises).
            if ub.encoding != JSON:
                return None
            try:
                payload = ub.as_broadcast_payload()
            except ProtocolError:
                return None
            return self.encode(Message.fanout(ub.topic, "broadcast", payload))
        header = bytes((KIND_USER_BROADCAST, len(topic), len(event), len(meta), ub.encoding))
        return b"".join((header, topic, event, meta, ub.payload))


V1: Final = V1Serializer()
V2: Final = V2Serializer()


def serializer_for(vsn: str | None) -> Serializer | None:
    """The serializer for a ``vsn`` query value, or ``None`` to refuse the upgrade.

    Phoenix matches ``~> 1.0.0`` / ``~> 2.0.0``: any ``1.0.x`` / ``2.0.x`` version.
    """
    if vsn is None:
        return V1
    parts = vsn.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    major, minor = int(parts[0]), int(parts[1])
    if (major, minor) == (1, 0):
        return V1
    if (major, minor) == (2, 0):
        return V2
    return None
