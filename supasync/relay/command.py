"""``supasync relay``'s entry point: settings and options in, exit code out.

The command line is parsed by :mod:`supasync.cli.relay`; this function loads the settings,
merges ``[relay]`` of ``supasync.toml`` under the command-line options, and runs
:class:`~supasync.relay.relay.Relay`. Output as for the mirror: ``--json`` records on *out*, one
JSON object per line; status lines, warnings and errors on *err*.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..core.errors import CacheError, ConfigError, FilterError, MissingExtra, SupasyncError
from ..mirror.worker import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, mirror_targets
from .relay import Relay, RelayOptions, relay_settings

__all__ = ["run_relay_cli"]


def run_relay_cli(
    *,
    servers: Sequence[str] = (),
    tables: Sequence[str] = (),
    filter_text: str | None = None,
    stream: str | None = None,
    subject_prefix: str | None = None,
    cache: Path | None = None,
    snapshot: bool | None = None,
    replicas: int | None = None,
    duplicate_window: float | None = None,
    max_age: float | None = None,
    max_bytes: int | None = None,
    max_msgs: int | None = None,
    repair: str | None = None,
    json_logs: bool = False,
    metrics_port: int | None = None,
    status_interval: float | None = None,
    quiet: bool = False,
    env_file: Path | None = Path(".env"),
    toml_path: Path | None = Path("supasync.toml"),
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Load settings, validate, run the relay; returns the exit code (0 stopped, 1 runtime
    failure, 2 bad input or the ``relay`` extra missing)."""
    from ..client.config import load_settings
    from ..core.redact import install_redaction, mask

    install_redaction()
    out, err = out or sys.stdout, err or sys.stderr

    def fail(message: str, code: int) -> int:
        text = mask(message)
        if json_logs:
            out.write(json.dumps({"event": "error", "message": text}) + "\n")
            out.flush()
        err.write(f"supasync relay: error: {text}\n")
        err.flush()
        return code

    try:
        settings = load_settings(env, env_file=env_file, toml_path=toml_path)
        targets = mirror_targets(tables, filter_text, settings, repair)
        kw: dict[str, Any] = relay_settings(settings.relay)
        given: dict[str, Any] = {
            "servers": tuple(servers) or None, "stream": stream,
            "subject_prefix": subject_prefix, "cache": cache, "snapshot": snapshot,
            "replicas": replicas, "duplicate_window": duplicate_window, "max_age": max_age,
            "max_bytes": max_bytes, "max_msgs": max_msgs,
        }
        kw.update({k: v for k, v in given.items() if v is not None})
        if status_interval is not None:
            kw["status_interval"] = status_interval
        options = RelayOptions(json_logs=json_logs, metrics_port=metrics_port, quiet=quiet,
                               out=out, err=err, **kw)
        relay = Relay(settings, targets, options)
        return asyncio.run(relay.run(stop=stop))
    except (ConfigError, FilterError, CacheError, MissingExtra) as exc:
        return fail(str(exc), EXIT_CONFIG)
    except SupasyncError as exc:
        return fail(str(exc), EXIT_FAILURE)
    except OSError as exc:  # the metrics port is taken, and the like
        return fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_OK
