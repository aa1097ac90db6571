"""The client: declared subscriptions on a supervised connection that never gives up.

* :mod:`~supasync.client.config` - settings from the environment, ``.env`` and ``supasync.toml``;
* :mod:`~supasync.client.tokens` - token providers and the TokenKeeper;
* :mod:`~supasync.client.connection` - realtime-py sockets, supervised, sharded, rebuilt;
* :mod:`~supasync.client.frames` - postgres_changes frames read off realtime-py's socket;
* :mod:`~supasync.client.subscription` - one declared subscription and its handlers;
* :mod:`~supasync.client.gate` - a subscription's cache and gap repair, on the event loop;
* :mod:`~supasync.client.realtime` - :class:`~supasync.client.realtime.Realtime`, the async client;
* :mod:`~supasync.client.sync` - :class:`~supasync.client.sync.SyncRealtime`, the threaded facade.

Layer: above :mod:`supasync.core`, :mod:`supasync.store` and :mod:`supasync.repair`. It imports no
worker (mirror, verify), no CLI and no devstack module (checked by import-linter,
``pyproject.toml``).
"""
