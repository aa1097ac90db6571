"""Changes to browsers: a resumable server-sent-events endpoint over a store's change journal.

* :mod:`~supasync.web.events` - change events, their SSE wire form, filtering and coalescing
  (sans I/O).
* :mod:`~supasync.web.source` - the :class:`Source` protocol (rows with their ``seq``, changes
  after a ``seq``), :class:`StoreSource` over a store file, :class:`SubscriptionSource` over a
  Realtime subscription's read model, and the :class:`Hub` that reads each change once for
  every stream.
* :mod:`~supasync.web.endpoint` - :class:`LiveEndpoint`, the Starlette ASGI app
  (``/<name>/rows``, ``/<name>/changes``).
* :mod:`~supasync.web.serve` - :func:`serve` (uvicorn, with a prompt shutdown) and
  :func:`run_serve` (``supasync serve``: a mirror worker and the endpoint in one process).

Needs the ``web`` extra (``pip install 'supasync[web]'``: starlette, uvicorn). Layer: above the
mirror and the client, below the CLI (import-linter, ``pyproject.toml``).
"""

from __future__ import annotations

from .endpoint import LiveEndpoint, StreamStats
from .events import LiveEvent
from .source import Batch, Hub, Rows, Source, StoreSource, SubscriptionSource

__all__ = ["Batch", "Hub", "LiveEndpoint", "LiveEvent", "Rows", "Source", "StoreSource",
           "StreamStats", "SubscriptionSource"]
