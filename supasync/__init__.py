"""supasync: dependable Supabase Realtime for Python backends.

The public API, and nothing else::

    from supasync import Realtime, Change, col, ConnectionState

Where things live (each package's docstring says what it is and what it may import):

* :mod:`supasync.core` - sans-I/O: filters, the Change model, merge logic, backoff, status,
  errors, redaction;
* :mod:`supasync.store` - the local store (cache files, the mirror's typed tables);
* :mod:`supasync.repair` - gap repair over PostgREST and the SQL it installs;
* :mod:`supasync.client` - config, tokens, the supervised connection, subscriptions,
  :class:`Realtime` and :class:`SyncRealtime`;
* :mod:`supasync.mirror`, :mod:`supasync.verify` - the workers behind ``supasync mirror`` and
  ``supasync verify``;
* :mod:`supasync.cli` - the ``supasync`` command;
* :mod:`supasync.devstack` - the local Supabase-compatible stack (an extra: ``supasync[stack]``).
"""

from __future__ import annotations

from .client.channels import Channel
from .client.config import Settings, SubscriptionSpec, load_settings
from .client.gate import CachedGate
from .client.realtime import Realtime
from .client.subscription import Gate, PassThroughGate, Subscription, SubscriptionInfo
from .client.sync import SyncRealtime, SyncSubscription
from .client.tokens import (
    CallableProvider,
    GoTrueSession,
    PasswordSession,
    SecretMinter,
    StaticToken,
    TokenKeeper,
)
from .core.backoff import BackoffPolicy
from .core.broadcast import Broadcast, PresenceChange
from .core.changes import Change, Column
from .core.errors import (
    ApiKeyRejected,
    AuthError,
    CacheError,
    ChangeDecodeError,
    ChannelUnauthorized,
    ConfigError,
    ConnectionLost,
    FilterError,
    FilterRejected,
    MissingExtra,
    OutboxFull,
    RestError,
    SendFailed,
    SubscriptionError,
    SupasyncError,
    TableNotPublished,
    Unauthorized,
)
from .core.filters import Filter, col, parse_filter
from .core.status import (
    ConnectionFailed,
    ConnectionState,
    GapOpened,
    GapRepaired,
    HandlerFailed,
    StateChanged,
    StatusEvent,
    StatusStream,
    SubscriptionFailed,
    SubscriptionState,
    SubscriptionStateChanged,
)

__all__ = [
    "ApiKeyRejected",
    "AuthError",
    "BackoffPolicy",
    "Broadcast",
    "CacheError",
    "CachedGate",
    "CallableProvider",
    "Change",
    "ChangeDecodeError",
    "Channel",
    "ChannelUnauthorized",
    "Column",
    "ConfigError",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionState",
    "Filter",
    "FilterError",
    "FilterRejected",
    "GapOpened",
    "GapRepaired",
    "Gate",
    "GoTrueSession",
    "HandlerFailed",
    "MissingExtra",
    "OutboxFull",
    "PassThroughGate",
    "PasswordSession",
    "PresenceChange",
    "Realtime",
    "RestError",
    "SecretMinter",
    "SendFailed",
    "Settings",
    "StateChanged",
    "StaticToken",
    "StatusEvent",
    "StatusStream",
    "Subscription",
    "SubscriptionError",
    "SubscriptionFailed",
    "SubscriptionInfo",
    "SubscriptionSpec",
    "SubscriptionState",
    "SubscriptionStateChanged",
    "SupasyncError",
    "SyncRealtime",
    "SyncSubscription",
    "TableNotPublished",
    "TokenKeeper",
    "Unauthorized",
    "col",
    "load_settings",
    "parse_filter",
]
