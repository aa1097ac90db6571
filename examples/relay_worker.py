"""A worker consuming the relayed change stream: a durable pull consumer, shared by processes.

    supasync relay --to nats://127.0.0.1:4222 --table public.todos --cache relay.sqlite &
    python examples/relay_worker.py --name w1 &
    python examples/relay_worker.py --name w2 &

Every worker started with the same ``--durable`` name pulls from one JetStream consumer, so the
changes are shared out between them: each change goes to one worker, which acknowledges it
(explicit ack) after handling it. A worker that dies before acknowledging (``--crash-after N``
simulates one) leaves its message unacknowledged, and JetStream delivers it again, to a worker
still running, once ``--ack-wait`` seconds have passed. So handle changes idempotently (the
bodies are rows: an upsert by key, or a delete, is naturally so).

Each message's body is JSON: ``schema``, ``table``, ``op`` (INSERT, UPDATE, DELETE, SNAPSHOT),
``pk``, ``row`` (the row as it was when relayed; null for a delete), ``origin``,
``commit_timestamp``. Needs ``pip install 'supasync[relay]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

try:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
except ImportError:  # pragma: no cover - said to the user
    sys.exit("this example needs nats-py: pip install 'supasync[relay]'")


def handle(name: str, change: dict[str, Any], delivered: int) -> None:
    """Your work goes here. This one prints the change."""
    pk = json.dumps(change["pk"], sort_keys=True)
    again = f" (delivery {delivered})" if delivered > 1 else ""
    print(f"{name}: {change['op']} {change['schema']}.{change['table']} {pk}{again}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--stream", default="SUPASYNC")
    parser.add_argument("--subject", default="supasync.>",
                        help="what to consume, e.g. supasync.public.todos")
    parser.add_argument("--durable", default="workers",
                        help="consumer name: workers with the same name share the work")
    parser.add_argument("--name", default=f"worker-{os.getpid()}")
    parser.add_argument("--ack-wait", type=float, default=30.0,
                        help="seconds before an unacknowledged message is delivered again")
    parser.add_argument("--crash-after", type=int, default=0,
                        help="exit without acknowledging the Nth message (to see redelivery)")
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    nc = await nats.connect(args.to, name=args.name, max_reconnect_attempts=-1)
    js = nc.jetstream()
    # Created by the first worker, joined by the others (same durable name, same config).
    sub = await js.pull_subscribe(
        args.subject, durable=args.durable, stream=args.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=args.ack_wait,
                              deliver_policy=DeliverPolicy.ALL, max_ack_pending=1000))
    print(f"{args.name}: consuming {args.subject} from {args.stream} as {args.durable}",
          flush=True)
    handled = 0
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch=10, timeout=1.0)
            except TimeoutError:  # nats-py raises asyncio's (or its subclass)
                continue  # nothing to do within a second: ask again
            for msg in msgs:
                handled += 1
                if args.crash_after and handled == args.crash_after:
                    print(f"{args.name}: crashing before acknowledging a message", flush=True)
                    os._exit(3)  # no ack, no clean-up: as a crash
                handle(args.name, json.loads(msg.data), msg.metadata.num_delivered)
                await msg.ack()  # only now: a crash before this line means a redelivery
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5.0)
    print(f"{args.name}: stopped after {handled} changes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
