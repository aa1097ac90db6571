"""The mirror worker: keep tables in a local SQLite file through restarts and outages.

* :mod:`~supasync.mirror.worker` - the ``supasync mirror`` run: options, targets, the live loop;
* :mod:`~supasync.mirror.table` - one table: its gate (the library's
  :class:`~supasync.client.gate.CachedGate`, a read model on the mirror file) and its figures;
* :mod:`~supasync.mirror.status` - its figures: status line, JSON records, Prometheus text.

Layer: a worker, above the client. It may import :mod:`supasync.core`, :mod:`supasync.store`,
:mod:`supasync.repair` and :mod:`supasync.client`; never the CLI, the devstack or another worker
(checked by import-linter, ``pyproject.toml``).
"""
