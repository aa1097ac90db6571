"""Workers that broadcast job progress and see each other's presence, over reconnects.

    python examples/broadcast_chat.py --name alice                 # watches, stays present
    python examples/broadcast_chat.py --name bob --job-steps 5     # runs a job, reports it

Run several in different terminals: each one tracks its presence on the ``jobs`` channel
(``presence: +bob`` / ``presence: -bob`` in the others), and a worker given ``--job-steps``
runs a pretend job, broadcasting its progress; everybody else prints it. It reads
SUPABASE_URL, SUPABASE_ANON_KEY and a credential from the environment or ``.env``
(``supasync dev --env-file .env`` writes them for the local stack).

What it shows:

* ``rt.channel(topic)`` on the same supervised connection as subscriptions: dropped sockets
  and expired tokens are repaired without the app doing anything;
* ``await ch.send(...)`` returns once the server acknowledged the message; while the socket is
  down, messages wait in the outbox and go out in order after the rejoin (each with an id, so
  the receivers here drop re-sent copies);
* ``ch.track(meta)`` keeps the worker present across reconnects and token refreshes;
  ``ch.on_presence`` sees only real joins and leaves;
* ``--private``: the channel is authorised by RLS on ``realtime.messages`` (see the README,
  "Broadcast and presence"); without a policy the join fails with ``ChannelUnauthorized``,
  whose message names the policy to add.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from supasync import Broadcast, PresenceChange, Realtime

log = logging.getLogger("broadcast_chat")


async def main(name: str, topic: str, private: bool, job_steps: int,
               seconds: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    rt = Realtime.from_env()
    # The presence key is the worker's name: peers see the same key come back after a drop.
    jobs = rt.channel(topic, private=private, presence_key=name)

    @jobs.on_broadcast("progress")
    def show_progress(msg: Broadcast) -> None:  # a sync handler: runs in a worker thread
        p = msg.payload
        print(f"progress from {p['worker']}: job={p['job']} pct={p['pct']}", flush=True)

    @jobs.on_presence
    def show_presence(change: PresenceChange) -> None:
        for key in change.joins:
            if key != name:
                print(f"presence: +{key}", flush=True)
        for key in change.leaves:
            if key != name and key not in change.state:
                print(f"presence: -{key}", flush=True)

    async with rt:
        await jobs.track({"worker": name, "status": "idle"})  # tracked again after rejoins
        await rt.wait_live(timeout=30)  # raises ChannelUnauthorized for a refused private topic
        print(f"live: {jobs!r}", flush=True)
        if job_steps:
            await jobs.track({"worker": name, "status": "busy"})
            for step in range(1, job_steps + 1):
                await asyncio.sleep(0.1)  # the pretend work
                pct = round(100 * step / job_steps)
                await jobs.send("progress", {"worker": name, "job": 1, "pct": pct})
            await jobs.track({"worker": name, "status": "idle"})
            print(f"job 1 done, {jobs.stats.acked} messages acknowledged", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            pass
        print("stopping", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="this worker's name (its presence key)")
    parser.add_argument("--topic", default="jobs")
    parser.add_argument("--private", action="store_true", help="an RLS-authorised channel")
    parser.add_argument("--job-steps", type=int, default=0, help="run a job of this many steps")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main(args.name, args.topic, args.private, args.job_steps, args.seconds))
