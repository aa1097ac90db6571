"""The relay: tables' change stream published into NATS JetStream, exactly once in the stream.

* :mod:`~supasync.relay.relay` - :class:`Relay` (embed it) and :class:`RelayOptions`: the mirror
  machinery into a store file, and the publisher following its journal;
* :mod:`~supasync.relay.messages` - subject, body, headers and the deterministic message id of a
  change (sans-I/O);
* :mod:`~supasync.relay.source` - journal batches with their rows, and the saved positions;
* :mod:`~supasync.relay.jetstream` - nats-py: connect, create or check the stream, publish;
* :mod:`~supasync.relay.status` - lag and position: status line, JSON record, Prometheus text;
* :mod:`~supasync.relay.command` - ``supasync relay``'s entry point.

Layer: above the mirror (it runs :func:`supasync.mirror.worker.run_mirror`), below the CLI. nats-py
(the ``relay`` extra) is imported only when a relay starts.
"""

from .relay import Relay, RelayOptions

__all__ = ["Relay", "RelayOptions"]
