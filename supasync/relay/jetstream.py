"""The relay's NATS side, through nats-py: connect, create or check the stream, publish a batch.

Thin by design: deduplication is JetStream's (the ``Nats-Msg-Id`` header and the stream's
``duplicate_window``, https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive
#message-deduplication), pipelining is nats-py's ``JetStreamContext.publish_async`` (one future
per message, resolved by the server's publish ack), reconnection is nats-py's
(``max_reconnect_attempts=-1``: the client keeps trying, also before the first connection).

nats-py is imported only inside these functions: ``supasync`` imports without the ``relay``
extra, and the relay says what to install when it is missing (:func:`nats_module`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError, SupasyncError
from ..core.extras import require
from .messages import Message, subject_matches

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js.client import JetStreamContext

__all__ = [
    "Acks",
    "PublishFailed",
    "StreamSpec",
    "await_acks",
    "connect",
    "ensure_stream",
    "nats_module",
    "publish_batch",
    "safe_url",
    "send_batch",
]

logger = logging.getLogger("supasync.relay")


class PublishFailed(SupasyncError):
    """A batch was not acknowledged in full (timeout, lost connection, a refusal): the relay
    keeps its position and publishes the batch again after a backoff."""


def nats_module() -> ModuleType:
    """nats-py, or :class:`~supasync.core.errors.MissingExtra` naming
    ``pip install 'supasync[relay]'``."""
    return require("nats", "relay", "supasync relay")


def safe_url(url: str) -> str:
    """*url* without user, password or token (for logs and status)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query,
                                    parts.fragment))


@dataclass(frozen=True)
class StreamSpec:
    """The stream the relay publishes into (created with these settings when missing)."""

    name: str
    subjects: tuple[str, ...]
    duplicate_window: float = 120.0
    max_age: float | None = None
    max_bytes: int | None = None
    max_msgs: int | None = None
    replicas: int = 1


async def connect(servers: Sequence[str], *, name: str = "supasync-relay",
                  on_state: Callable[[str, str | None], None] | None = None,
                  reconnect_wait: float = 1.0, connect_timeout: float = 2.0) -> NATS:
    """Connect to NATS, trying for as long as it takes (cancel the call to give up); nats-py
    then reconnects by itself whenever the connection drops. *on_state* hears ``connected``,
    ``disconnected`` and ``reconnected``, with the server's URL (credentials removed) when
    connected."""
    nats = nats_module()
    holder: list[NATS] = []

    def tell(state: str) -> None:
        if on_state is not None:
            url = None
            if holder and state != "disconnected" and holder[0].connected_url is not None:
                url = safe_url(holder[0].connected_url.geturl())
            on_state(state, url)

    async def error_cb(exc: Exception) -> None:
        # nats-py's default logs a traceback for every refused connection attempt.
        logger.debug("nats: %s: %s", type(exc).__name__, exc)

    async def disconnected_cb() -> None:
        tell("disconnected")

    async def reconnected_cb() -> None:
        tell("reconnected")

    nc: NATS = await nats.connect(
        servers=list(servers), name=name, connect_timeout=connect_timeout,
        allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=reconnect_wait,
        error_cb=error_cb, disconnected_cb=disconnected_cb, reconnected_cb=reconnected_cb,
    )
    holder.append(nc)
    tell("connected")
    return nc


def _covers(subjects: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The *wanted* subjects (or wildcards standing for them) no stream subject covers."""
    out = []
    for w in wanted:
        probe = w.replace(">", "x").replace("*", "x")
        if not any(subject_matches(s, probe) for s in subjects):
            out.append(w)
    return out


async def ensure_stream(js: JetStreamContext, spec: StreamSpec,
                        publishes_to: Sequence[str]) -> str:
    """Create the stream (file storage) when missing; check it when present. Returns
    ``"created"`` or ``"present"``.

    Raises:
        ConfigError: the stream exists but does not take the subjects the relay publishes to,
            or has no duplicate window (deduplication would be off).
    """
    from nats.js import api
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        info = None
    if info is None:
        config = api.StreamConfig(
            name=spec.name, subjects=list(spec.subjects), storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS, duplicate_window=spec.duplicate_window,
            max_age=spec.max_age, max_bytes=spec.max_bytes, max_msgs=spec.max_msgs,
            num_replicas=spec.replicas,
        )
        try:
            await js.add_stream(config)
        except Exception as exc:
            from nats.js.errors import APIError

            # 400: the request itself cannot work (its subjects overlap another stream's, a
            # bad limit); anything else (no quorum yet, a timeout) is retried by the caller.
            if isinstance(exc, APIError) and exc.code == 400:
                raise ConfigError(f"JetStream refused to create the stream: {exc.description}",
                                  key="--stream", value=spec.name,
                                  fix="choose another --stream or --subject-prefix, or create "
                                  "the stream yourself") from exc
            raise
        return "created"
    config = info.config
    missing = _covers(config.subjects or [], publishes_to)
    if missing:
        raise ConfigError(
            f"the stream exists but does not take {', '.join(missing)} (its subjects: "
            f"{', '.join(config.subjects or []) or 'none'})", key="--stream", value=spec.name,
            fix=f"add {spec.subjects[0]} to the stream's subjects, or choose another --stream "
            "or --subject-prefix")
    window = config.duplicate_window or 0.0
    if window <= 0:
        raise ConfigError("the stream exists with no duplicate window: the relay could store a "
                          "change twice", key="--stream", value=spec.name,
                          fix="set the stream's duplicate_window (e.g. 2m)")
    if window < spec.duplicate_window:
        logger.warning("stream %s keeps message ids for %.0fs (asked for %.0fs): a relay "
                       "restarted later than that may store its in-flight batch twice",
                       spec.name, window, spec.duplicate_window)
    return "present"


@dataclass
class Acks:
    """What the acks of one batch said."""

    stored: int = 0
    duplicates: int = 0


async def send_batch(js: JetStreamContext, messages: Sequence[Message],
                     stream: str) -> list[asyncio.Future[Any]]:
    """Send *messages* in order (pipelined: nothing awaited but the sends); returns one future
    per message, resolved by its publish ack (:func:`await_acks`).

    Raises:
        PublishFailed: nats-py refused a send (connection closed, outbound buffer full).
    """
    futures: list[asyncio.Future[Any]] = []
    try:
        for m in messages:
            # No wait_stall: with one, nats-py wraps every send in asyncio.wait_for (a task and
            # a timer per message, a third of the relay's time); the pending limit is twice a
            # batch, so a batch never stalls, and the acks are awaited with a timeout.
            futures.append(await js.publish_async(m.subject, m.body, stream=stream,
                                                  headers=dict(m.headers)))
    except Exception as exc:
        _discard(futures)
        raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
    return futures


async def await_acks(futures: Sequence[asyncio.Future[Any]], ack_wait: float) -> Acks:
    """Wait (at most *ack_wait* seconds) for every ack of a batch sent by :func:`send_batch`.

    Raises:
        PublishFailed: a message was refused, or not every ack came in time (then none of the
            batch counts as relayed: the caller publishes it again; the stream drops what it
            already has).
    """
    acks = Acks()
    try:
        if futures:
            _, pending = await asyncio.wait(futures, timeout=ack_wait)
            if pending:
                raise PublishFailed(f"{len(pending)} of {len(futures)} publish acks did not "
                                    f"come within {ack_wait:g}s")
        for fut in futures:
            exc = fut.exception()
            if exc is not None:
                raise PublishFailed(f"JetStream refused a message: {exc}") from exc
            if getattr(fut.result(), "duplicate", False):
                acks.duplicates += 1
            else:
                acks.stored += 1
        return acks
    finally:
        _discard(futures)


async def publish_batch(js: JetStreamContext, messages: Sequence[Message], stream: str,
                        ack_wait: float) -> Acks:
    """:func:`send_batch` then :func:`await_acks`."""
    return await await_acks(await send_batch(js, messages, stream), ack_wait)


def _discard(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the futures still pending, and retrieve the exceptions of those failed (no
    "exception never retrieved" warnings)."""
    for fut in futures:
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            with contextlib.suppress(Exception):
                fut.exception()
