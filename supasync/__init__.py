"""supasync: dependable Supabase Realtime for Python backends.

The public API, and nothing else. Grouped by source module::

    from supasync import Realtime, Change, col, ConnectionState

Modules that are optional or still being built are imported behind guards, so a partial checkout
still imports.
"""

from __future__ import annotations

import contextlib

# backoff: the reconnect/rejoin delay policy
from .backoff import BackoffPolicy

# changes: the one model every consumer sees
from .changes import Change, Column

# client: the entry point
from .client import Realtime

# errors: one tree, rooted at SupasyncError
from .errors import (
    AuthError,
    CacheError,
    ChangeDecodeError,
    ConfigError,
    ConnectionLost,
    FilterError,
    FilterRejected,
    RestError,
    SubscriptionError,
    SupasyncError,
    TableNotPublished,
    Unauthorized,
)

# filters: one model, three renderings
from .filters import Filter, col, parse_filter

# status: states, events, stream
from .status import (
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

# subscription: declarations and the gate protocol
from .subscription import Gate, PassThroughGate, Subscription, SubscriptionInfo

__all__ = [
    "AuthError",
    "BackoffPolicy",
    "CacheError",
    "Change",
    "ChangeDecodeError",
    "Column",
    "ConfigError",
    "ConnectionLost",
    "ConnectionState",
    "Filter",
    "FilterError",
    "FilterRejected",
    "GapOpened",
    "GapRepaired",
    "Gate",
    "HandlerFailed",
    "PassThroughGate",
    "Realtime",
    "RestError",
    "StateChanged",
    "StatusEvent",
    "StatusStream",
    "Subscription",
    "SubscriptionError",
    "SubscriptionFailed",
    "SubscriptionInfo",
    "SubscriptionState",
    "SubscriptionStateChanged",
    "SupasyncError",
    "TableNotPublished",
    "Unauthorized",
    "col",
    "parse_filter",
]

# auth: token providers and the keeper
with contextlib.suppress(ImportError):
    from .auth import (
        CallableProvider,
        GoTrueSession,
        PasswordSession,
        SecretMinter,
        StaticToken,
        TokenKeeper,
    )

    __all__ += [
        "CallableProvider",
        "GoTrueSession",
        "PasswordSession",
        "SecretMinter",
        "StaticToken",
        "TokenKeeper",
    ]

# config: settings from the environment, .env and supasync.toml
with contextlib.suppress(ImportError):
    from .config import Settings, SubscriptionSpec, load_settings

    __all__ += ["Settings", "SubscriptionSpec", "load_settings"]

# sync: the threaded facade for synchronous code
with contextlib.suppress(ImportError):
    from .sync import SyncRealtime, SyncSubscription

    __all__ += ["SyncRealtime", "SyncSubscription"]

# gate: the caching, gap-repairing gate (optional piece)
with contextlib.suppress(ImportError):
    from .gate import CachedGate

    __all__ += ["CachedGate"]
