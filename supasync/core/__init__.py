"""The sans-I/O core: what every other part of supasync is built from.

Filters (model, parser, three renderings), the :class:`~supasync.core.changes.Change` model and
payload decoding, the merge logic of gap repair, backoff policy, the status model, the exception
tree and secret redaction. Plain classes and functions: no sockets, no event loop, no clock read
(time is passed in), so everything here is tested without a network.

Layer: the bottom. It imports nothing else of supasync (checked by import-linter,
``pyproject.toml``); the local stack (:mod:`supasync.devstack`) may import it.
"""
