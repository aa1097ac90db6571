"""Gap repair: finding what a subscription missed, over PostgREST, in one of three modes.

* :mod:`~supasync.repair.repairer` - the modes (exact, cursor, diff), the pure choice between
  them (:func:`~supasync.repair.repairer.plan`) and the :class:`~supasync.repair.repairer.Repairer`.
* :mod:`~supasync.repair.rest` - PostgREST access with the subscriber's own token (keyset pages,
  re-reads by key, RPC, table facts).
* :mod:`~supasync.repair.sqlinstall` and ``sql/`` - the SQL ``supasync sql`` prints or installs
  (exact mode's change log, triggers and RPCs).

Layer: above :mod:`supasync.core`, beside :mod:`supasync.store`, below the client. It may import
``supasync.core`` and nothing else of supasync (checked by import-linter, ``pyproject.toml``).
"""
