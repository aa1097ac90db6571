"""One exception tree for everything supasync raises.

Catch :class:`SupasyncError` to catch any supasync failure. The tree::

    SupasyncError
    ├── ConfigError            bad settings: names the key, the value (redacted if secret), the fix
    │   └── ApiKeyRejected     the servers refused the API key itself (HTTP 401 at the socket
    │                          and at PostgREST): permanent, nothing is retried
    ├── FilterError            bad filter text or builder use (also a ValueError); shows a caret
    ├── ChangeDecodeError      a server payload that cannot be a Change (no schema/table/type)
    ├── AuthError              a token could not be obtained or refreshed (never contains the token)
    ├── ConnectionLost         the socket went away and the caller asked to be told
    ├── SubscriptionError      the server rejected a subscription (``subscription``, ``reason``)
    │   ├── FilterRejected     malformed filter, unknown column, uncastable value (server side)
    │   ├── TableNotPublished  "Unable to subscribe ... check Realtime is enabled"
    │   └── Unauthorized       token expired/invalid, or the role may not read
    │       └── ChannelUnauthorized  a private channel's RLS on realtime.messages refuses the role
    ├── OutboxFull             a channel's outbox is full; the message was not queued
    ├── SendFailed             a broadcast could not be delivered to the server (names why)
    ├── RestError              a PostgREST error: status, code, message, details, hint
    ├── CacheError             the local cache failed or is inconsistent
    └── MissingExtra           a feature needs an optional dependency group (also ImportError)

Messages say what is wrong and how to fix it. Secrets (tokens, keys, passwords) never appear in a
message or a repr: :class:`ConfigError` redacts values of secret keys itself, and the other classes
are only ever given server texts, which do not echo tokens.

:func:`classify_system_error` maps the texts of the Realtime server's ``system`` error messages
(``docs/realtime-protocol.md`` §4, §7.2-7.3, §10) and of join error replies (§3.5) to the right
:class:`SubscriptionError` subclass, so the connection layer decides "stop" versus "rebuild and
retry" in one place.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ApiKeyRejected",
    "AuthError",
    "CacheError",
    "ChangeDecodeError",
    "ChannelUnauthorized",
    "ConfigError",
    "ConnectionLost",
    "FilterError",
    "FilterRejected",
    "MissingExtra",
    "OutboxFull",
    "RestError",
    "SendFailed",
    "SubscriptionError",
    "SupasyncError",
    "TableNotPublished",
    "Unauthorized",
    "classify_system_error",
    "is_secret_key",
    "redact",
]


class SupasyncError(Exception):
    """Base class of every exception supasync raises on purpose."""


# --------------------------------------------------------------------------- configuration

_SECRET_KEY_PARTS: Final = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "DB_URL", "DSN",
                             "DATABASE_URL")
# Names that contain a secret-looking part but hold nothing secret.
_NOT_SECRET: Final = frozenset({"PRIMARY_KEY", "SUPASYNC_TOKEN_SOURCE", "TOKEN_SOURCE"})
_MISSING: Final = object()


def is_secret_key(key: str) -> bool:
    """Whether a setting named *key* holds a secret whose value must never be shown.

    Conservative by name: anything with KEY, TOKEN, SECRET, PASSWORD or a database URL (which can
    carry a password) in its last dotted component counts as secret, except a few known
    harmless names (``primary_key``, ``SUPASYNC_TOKEN_SOURCE``).
    """
    name = key.upper().rsplit(".", 1)[-1]
    if name in _NOT_SECRET:
        return False
    return any(part in name for part in _SECRET_KEY_PARTS)


def redact(value: object) -> str:
    """The shown form of a secret value: says whether it was set, never what it is."""
    if value is None or value == "":
        return "<empty>"
    return "<redacted>"


class ConfigError(SupasyncError):
    """A setting is missing, malformed or inconsistent.

    Args:
        message: what is wrong.
        key: the setting's name (environment variable or ``file:table.key``).
        value: the offending value; shown with ``repr`` unless the key is secret (see
            :func:`is_secret_key`) or *secret* is true, in which case it is redacted.
        secret: force redaction of *value*.
        fix: how to fix it, one sentence.
        source: where the value came from (``environment``, ``.env``, ``supasync.toml``).
        detail: further lines shown after the fix (e.g. a filter with a caret).

    Attributes ``key``, ``fix`` and ``source`` are kept; the raw value is deliberately not.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: object = _MISSING,
        secret: bool = False,
        fix: str | None = None,
        source: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.key = key
        self.fix = fix
        self.source = source
        if value is _MISSING:
            self.shown_value: str | None = None
        elif secret or (key is not None and is_secret_key(key)):
            self.shown_value = redact(value)
        else:
            self.shown_value = repr(value)
        parts: list[str] = []
        if key is not None:
            where = f" (from {source})" if source else ""
            shown = f" = {self.shown_value}" if self.shown_value is not None else ""
            parts.append(f"{key}{shown}{where}: ")
        parts.append(message.rstrip("."))
        if fix:
            parts.append(f". Fix: {fix}")
        if detail:
            parts.append("\n" + detail)
        self.message = message
        super().__init__("".join(parts))


class ApiKeyRejected(ConfigError):
    """The project refused the API key: a permanent error, not an outage.

    Raised (and published on the status stream) when the Realtime websocket handshake answers
    HTTP 401 **and** a PostgREST request with the same key answers 401 as well, so a 401 from a
    server that is restarting is not mistaken for a wrong key. Being a :class:`ConfigError`, the
    CLI exits 2 on it. The key itself never appears in the message.

    Attributes:
        status: the handshake's HTTP status (401).
        reason: the Realtime server's text (e.g. ``The token provided is not a valid JWT``).
        rest_reason: PostgREST's (gateway's) text (e.g. ``Invalid API key``), or None.
    """

    def __init__(self, reason: str, *, rest_reason: str | None = None, status: int = 401,
                 key: str = "SUPABASE_ANON_KEY") -> None:
        self.status = status
        self.reason = reason
        self.rest_reason = rest_reason
        said = f"Realtime answered HTTP {status}"
        if reason:
            said += f" ({reason.rstrip('.')})"
        if rest_reason:
            said += f" and PostgREST answered 401 ({rest_reason.rstrip('.')})"
        super().__init__(
            f"the API key was rejected: {said}",
            key=key,
            fix="set the project's anon key (or the service-role key when acting as the "
            "service role, SUPABASE_SERVICE_ROLE_KEY) exactly as the dashboard's API settings "
            "or `supasync dev` show it",
        )


# --------------------------------------------------------------------------- filters and changes


class FilterError(SupasyncError, ValueError):
    """A filter could not be parsed or built.

    ``str()`` shows the message, then the filter text, then a caret under the offending character
    (when ``position`` is known)::

        unknown operator 'eqq' (expected one of eq, neq, ...)
          status=eqq.open
                 ^

    Attributes:
        message: the first line alone.
        text: the filter text (may be ``""`` for builder errors).
        position: 0-based index into ``text`` of the offending character, or None.
    """

    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        self.message = message
        self.text = text
        self.position = position
        super().__init__(message, text, position)

    def __str__(self) -> str:
        if not self.text and self.position is None:
            return self.message
        lines = [self.message, f"  {self.text}"]
        if self.position is not None:
            pos = max(0, min(self.position, len(self.text)))
            lines.append("  " + " " * pos + "^")
        return "\n".join(lines)


class ChangeDecodeError(SupasyncError):
    """A server payload lacks what every change must have (schema, table, a known type)."""


class AuthError(SupasyncError):
    """A token could not be obtained or refreshed. The message never contains the token."""


class ConnectionLost(SupasyncError):
    """The Realtime socket was lost (raised only where a caller asked to be told)."""


class CacheError(SupasyncError):
    """The local cache failed (I/O, schema) or found itself inconsistent."""


# --------------------------------------------------------------------------- subscriptions


class MissingExtra(SupasyncError, ImportError):
    """A feature needs an optional dependency group that is not installed.

    ``str()`` names the feature, the missing module and the exact command that installs it, e.g.
    ``supasync dev needs the local stack's dependencies (aiohttp is not installed): pip install
    'supasync[stack]'``. The CLI turns it into exit code 2.
    """

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature, self.module, self.extra = feature, module, extra
        self.install = f"pip install 'supasync[{extra}]'"
        super().__init__(f"{feature} ({module} is not installed): {self.install}")


class SubscriptionError(SupasyncError):
    """The server rejected a subscription.

    Attributes:
        subscription: the subscription's name (or topic).
        reason: the server's text, unchanged.
        retryable: False when the same request will fail again (fix the subscription);
            True when rebuilding it - after a backoff or with a fresh token - may succeed
            (transient database trouble, rate limits, an expired token).
    """

    hint: str = "check the subscription's schema, table, events and filter"
    default_retryable: bool = False

    def __init__(self, subscription: str, reason: str, *, retryable: bool | None = None) -> None:
        self.subscription = subscription
        self.reason = reason
        self.retryable = self.default_retryable if retryable is None else retryable
        super().__init__(subscription, reason)

    def __str__(self) -> str:
        return (
            f"subscription {self.subscription!r} rejected by the server: {self.reason}"
            f" ({self.hint})"
        )


class FilterRejected(SubscriptionError):
    """The server refused the filter (syntax, unknown or unreadable column, uncastable value)."""

    hint = (
        "fix the filter: check column names, value types and that the subscriber's role may "
        "SELECT the column; `in` takes at most 100 values"
    )


class TableNotPublished(SubscriptionError):
    """The table does not exist or is not in the ``supabase_realtime`` publication."""

    hint = (
        "add the table to the publication: "
        "alter publication supabase_realtime add table <schema>.<table>"
    )


class Unauthorized(SubscriptionError):
    """The token was expired, invalid, or its role may not read what was asked for."""

    hint = "check the token (expiry, signature, role) and the RLS policies / grants for its role"


class ChannelUnauthorized(Unauthorized):
    """A private channel (``config.private``) whose topic the token's role may not use.

    The real server decides with RLS on ``realtime.messages`` (realtime-protocol.md §9.5): at
    join it inserts probe rows for the topic and selects them back as the role (read); on the
    first broadcast it inserts one as the role (write). The message names the policy to add.
    """

    def __init__(self, subscription: str, reason: str, *, topic: str = "",
                 write: bool = False, retryable: bool | None = None) -> None:
        self.topic = topic
        self.write = write
        super().__init__(subscription, reason, retryable=retryable)

    @property
    def hint(self) -> str:  # type: ignore[override]
        topic = self.topic or "<topic>"
        if self.write:
            return (
                "the role may not write to this private channel: add an RLS policy on "
                "realtime.messages `for insert to authenticated with check (realtime.topic() = "
                f"'{topic}' and extension in ('broadcast', 'presence'))`, or send on a public "
                "channel"
            )
        return (
            "the role may not read this private channel: add an RLS policy on "
            "realtime.messages `for select to authenticated using (realtime.topic() = "
            f"'{topic}' and extension in ('broadcast', 'presence'))` (and check the token's "
            "role and claims), or join it with private=False"
        )


class OutboxFull(SupasyncError):
    """A channel's outbox holds ``limit`` unsent messages; the new one was not queued."""

    def __init__(self, topic: str, limit: int) -> None:
        self.topic = topic
        self.limit = limit
        super().__init__(
            f"the outbox of channel {topic!r} is full ({limit} messages waiting for the "
            "server); the message was not queued. Wait for the channel to be live "
            "(await ch.wait_live()), send less often, or raise outbox_size")


class SendFailed(SupasyncError):
    """A broadcast was not accepted by the server and will not be retried.

    Attributes:
        topic: the channel topic; ``event`` and ``id``: the message; ``reason``: why.
    """

    def __init__(self, topic: str, event: str, mid: str, reason: str) -> None:
        self.topic = topic
        self.event = event
        self.id = mid
        self.reason = reason
        super().__init__(f"broadcast {event!r} ({mid}) on channel {topic!r} failed: {reason}")


class RestError(SupasyncError):
    """An error answer from PostgREST.

    Attributes mirror PostgREST's error body: ``status`` (HTTP status), ``code`` (e.g. ``PGRST116``
    or a SQLSTATE), ``message``, ``details`` and ``hint``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        head = "PostgREST error"
        if self.status is not None:
            head += f" {self.status}"
        if self.code:
            head += f" [{self.code}]"
        text = f"{head}: {self.message}"
        if self.details:
            text += f"; details: {self.details}"
        if self.hint:
            text += f"; hint: {self.hint}"
        return text

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later unchanged: the server was not reached
        (no status), timed out (408), asked to slow down (429), or failed on its side (5xx,
        e.g. PostgREST's 503 ``PGRST001`` "Retrying the connection" while its database
        restarts). A 4xx other than those says the request itself is wrong."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


# --------------------------------------------------------------------------- classification

# Texts from docs/realtime-protocol.md. Order matters: the first match wins.
# §4: "Unable to subscribe ... Please check Realtime is enabled ..." (table not published).
_NOT_PUBLISHED = re.compile(r"check Realtime is enabled", re.IGNORECASE)
# §4: "Error parsing `filter` params: ..." (parse failure, never retried by the server).
_FILTER_PARSE = re.compile(r"Error parsing .?filter.? params", re.IGNORECASE)
# §4: "... An exception happened ... Exception: ERROR P0001 ... invalid column for filter x";
# the trigger also rejects uncastable values, >100 `in` values, bad `is` values and regexes.
# An unknown claims role fails the insert with 'role "x" does not exist' (regrole cast).
_EXCEPTION = re.compile(r"An exception happened", re.IGNORECASE)
_ROLE_PROBLEM = re.compile(
    r"role \S+ does not exist|permission denied|insufficient_privilege", re.IGNORECASE
)
# §3.5 / §7.2 / §7.3: token problems, whether as a join reply "Code: text" or a system message.
_TOKEN_EXPIRED = re.compile(r"Token has expired", re.IGNORECASE)
_TOKEN_PROBLEM = re.compile(
    r"InvalidJWTToken|MalformedJWT|JwtSignatureError|JwtSignerError|not a valid JWT"
    r"|Fields .?role.? and .?exp.? are required|Failed to validate JWT signature"
    r"|Token expiration time is invalid|Failed to generate JWT signer",
    re.IGNORECASE,
)
_PERMISSION = re.compile(
    r"^Unauthorized\b|do not have permissions? to read|no longer have permission|PrivateOnly",
    re.IGNORECASE,
)
# §4: "No subscription params provided ..." - the request itself is malformed.
_NO_PARAMS = re.compile(r"No subscription params provided", re.IGNORECASE)
# §4 ("{:error, ...}"), §3.5 (operational codes), §10 (rate limits): worth retrying later.
_TRANSIENT = re.compile(
    r"^\{:error|timeout|RateLimitReached|Too many|unable to connect|Initializing"
    r"|LackOfConnections|IncreaseConnectionPool|Restarting|Unknown Error",
    re.IGNORECASE,
)


def classify_system_error(message: str, subscription: str) -> SubscriptionError:
    """Turn a server error text into the matching :class:`SubscriptionError` (not raised).

    Accepts the ``message`` of a postgres_changes/system ``system`` error push (protocol doc §4,
    §7) or the ``reason`` of a join error reply (§3.5). Mapping:

    * ``Error parsing `filter` params ...`` and ``Unable to subscribe ... An exception happened``
      (bad column, bad cast, too many ``in`` values) -> :class:`FilterRejected`, not retryable;
      the same "exception" text about an unknown role or missing privilege -> :class:`Unauthorized`.
    * ``Unable to subscribe ... check Realtime is enabled`` -> :class:`TableNotPublished`.
    * ``Token has expired ...`` -> :class:`Unauthorized` with ``retryable=True`` (rebuild the
      channel with a fresh token); other JWT and permission texts -> :class:`Unauthorized`,
      not retryable.
    * ``No subscription params provided`` -> :class:`SubscriptionError`, not retryable.
    * ``{:error, ...}``, rate limits, operational texts and anything unrecognised ->
      :class:`SubscriptionError` with ``retryable=True`` (a supervised connection prefers to
      retry an unknown failure with backoff over giving up).
    """
    text = message.strip()
    if _NOT_PUBLISHED.search(text):
        return TableNotPublished(subscription, text)
    if _FILTER_PARSE.search(text):
        return FilterRejected(subscription, text)
    if _EXCEPTION.search(text):
        if _ROLE_PROBLEM.search(text):
            return Unauthorized(subscription, text)
        return FilterRejected(subscription, text)
    if _TOKEN_EXPIRED.search(text):
        return Unauthorized(subscription, text, retryable=True)
    if _TOKEN_PROBLEM.search(text) or _PERMISSION.search(text):
        return Unauthorized(subscription, text)
    if _NO_PARAMS.search(text):
        return SubscriptionError(subscription, text)
    if _TRANSIENT.search(text):
        return SubscriptionError(subscription, text, retryable=True)
    return SubscriptionError(subscription, text, retryable=True)
