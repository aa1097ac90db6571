"""Broadcast: who listens to which topic, fan-out encoded once per serializer, and the REST
broadcast endpoints.

Contract (realtime-protocol.md §2.2, §9.1, §9.2):

* :class:`Hub` keeps the joined channels per namespace (``(private, sub_topic)``: public and
  private channels of one name never see each other's messages, §3.1) and the presence
  state per namespace. ``fanout`` sends one :class:`~.protocol.Message` to the members,
  encoding it once per serializer version; ``fanout_user`` does the same for a
  :class:`~.protocol.UserBroadcast` (kind 4 for V2 receivers, JSON or nothing for V1).
  Sending never blocks: receivers queue frames (see ``server.Connection``).
* :class:`BroadcastApi` serves ``POST <prefix>/broadcast`` (batch, plain broadcasts) and
  ``POST <prefix>/broadcast/{topic}/events/{event}`` (single, a user broadcast), for the
  prefixes ``/realtime/v1/api`` (through the gateway) and ``/api`` (bare server).

Private topics: socket broadcasts and database broadcasts (messages.py) reach only channels
whose join found broadcast read allowed (§9.5). Not done: the REST endpoints do not check RLS
for private topics (no 403, nothing dropped).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Final, Protocol

from aiohttp import web

from ..keys import TokenError, verify
from .channel import TOPIC_PREFIX, Channel
from .limits import EVENTS_TEXT, TenantLimits
from .presence import PresenceTopic
from .protocol import BINARY, JSON, Message, Serializer, UserBroadcast

__all__ = ["MAX_PAYLOAD_BYTES", "BroadcastApi", "Hub", "Namespace", "Receiver"]

log = logging.getLogger("supasync.devstack.realtime")

#: 3000 KB plus 500 B slack ([S] tenant ``max_payload_size_in_kb``, §10); measured here on
#: the frame or body size, a cheap stand-in for the Erlang term size.
MAX_PAYLOAD_BYTES: Final = 3000 * 1024 + 500

Namespace = tuple[bool, str]


class Receiver(Protocol):
    """A socket as the hub sees it."""

    serializer: Serializer

    def send_frame(self, frame: str | bytes) -> None: ...


class Hub:
    """Channels by namespace, and presence per namespace."""

    def __init__(self, limits: TenantLimits | None = None) -> None:
        self.limits = limits or TenantLimits()
        self.members: dict[Namespace, dict[Hashable, tuple[Channel, Receiver]]] = {}
        self.presence: dict[Namespace, PresenceTopic] = {}

    def add(self, channel: Channel, receiver: Receiver) -> None:
        self.members.setdefault(channel.namespace, {})[channel.key] = (channel, receiver)

    def remove(self, channel: Channel) -> None:
        ns = channel.namespace
        group = self.members.get(ns)
        if group is not None:
            group.pop(channel.key, None)
            if not group:
                del self.members[ns]

    def presence_topic(self, ns: Namespace) -> PresenceTopic:
        topic = self.presence.get(ns)
        if topic is None:
            topic = self.presence[ns] = PresenceTopic()
        return topic

    def drop_presence(self, ns: Namespace) -> None:
        topic = self.presence.get(ns)
        if topic is not None and not len(topic):
            del self.presence[ns]

    def fanout(
        self,
        ns: Namespace,
        msg: Message,
        *,
        exclude: Hashable | None = None,
        only: Callable[[Channel], bool] | None = None,
    ) -> int:
        """Send ``msg`` to every channel of ``ns`` except ``exclude`` (a channel key) and
        those ``only`` rejects; returns how many got it. A ``broadcast`` counts against the
        tenant's events limit (limits.py), which closes the receivers instead when over."""
        frames: dict[str, str] = {}
        sent = 0
        counted = msg.event == "broadcast"
        if counted and self._over_limit(ns, exclude, only):
            return 0
        for key, (channel, receiver) in list(self.members.get(ns, {}).items()):
            if key == exclude or (only is not None and not only(channel)):
                continue
            ser = receiver.serializer
            frame = frames.get(ser.vsn)
            if frame is None:
                frame = frames[ser.vsn] = ser.encode(msg)
            receiver.send_frame(frame)
            sent += 1
        if counted:
            self.limits.count_events(1 + sent, time.monotonic())
        return sent

    def _over_limit(self, ns: Namespace, exclude: Hashable | None,
                    only: Callable[[Channel], bool] | None) -> bool:
        """Over the events limit: shut every would-be receiver down (§10) and say so."""
        if not self.limits.events_over(time.monotonic()):
            return False
        for key, (channel, receiver) in list(self.members.get(ns, {}).items()):
            if key == exclude or (only is not None and not only(channel)):
                continue
            shutdown = getattr(receiver, "shutdown_channel", None)
            if shutdown is not None:
                shutdown(channel, EVENTS_TEXT)
        return True

    def fanout_user(self, ns: Namespace, ub: UserBroadcast, *,
                    exclude: Hashable | None = None,
                    only: Callable[[Channel], bool] | None = None) -> int:
        """Send a user broadcast: kind-4 frames to V2 sockets, JSON (JSON payloads only) to
        V1 sockets (§2.2)."""
        frames: dict[str, str | bytes | None] = {}
        sent = 0
        if self._over_limit(ns, exclude, only):
            return 0
        for key, (channel, receiver) in list(self.members.get(ns, {}).items()):
            if key == exclude or (only is not None and not only(channel)):
                continue
            ser = receiver.serializer
            if ser.vsn in frames:
                frame = frames[ser.vsn]
            else:
                frame = frames[ser.vsn] = ser.encode_user_broadcast(ub)
            if frame is not None:
                receiver.send_frame(frame)
                sent += 1
        self.limits.count_events(1 + sent, time.monotonic())
        return sent


def _unauthorized() -> web.Response:
    return web.json_response({"message": "Unauthorized"}, status=401)


def _token(request: web.Request) -> str | None:
    # `Authorization: Bearer` wins over `apikey` ([S] plugs/auth_tenant.ex).
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("apikey")


class BroadcastApi:
    """The REST broadcast endpoints over a :class:`Hub`."""

    PREFIXES: Final = ("/realtime/v1/api", "/api")

    def __init__(self, hub: Hub, secret: Callable[[], str]) -> None:
        self.hub = hub
        self._secret = secret

    def add_routes(self, app: web.Application) -> None:
        for prefix in self.PREFIXES:
            app.router.add_post(f"{prefix}/broadcast", self.batch)
            app.router.add_post(f"{prefix}/broadcast/{{topic}}/events/{{event}}", self.single)

    def _authorised(self, request: web.Request) -> bool:
        try:
            verify(_token(request), self._secret())
        except TokenError:
            return False
        return True

    async def batch(self, request: web.Request) -> web.Response:
        """``{"messages":[{"topic","event","payload","private"?,"id"?}]}`` → 202."""
        if not self._authorised(request):
            return _unauthorized()
        body = await request.read()
        if len(body) > MAX_PAYLOAD_BYTES:
            return web.json_response(
                {"errors": {"messages": ["Payload size exceeds tenant limit"]}}, status=422)
        try:
            data = json.loads(body)
        except ValueError:
            return web.json_response({"errors": {"messages": ["is invalid"]}}, status=422)
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or not messages:
            return web.json_response({"errors": {"messages": ["can't be blank"]}}, status=422)
        errors = [_message_errors(m) for m in messages]
        if any(errors):
            return web.json_response({"errors": {"messages": errors}}, status=422)
        for m in messages:
            payload: dict[str, Any] = {"payload": m["payload"], "event": m["event"],
                                       "type": "broadcast"}
            if m.get("id") is not None:
                payload["meta"] = {"id": m["id"]}
            private = m.get("private") is True
            topic = m["topic"]
            self.hub.fanout((private, topic),
                            Message.fanout(TOPIC_PREFIX + topic, "broadcast", payload))
        return web.Response(status=202)

    async def single(self, request: web.Request) -> web.Response:
        """Body = the payload (JSON or ``application/octet-stream``) → 202, delivered as a
        user broadcast (kind 4 to V2 sockets)."""
        if not self._authorised(request):
            return _unauthorized()
        topic = request.match_info["topic"]
        event = request.match_info["event"]
        private = request.query.get("private", "").lower() == "true"
        body = await request.read()
        if len(body) > MAX_PAYLOAD_BYTES:
            return web.json_response(
                {"errors": {"payload": ["Payload size exceeds tenant limit"]}}, status=422)
        encoding = JSON
        if request.content_type == "application/octet-stream":
            encoding = BINARY
        else:
            try:
                json.loads(body)
            except ValueError:
                return web.json_response({"errors": {"payload": ["is invalid"]}}, status=422)
        ub = UserBroadcast(TOPIC_PREFIX + topic, event, body, encoding)
        self.hub.fanout_user((private, topic), ub)
        return web.Response(status=202)


def _message_errors(m: Any) -> dict[str, list[str]]:
    if not isinstance(m, dict):
        return {"message": ["is invalid"]}
    errors: dict[str, list[str]] = {}
    for key in ("topic", "event"):
        if not isinstance(m.get(key), str) or not m[key]:
            errors[key] = ["can't be blank"]
    if not isinstance(m.get("payload"), dict):
        errors["payload"] = ["can't be blank"] if m.get("payload") is None else ["is invalid"]
    if "private" in m and not isinstance(m["private"], bool | None):
        errors["private"] = ["is invalid"]
    return errors
