"""postgres_changes frames read straight off realtime-py's socket.

realtime-py 2.34.1 does three things with every frame it receives before a postgres_changes
callback runs (``realtime/_async/client.py`` ``_listen`` and ``_async/channel.py``
``_handle_message``; python-clients.md section 2.3):

* it validates the frame against a pydantic union of every server message
  (``ServerMessageAdapter.validate_json``), and **skips with an ERROR log any frame that does not
  fit** - which includes the real server's ``Error 400`` / ``Error 401`` postgres_changes
  payloads, whose ``commit_timestamp`` is ``null`` where the model wants a string
  (realtime-protocol.md section 5.2). supasync's :class:`~supasync.core.changes.Change` exists to
  carry exactly those payloads (``partial=True``, ``errors``), so they must reach it;
* it formats two ``repr()`` of the validated model for ``logger.debug`` with f-strings, i.e.
  even when DEBUG is off;
* then it routes the frame by topic to the channel, which calls each postgres_changes
  callback with the raw ``{"ids", "data"}`` dict.

Measured with ``bench/client_throughput.py`` (CPU per change of the whole consumer process),
validation and the two reprs are about two thirds of realtime-py's cost per change. So
supasync's clients read the socket through :class:`TappedSocket`: a postgres_changes frame for
one of the client's channels is parsed with :func:`json.loads` and handed to that channel's
own callback objects (realtime-py's ``PostgresChangesCallback``, which check the binding id and
event exactly as realtime-py does); every other frame - replies, system messages, heartbeats,
broadcast, presence, anything unrecognised - goes to realtime-py's loop unchanged. realtime-py
is not modified: :class:`TappedRealtimeClient` only wraps the connection object its own
``_listen`` iterates, so connection handling, close codes and errors stay realtime-py's.

If a future realtime-py no longer has the attributes this relies on (``_ws_connection``,
``channels``, ``postgres_changes_callbacks``), the tap steps aside and every frame takes
realtime-py's path (checked by :func:`tap_supported`).

Routine socket losses: realtime-py logs each lost socket at ERROR twice ("WebSocket connection
closed with code ...", "Auto-reconnect disabled, terminating connection"), each failed connect
twice, and a frame its models do not know - such as the server's "Server requested disconnect"
system message on a clean close - with a pydantic report of some 80 lines. On supasync's own
clients these are routine: supasync builds them without auto-reconnect, reconnects them itself
and reports the loss once, at WARNING (``supasync.client.connection``: "socket lost (drop);
reconnecting in 0.4 s"). :class:`RoutineLossFilter` therefore logs those records at DEBUG when
they come from a :class:`TappedRealtimeClient`'s own tasks (a context variable marks their
connect, listen loop and sends); a realtime-py client of your own keeps its logging unchanged.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from realtime import AsyncRealtimeChannel, AsyncRealtimeClient

__all__ = [
    "OwnTokenChannel",
    "RoutineLossFilter",
    "TappedRealtimeClient",
    "TappedSocket",
    "take_postgres_changes",
    "tap_supported",
]

logger = logging.getLogger("supasync.client.frames")

# Phoenix V1 JSON frames name the event as a JSON string; a frame without this text cannot be a
# postgres_changes frame, so most other frames are passed on without being parsed here.
_MARK = '"postgres_changes"'


def tap_supported(client: object) -> bool:
    """Whether *client* has the realtime-py internals the tap relies on."""
    return hasattr(client, "_ws_connection") and isinstance(
        getattr(client, "channels", None), dict
    )


def take_postgres_changes(frame: object, channels: dict[str, Any]) -> bool:
    """Deliver *frame* if it is a postgres_changes frame for one of *channels*.

    Returns True if the frame was taken (its callbacks have run), False if realtime-py should
    handle it: not a text frame, not JSON, another event, a topic without a channel, or a
    payload without the ``ids`` list and ``data`` object the callbacks index (realtime-py then
    logs and skips it, as before). Never raises: a failing callback is logged, and the others
    still run (realtime-py's callbacks are supasync's own ``_contained`` wrappers anyway).
    """
    if type(frame) is not str or _MARK not in frame:
        return False
    try:
        message = json.loads(frame)
    except ValueError:
        return False
    if type(message) is not dict or message.get("event") != "postgres_changes":
        return False
    topic = message.get("topic")
    # dict.get, not channels.get: supasync's channel table hooks .get() for "phoenix" frames.
    channel = dict.get(channels, topic) if type(topic) is str else None
    payload = message.get("payload")
    if not isinstance(channel, AsyncRealtimeChannel) or type(payload) is not dict:
        return False
    ids, data = payload.get("ids"), payload.get("data")
    if type(ids) is not list or type(data) is not dict or type(data.get("type")) is not str:
        return False
    callbacks = getattr(channel, "postgres_changes_callbacks", None)
    if callbacks is None:
        return False
    for callback in callbacks:
        # realtime-py's PostgresChangesCallback: calls through when its binding id is in
        # ``ids`` and its event is ``*`` or the change's type.
        try:
            callback(payload)
        except Exception:
            logger.exception("a postgres_changes callback failed on %s", topic)
    return True


class TappedSocket:
    """A websockets connection whose iteration leaves out the frames *take* consumed.

    Everything else (``send``, ``close``, ``close_code``, ``protocol``...) is the wrapped
    connection's. Iteration ends or raises exactly when the wrapped connection's does.
    """

    __slots__ = ("_take", "_ws")

    def __init__(self, ws: Any, take: Callable[[object], bool]) -> None:
        self._ws = ws
        self._take = take

    @property
    def wrapped(self) -> Any:
        """The underlying websockets connection."""
        return self._ws

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Any]:
        take = self._take
        async for frame in self._ws:
            if not take(frame):
                yield frame


#: True while a :class:`TappedRealtimeClient` connects, listens (its listen and heartbeat tasks
#: start inside connect) or sends.
_OWN_CLIENT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "supasync_own_realtime_client", default=False)

#: How realtime-py 2.34's messages about a lost socket or a failed connect begin
#: (``realtime/_async/client.py``: ``connect``, ``_listen``, ``_on_connect_error``).
ROUTINE_LOSS = (
    "WebSocket connection closed with code",
    "Auto-reconnect disabled, terminating connection",
    "Connection attempt failed",
    "Connection failed permanently",
    "Unrecognized message format",
)

#: The logger realtime-py's client logs through.
REALTIME_CLIENT_LOGGER = "realtime._async.client"


class RoutineLossFilter(logging.Filter):
    """Logs realtime-py's records about a lost socket, a failed connect or a frame it cannot
    parse (:data:`ROUTINE_LOSS`) at DEBUG when a supasync client's own task logs them: it
    lowers the record's level and lets it through only if the logger has DEBUG enabled. Every
    other record passes unchanged. Installed on realtime-py's client logger by
    :class:`TappedRealtimeClient` (once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (not _OWN_CLIENT.get() or record.levelno <= logging.DEBUG
                or not isinstance(record.msg, str) or not record.msg.startswith(ROUTINE_LOSS)):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _install_routine_loss_filter() -> None:
    target = logging.getLogger(REALTIME_CLIENT_LOGGER)
    if not any(isinstance(f, RoutineLossFilter) for f in target.filters):
        target.addFilter(RoutineLossFilter())


class OwnTokenChannel(AsyncRealtimeChannel):
    """A channel that acts with a token of its own, not the socket's.

    The Realtime protocol authorises each channel on its own: the ``phx_join`` payload's
    ``access_token`` (else the socket's key) becomes the channel's claims, and an
    ``access_token`` push on the channel's topic replaces them (realtime-protocol.md §3.2,
    §7.2; supabase/realtime ``lib/realtime_web/channels/realtime_channel.ex``: the join's
    ``assign_access_token`` and ``handle_in("access_token", ...)`` per channel process). So
    channels of different users can share one socket, each under its own RLS. realtime-py
    writes the socket's token into every join payload (``_async/channel.py``
    ``_prepare_join``); this channel writes its own over it, and
    :meth:`TappedRealtimeClient.set_auth` leaves it alone.
    """

    def __init__(self, socket: AsyncRealtimeClient, topic: str, token: str) -> None:
        super().__init__(socket, topic, None)
        self.own_token = token

    def _prepare_join(self, *args: Any, **kwargs: Any) -> None:
        super()._prepare_join(*args, **kwargs)
        self.join_push.update_payload({"access_token": self.own_token})


class TappedRealtimeClient(AsyncRealtimeClient):
    """realtime-py's client, reading postgres_changes frames the cheap way (module docstring).

    Built by :class:`~supasync.client.connection.Connection` for every socket; it behaves as
    ``AsyncRealtimeClient`` in every other respect, except that realtime-py's records about a
    routine socket loss are logged at DEBUG (:class:`RoutineLossFilter`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _install_routine_loss_filter()

    def channel_with_token(self, topic: str, token: str) -> OwnTokenChannel:
        """A new channel on *topic* (``realtime:`` is prefixed, as :meth:`channel` does) that
        joins and refreshes with *token* (:class:`OwnTokenChannel`)."""
        full = f"realtime:{topic}"
        existing = self.channels.get(full)
        if existing is not None and not existing.is_leaving:
            raise ValueError(f"a channel on topic {full!r} already exists on this socket")
        chan = OwnTokenChannel(self, full, token)
        self.channels[full] = chan
        return chan

    async def set_channel_token(self, channel: OwnTokenChannel, token: str) -> None:
        """Give one channel a new token: its stored join payload (rejoins) and, if joined, an
        ``access_token`` push on its topic (protocol doc §7.2; the server never replies)."""
        if token == channel.own_token:
            return
        channel.own_token = token
        channel.join_push.update_payload({"access_token": token})
        if channel._joined_once and channel.is_joined:
            await channel.push("access_token", {"access_token": token})

    async def set_auth(self, token: str | None) -> None:
        """realtime-py's ``set_auth`` for the socket's own channels; a channel with its own
        token (:class:`OwnTokenChannel`) keeps it."""
        self.access_token = token
        for channel in list(self.channels.values()):
            if isinstance(channel, OwnTokenChannel):
                continue
            channel.join_push.update_payload({"access_token": token})
            if channel._joined_once and channel.is_joined:
                await channel.push("access_token", {"access_token": token})

    async def connect(self) -> None:
        mark = _OWN_CLIENT.set(True)  # the listen task it starts inherits the mark
        try:
            await super().connect()
        finally:
            _OWN_CLIENT.reset(mark)

    async def send(self, *args: Any, **kwargs: Any) -> None:
        # A send on a socket that just went calls the same loss handling as the listen loop.
        mark = _OWN_CLIENT.set(True)
        try:
            await super().send(*args, **kwargs)
        finally:
            _OWN_CLIENT.reset(mark)

    async def _listen(self) -> None:
        ws = getattr(self, "_ws_connection", None)
        if ws is not None and not isinstance(ws, TappedSocket) and tap_supported(self):
            def take(frame: object) -> bool:
                return take_postgres_changes(frame, self.channels)

            # realtime-py's _listen reads self._ws_connection when it starts, and close()
            # clears it: the wrapper takes the connection's place for this socket's lifetime.
            self._ws_connection = TappedSocket(ws, take)  # type: ignore[assignment]
        mark = _OWN_CLIENT.set(True)  # (also inherited from connect(), which starts this task)
        try:
            await super()._listen()
        finally:
            _OWN_CLIENT.reset(mark)
