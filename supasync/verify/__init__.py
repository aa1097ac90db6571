"""``supasync verify``: check every subscription end to end, with exit codes for CI.

* :mod:`~supasync.verify.model` - the findings and the facts they are judged on (plain data);
* :mod:`~supasync.verify.checks` - the judgement: facts in, findings out (pure functions);
* :mod:`~supasync.verify.facts` - gathering facts (PostgREST, the catalog, a realtime join);
* :mod:`~supasync.verify.probe` - the probe: a real write, seen arriving live;
* :mod:`~supasync.verify.render` - findings as text or JSON;
* :mod:`~supasync.verify.runner` - one run over many subscriptions.

Layer: a worker, above the client. It may import :mod:`supasync.core`, :mod:`supasync.store`,
:mod:`supasync.repair` and :mod:`supasync.client`; never the CLI, the devstack or another worker
(checked by import-linter, ``pyproject.toml``).
"""
