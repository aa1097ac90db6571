"""Run the local stack in the foreground until SIGINT/SIGTERM (``supasync dev``).

``python -m supasync.devstack`` and ``supasync dev`` both end up in :func:`run`. With
``--ready-file`` the stack writes its environment there as JSON once it accepts connections,
which is how the pytest plugin and the tests wait for it without sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from supasync.core.redact import DEFAULT_LOGGERS, install_redaction

from .app import Stack, write_env_file
from .context import DEFAULT_PORT, StackConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="supasync dev", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 54321; 0 = any)")
    p.add_argument("--data-dir", type=Path, help="keep database, secret and keys here")
    p.add_argument("--env-file", type=Path, help="write SUPABASE_* variables to this file")
    p.add_argument("--sql", type=Path, action="append", default=[],
                   help="SQL file to run after start")
    p.add_argument("--jwt-expiry", type=int, default=3600, help="access-token lifetime in seconds")
    p.add_argument("--max-record-bytes", type=int, default=1_048_576)
    p.add_argument("--max-rows", type=int, default=None,
                   help="cap every REST read at this many rows, like Supabase's 'Max rows' "
                   "(1000 there by default; default here: no cap)")
    p.add_argument("--real-backoffs", action="store_true",
                   help="sleep 2 s before refusing a connect and 5 s before a join error, "
                   "like the real server")
    p.add_argument("--durable", action="store_true",
                   help="run PostgreSQL with fsync on (crash-safe, slower); by default fsync is "
                   "off: fast, but a machine crash can lose or corrupt the data directory")
    p.add_argument("--max-events-per-second", type=int, default=None,
                   help="tenant limit on broadcast events (60 s average), as Supabase's (100 "
                   "there by default; default here: none)")
    p.add_argument("--max-joins-per-second", type=int, default=None,
                   help="tenant limit on channel joins (60 s average; 100 on Supabase by "
                   "default; default here: none)")
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="do not print the environment")
    return p


def config_from_args(args: argparse.Namespace) -> StackConfig:
    for f in args.sql:
        if not f.is_file():
            raise SystemExit(f"error: --sql {f}: no such file. Fix: give the path of an SQL file.")
    if args.max_rows is not None and args.max_rows < 1:
        raise SystemExit(f"error: --max-rows {args.max_rows}: must be at least 1.")
    for flag, value in (("--max-events-per-second", args.max_events_per_second),
                        ("--max-joins-per-second", args.max_joins_per_second)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} {value}: must be at least 1.")
    if args.jwt_expiry <= 0:
        raise SystemExit(
            f"error: --jwt-expiry {args.jwt_expiry}: must be a positive number of seconds."
        )
    return StackConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir.resolve() if args.data_dir else None,
        jwt_expiry=args.jwt_expiry,
        max_record_bytes=args.max_record_bytes,
        max_rows=args.max_rows,
        connect_error_backoff_ms=2000 if args.real_backoffs else 0,
        join_error_backoff_ms=5000 if args.real_backoffs else 0,
        durable=args.durable,
        sql_files=list(args.sql),
        max_events_per_second=args.max_events_per_second,
        max_joins_per_second=args.max_joins_per_second,
    )


async def serve(config: StackConfig, *, env_file: Path | None, ready_file: Path | None,
                quiet: bool) -> None:
    stack = Stack(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stack.start()
    try:
        env = stack.env()
        if env_file:
            write_env_file(env_file, env)
        if not quiet:
            print("supasync local stack is up. Environment:", flush=True)
            for k, v in env.items():
                print(f"{k}={v}", flush=True)
            print("Ctrl-C to stop.", flush=True)
        if ready_file:  # it holds the keys and the database password: owner only
            tmp = ready_file.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({**env, "pid": os.getpid()}))
            os.replace(tmp, ready_file)
        await stop.wait()
    finally:
        await stack.stop()


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("SUPASYNC_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_redaction((*DEFAULT_LOGGERS, "aiohttp", "psycopg", "asyncio"))
    config = config_from_args(args)
    try:
        asyncio.run(serve(config, env_file=args.env_file, ready_file=args.ready_file,
                          quiet=args.quiet))
    except OSError as exc:
        print(f"error: could not start the local stack: {exc}", file=sys.stderr)
        return 1
    return 0
