"""Keys delivered to handlers whose rows may not be in the cache yet: a crash's loose ends.

A caching gate delivers a change before it writes the change's row (so a crash never loses a
change: the next repair compares the server with the cache and delivers the difference). One
case escapes that comparison: a change delivered, then the process killed before its row was
written, then the row deleted upstream while nothing ran. After the restart the cache and the
server agree that the row does not exist, and the handlers, which saw it, are never told it is
gone (issue: a handler's view kept a deleted row after a SIGKILL).

:class:`InFlight` closes that hole. Before a delivery, its keys are appended to a small file
next to the cache (one ``write`` call: the kernel keeps it through a SIGKILL of the process);
once every delivered row has been written, the file is emptied. A start that finds keys in it
hands them to the first repair, which delivers the server's current state for each of them
again: the row, or a DELETE for a key the server no longer has.

Contract: :meth:`InFlight.mark` before delivering, :meth:`InFlight.settled` when the cache holds
every delivered row, :meth:`InFlight.load` at start. A gate without a file (a temporary or
in-memory cache, which no restart can resume) uses ``InFlight(None)``, which records nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["InFlight", "inflight_path"]


def inflight_path(cache: str | os.PathLike[str], subscription: str) -> Path:
    """The in-flight file of *subscription* in the cache file *cache* (several subscriptions
    share one cache file, each has its own in-flight file)."""
    digest = hashlib.sha256(subscription.encode()).hexdigest()[:16]
    path = Path(cache)
    return path.with_name(f"{path.name}.{digest}.inflight")


class InFlight:
    """The in-flight keys of one subscription (see the module docstring)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._dirty = False
        # Keys a previous run left, kept in the file until they have been delivered again.
        self._carried: list[tuple[Any, ...]] = []

    def load(self) -> list[tuple[Any, ...]]:
        """The keys a previous run delivered without caching their rows (unique, in order).
        A torn last line (the kill came mid-write) is skipped: its delivery had not begun."""
        if self.path is None:
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError):
            return []  # unreadable: nothing to add; the usual repair still runs
        keys: dict[tuple[Any, ...], None] = {}
        for line in text.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, list) and value:
                keys[tuple(value)] = None
        self._carried = list(keys)
        return list(keys)

    def mark(self, keys: Iterable[Sequence[Any]]) -> None:
        """Record *keys* before their changes are delivered (one system call)."""
        if self.path is None:
            return
        data = "".join(json.dumps(list(k), default=str) + "\n" for k in keys)
        if not data:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self._fd, data.encode())
        self._dirty = True

    def settled(self) -> None:
        """Every row delivered in this run is in the cache: forget their keys (a previous
        run's keys stay until :meth:`redelivered`)."""
        if self._dirty and self._fd is not None:
            os.ftruncate(self._fd, 0)
            self._dirty = False
            if self._carried:
                self.mark(self._carried)

    def redelivered(self) -> None:
        """A previous run's keys have been delivered again and their rows cached."""
        self._carried = []
        if self._fd is not None:
            self._dirty = True
            self.settled()
        elif self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
