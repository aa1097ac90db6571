"""The mirror worker: keep tables in a local SQLite file through restarts and outages.

* :mod:`~supasync.mirror.worker` - the ``supasync mirror`` run: options, targets, the live loop;
* :mod:`~supasync.mirror.gate` - a subscription gate whose cache is the mirror file;
* :mod:`~supasync.mirror.sync` - snapshot and gap repair streamed into the file;
* :mod:`~supasync.mirror.status` - its figures: status line, JSON records, Prometheus text.

Layer: a worker, above the client. It may import :mod:`supasync.core`, :mod:`supasync.store`,
:mod:`supasync.repair` and :mod:`supasync.client`; never the CLI, the devstack or another worker
(checked by import-linter, ``pyproject.toml``).
"""
