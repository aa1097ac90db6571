"""Identity ``user``: each user's rows and changes come from a mirror made with that user's own
access token, so Row Level Security decides exactly as it does in the database.

Contract:

* **The token.** A browser presents its Supabase access token as ``Authorization: Bearer``,
  as a cookie (``sb-access-token`` unless told otherwise), or as ``?access_token=`` (an
  EventSource cannot set headers). :class:`TokenVerifier` asks Supabase Auth whose it is
  (``GET /auth/v1/user``: any signing key, and a signed-out session is refused), once per token
  (cached until the token's ``exp``). No token, a token Auth refuses, or an expired one:
  **401** with a JSON error; the token itself is never logged nor echoed.
* **One mirror per user** (:class:`UserSpace`): the mirror worker
  (:func:`~supasync.mirror.worker.run_mirror`) with the user's token, into a file of its own
  in a private temporary directory: a snapshot over PostgREST and live changes over Realtime,
  both under RLS, with gap repair. Every stream and ``/rows`` read of that user shares it.
* **Users share sockets.** Every user's mirror puts its channels on one Realtime client of
  the endpoint (``run_mirror(realtime=...)``), each channel joined with that user's own token
  (``subscribe(token=...)``: the server authorises each channel on its own, so RLS decides per
  user exactly as with a socket per user). The client opens a socket per
  ``channels_per_socket`` channels (100, the server's default limit per socket). A user's
  token refused or expiring ends only that user's channel.
* **Tokens.** A request with a fresher token (later ``exp``) than the one the user's mirror
  runs with restarts that mirror with it (same file: no new snapshot, the gap is repaired).
  A stream ends when the token it was opened with expires (``: token expired``); the browser
  reconnects with a fresh token (a cookie is sent again by itself; with ``?access_token=``
  the page opens a new EventSource with the refreshed token).
* **Time to live.** A user's mirror with no open stream for ``ttl`` seconds, or whose token
  expired with no stream open, is stopped and its file deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt

from ..core.errors import CacheError, SupasyncError
from .source import Hub, StoreSource, new_store_file

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..client.config import Settings
    from ..client.realtime import Realtime
    from ..mirror.worker import MirrorTarget

__all__ = ["Identity", "TokenVerifier", "Unauthenticated", "UserSources", "UserSpace",
           "token_from"]

logger = logging.getLogger("supasync.web")


class Unauthenticated(SupasyncError):
    """No usable access token (the endpoint answers 401). The message never holds the token."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


@dataclasses.dataclass(frozen=True)
class Identity:
    user_id: str
    expires_at: float  # Unix time
    token: str = dataclasses.field(repr=False)


def token_from(request: Request, cookie: str = "sb-access-token") -> str | None:
    """The access token a request presents: ``Authorization: Bearer``, else the cookie, else
    ``?access_token=``."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.cookies.get(cookie) or request.query_params.get("access_token") or None


class TokenVerifier:
    """Who an access token belongs to, from Supabase Auth (see the module docstring)."""

    def __init__(self, auth_url: str, api_key: str, *, cache: int = 10_000) -> None:
        self.auth_url, self.api_key, self.cache = auth_url.rstrip("/"), api_key, cache
        self._known: dict[str, Identity] = {}
        self._http: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def verify(self, token: str) -> Identity:
        """Raises :class:`Unauthenticated` for a malformed, expired or refused token."""
        now = time.time()
        known = self._known.get(token)
        if known is not None:
            if known.expires_at > now:
                return known
            del self._known[token]
        try:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated("the access token is not a JWT",
                                  "send the Supabase session's access_token") from None
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise Unauthenticated("the access token has no expiry (exp)",
                                  "send a user session's access_token, not an API key")
        if exp <= now:
            raise Unauthenticated("the access token has expired",
                                  "refresh the session and reconnect with the new token")
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        try:
            resp = await self._http.get(f"{self.auth_url}/user", headers={
                "apikey": self.api_key, "Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise SupasyncError(f"Supabase Auth could not be asked about a token: "
                                f"{type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            raise Unauthenticated("Supabase Auth refused the access token (expired, signed "
                                  "out or not signed by this project)",
                                  "sign in again and reconnect with the new token")
        if resp.status_code != 200:
            raise SupasyncError(f"Supabase Auth answered {resp.status_code} about a token")
        user_id = str(resp.json().get("id") or claims.get("sub") or "")
        if not user_id:
            raise Unauthenticated("the access token names no user",
                                  "send a signed-in user's access_token")
        ident = Identity(user_id, float(exp), token)
        if len(self._known) >= self.cache:
            self._known.clear()
        self._known[token] = ident
        return ident


class UserSpace:
    """One user's mirror, its sources and hubs, and who uses them."""

    def __init__(self, owner: UserSources, ident: Identity, root: Path) -> None:
        from ..store.tables import mirror_table_name

        self.owner, self.user_id = owner, ident.user_id
        self.token, self.expires_at = ident.token, ident.expires_at
        digest = hashlib.sha256(ident.user_id.encode()).hexdigest()[:16]
        self.dir = root / f"user-{digest}"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.db = self.dir / "mirror.sqlite"
        new_store_file(self.db)  # a browser's old id never fits a user's re-created mirror
        self.prefix = f"user-{digest}:"
        self.sources = {mirror_table_name(t.schema, t.table):
                        StoreSource(self.db, mirror_table_name(t.schema, t.table))
                        for t in owner.targets}
        self.hubs = {name: Hub(src, poll_interval=owner.poll_interval)
                     for name, src in self.sources.items()}
        self.streams = 0
        self.waiting = 0  # requests waiting for the first snapshot: not idle meanwhile
        self.last_used = time.monotonic()
        self.failure: str | None = None
        self.closed = asyncio.Event()  # set once stopped and deleted
        self._stop = asyncio.Event()
        self._live = asyncio.Event()
        self._task: asyncio.Task[int] | None = None
        self._start()

    def _start(self) -> None:
        from ..mirror.worker import MirrorOptions, run_mirror

        settings = dataclasses.replace(self.owner.settings, access_token=self.token,
                                       preferred_token_source="access_token")
        options = MirrorOptions(db=self.db, quiet=True, progress=False, status_interval=3600.0)
        self._stop, self._live = asyncio.Event(), asyncio.Event()
        live = self._live
        self._task = asyncio.create_task(run_mirror(
            settings, self.owner.targets, options, stop=self._stop,
            on_ready=lambda _figures: live.set(), handle_signals=False,
            realtime=self.owner.realtime(), name_prefix=self.prefix),
            name=f"supasync-web-user-mirror-{self.dir.name}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failure = f"{type(exc).__name__}: {exc}"
        elif task.result() != 0 and not self._stop.is_set():
            self.failure = f"the mirror ended with code {task.result()}"
        if self.failure:
            logger.warning("supasync.web: the mirror of user %s ended: %s", self.dir.name,
                           self.failure)
        self._live.set()

    async def renew(self, ident: Identity) -> None:
        """Run the mirror with a fresher token (same file: resumed, the gap repaired)."""
        await self._halt()
        self.token, self.expires_at, self.failure = ident.token, ident.expires_at, None
        self._start()

    async def _halt(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task

    async def ready(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the mirror is live and every table's first snapshot is in the file.

        Raises:
            CacheError: not within *timeout* seconds, or the mirror failed.
        """
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._live.wait()
        while True:
            if self.failure:
                raise CacheError(f"the mirror for this user failed: {self.failure}")
            try:
                for src in self.sources.values():
                    await asyncio.to_thread(src.read, None, limit=0)
                return
            except CacheError:
                if time.monotonic() >= deadline:
                    raise
            # The first snapshot's end is a flag in the file: looked at, like the hub does.
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self._halt()
        for hub in self.hubs.values():
            await hub.close()
        for src in self.sources.values():
            await asyncio.to_thread(src.close)  # once no read is in flight
        shutil.rmtree(self.dir, ignore_errors=True)
        self.closed.set()


class UserSources:
    """The ``user`` identity of a :class:`~supasync.web.endpoint.LiveEndpoint`: one
    :class:`UserSpace` per signed-in user (see the module docstring).

    Args:
        settings: the project (URL, API key); the service credentials are not used for reads.
        targets: the tables (``/<table>/rows``, ``/<table>/changes``).
        ttl: seconds a user's mirror stays without an open stream.
        cookie: the cookie holding the access token.
        ready_timeout: how long a first request waits for the user's first snapshot (503 after).
        channels_per_socket: user channels (one per user and table) sharing one socket.
    """

    def __init__(self, settings: Settings, targets: Sequence[MirrorTarget], *,
                 ttl: float = 300.0, cookie: str = "sb-access-token",
                 ready_timeout: float = 30.0, poll_interval: float = 0.02,
                 verifier: TokenVerifier | None = None,
                 channels_per_socket: int = 100) -> None:
        from ..client.tokens import TokenKeeper
        from ..store.tables import mirror_table_name

        self.settings, self.targets = settings, list(targets)
        self.ttl, self.cookie, self.ready_timeout = ttl, cookie, ready_timeout
        self.poll_interval = poll_interval
        self.names = [mirror_table_name(t.schema, t.table) for t in self.targets]
        api_key = settings.anon_key or TokenKeeper.from_settings(settings).api_key
        self.api_key, self.channels_per_socket = api_key, channels_per_socket
        self.verifier = verifier or TokenVerifier(settings.auth_url, api_key)
        self._realtime: Realtime | None = None
        self.spaces: dict[str, UserSpace] = {}
        self._root: Path | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._janitor: asyncio.Task[None] | None = None

    def realtime(self) -> Realtime:
        """The Realtime client every user's mirror shares (built on first use). Its sockets
        carry the API key only; each user channel joins with its user's token."""
        if self._realtime is None:
            from ..client.realtime import Realtime
            from ..core.backoff import BackoffPolicy

            s = self.settings
            self._realtime = Realtime(
                s.url, self.api_key, realtime_url=s.realtime_url, rest_url=s.rest_url,
                heartbeat_interval=s.heartbeat_interval, queue_size=max(s.queue_size, 10_000),
                backoff=BackoffPolicy(cap=float(s.reconnect_max_delay)),
                max_channels_per_socket=self.channels_per_socket, repair="off")
        return self._realtime

    @property
    def socket_count(self) -> int:
        """Realtime sockets open for all users together."""
        return 0 if self._realtime is None else len(self._realtime.connection.clients)

    async def space(self, request: Request) -> UserSpace:
        """The requesting user's space, started or renewed as needed.

        Raises:
            Unauthenticated: no token, or one that is malformed, expired or refused (401).
            CacheError: the user's mirror is not ready in time or failed (503).
        """
        token = token_from(request, self.cookie)
        if token is None:
            raise Unauthenticated(
                "no access token", "send the user's Supabase access token as "
                "'Authorization: Bearer ...', the sb-access-token cookie or ?access_token=")
        ident = await self.verifier.verify(token)
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="supasync-web-users-"))
        if self._janitor is None:
            self._janitor = asyncio.create_task(self._sweep(), name="supasync-web-users-ttl")
        lock = self._locks.setdefault(ident.user_id, asyncio.Lock())
        async with lock:
            space = self.spaces.get(ident.user_id)
            if space is None:
                space = self.spaces[ident.user_id] = UserSpace(self, ident, self._root)
            elif ident.expires_at > space.expires_at + 1.0 or space.failure:
                await space.renew(ident)
        space.last_used = time.monotonic()
        space.waiting += 1
        try:
            await space.ready(self.ready_timeout)
        finally:
            space.waiting -= 1
            space.last_used = time.monotonic()
        return space

    async def _sweep(self) -> None:
        while True:
            # A periodic look at idle users, not a synchronisation wait.
            await asyncio.sleep(max(0.05, min(self.ttl / 2, 30.0)))
            now, wall = time.monotonic(), time.time()
            for user_id, space in list(self.spaces.items()):
                unused = space.streams == 0 and space.waiting == 0
                idle = unused and now - space.last_used >= self.ttl
                expired = unused and space.expires_at <= wall
                if idle or expired:
                    del self.spaces[user_id]
                    logger.info("supasync.web: closing the mirror of user %s (%s)",
                                space.dir.name, "idle" if idle else "token expired")
                    await space.close()

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        spaces, self.spaces = list(self.spaces.values()), {}
        for space in spaces:
            await space.close()
        if self._realtime is not None:
            await self._realtime.aclose()
            self._realtime = None
        await self.verifier.aclose()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
