"""What the relay publishes for one journaled change: subject, body, headers, message id.

Sans-I/O: pure functions of the change (schema, table, key, operation, commit time, the row as
read from the store), tested without a server.

**The body is the row as it is when published.** The store's journal
(:mod:`supasync.store.journal`) records which key changed, how and when - not the row image. So
the relay reads the row from the store when it publishes the change: an ``INSERT`` or
``UPDATE`` carries the row as it is then, which may already include later changes to the same
key (their own messages follow, carrying the same or a newer row). The stream is a *state*
stream: applying its messages in order (upsert ``row``, delete on ``DELETE``) ends at the
table's state, and the last message of a key carries the key's current row. A change whose row
is gone by the time it is published (deleted later) carries ``"row": null``; the delete's own
message follows.

**The message id** (JetStream's ``Nats-Msg-Id`` header: the stream drops a message whose id it
has seen within its ``duplicate_window``) is derived from the change itself, never from the
store's local sequence number (which differs between two relays, and between a relay and its
own restart on a new file): schema, table, the key (as stored: a JSON array), the operation's
class (a write or a delete: :func:`op_class`), the commit time cut to milliseconds (Realtime
sends milliseconds; a replayed change may carry microseconds), and the occurrence of that
combination in the journal (two changes of one key within one millisecond are two messages).
Two relays following one project, or a relay republishing after a crash, give one change the
same id, so the stream holds it once. Where the commit time is unknown (a change written by a
diff or cursor repair, a snapshot row) the id is taken from the row's content instead: the same
row republished is dropped, a different row is a new message.

Consequences (documented in the README): the body's ``op`` is the store's transition (an insert
that a repair had already written is an ``UPDATE``); after a gap repair, live changes the repair
had already covered may follow as further messages carrying the same row (harmless to a consumer
that applies rows; they are not the same change twice); a change the store did not journal
is not published.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ..core.errors import ConfigError

__all__ = [
    "HEADER_COMMIT",
    "HEADER_OP",
    "HEADER_ORIGIN",
    "HEADER_TABLE",
    "MSG_ID",
    "OPS",
    "Message",
    "build_message",
    "check_subject_token",
    "message_id",
    "normalise_commit_time",
    "op_class",
    "subject_for",
    "subject_matches",
]

#: The journal's one-letter operations, and the names published.
OPS: Mapping[str, str] = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "R": "SNAPSHOT"}

MSG_ID = "Nats-Msg-Id"  # nats-server: server/stream.go, JSMsgId
HEADER_OP = "Supasync-Op"
HEADER_ORIGIN = "Supasync-Origin"
HEADER_COMMIT = "Supasync-Commit-Timestamp"
HEADER_TABLE = "Supasync-Table"

# A subject token may not be empty nor hold a dot, whitespace or a wildcard (NATS subjects:
# https://docs.nats.io/nats-concepts/subjects#characters-allowed-and-recommended-for-subject-names).
_BAD_TOKEN = re.compile(r"[.\s*>]")


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish."""

    subject: str
    body: bytes
    headers: dict[str, str]
    msg_id: str


def check_subject_token(text: str, what: str, key: str) -> str:
    """*text* as one subject token (or a dotted prefix when *what* is a prefix); ConfigError
    naming *key* otherwise."""
    parts = text.split(".") if what == "prefix" else [text]
    if not text or any(not p or _BAD_TOKEN.search(p) for p in parts):
        raise ConfigError(
            f"cannot be used in a NATS subject ({what} tokens may not be empty nor contain "
            "dots, spaces, '*' or '>')", key=key, value=text,
            fix="use letters, digits, '-' and '_' (a prefix may have dots between tokens)")
    return text


def subject_for(prefix: str, schema: str, table: str) -> str:
    """``<prefix>.<schema>.<table>``."""
    return f"{prefix}.{schema}.{table}"


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject *pattern* (``*`` one token, ``>`` the rest) matches *subject*."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


_UTC_TEXT = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(?:Z|\+00:00)$")


@functools.lru_cache(maxsize=4096)
def normalise_commit_time(text: str | None) -> str | None:
    """A commit time as UTC ISO 8601 with milliseconds (``2026-08-21T10:15:30.123Z``), cut (not
    rounded) as Realtime renders it; None stays None, unparsable text is kept as it is."""
    if text is None:
        return None
    fast = _UTC_TEXT.match(text)  # already UTC (what the store holds): text work only
    if fast is not None:
        return f"{fast.group(1)}.{(fast.group(2) or '').ljust(3, '0')[:3]}Z"
    try:
        at = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if at.tzinfo is None:
        at = at.replace(tzinfo=_dt.UTC)
    at = at.astimezone(_dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _canonical(value: Any) -> bytes:
    """Compact JSON with sorted keys (part of message ids: never change it lightly)."""
    return _CANONICAL.encode(value)


# Bodies are encoded with msgspec (a dependency already; several times json.dumps' speed):
# anything it does not know (Decimal aside, which it writes as a string) becomes its str().
_ENCODER = msgspec.json.Encoder(enc_hook=str)
_CANONICAL = msgspec.json.Encoder(enc_hook=str, order="sorted")


def op_class(op: str) -> str:
    """What the message id knows of the operation: ``W`` (a write: insert or update), ``D``
    (delete) or ``R`` (a snapshot row). Insert and update are one class because the journal's
    letter is the *store's* transition - a live insert applied to a row a repair had already
    written is journaled as an update by one relay and as an insert by another."""
    return "W" if op in ("I", "U") else op


def message_id(schema: str, table: str, key: Sequence[Any], op: str,
               commit_time: str | None, row: Mapping[str, Any] | None,
               occurrence: int = 0) -> str:
    """The deterministic ``Nats-Msg-Id`` of a change (see the module docstring).

    *key* is the key as stored (the journal's), *op* the journal's letter (``R`` for a snapshot
    row), *commit_time* already normalised; *row* is used only when *commit_time* is None.
    *occurrence* tells apart changes of one key with the same operation class and the same
    commit millisecond (two transactions within a millisecond): 0 for the first such entry in
    the journal, 1 for the next... (:meth:`supasync.relay.source.RelaySource.read_changes`).
    """
    cls = op_class(op)
    parts = [schema.encode(), table.encode(), _canonical(list(key)), cls.encode()]
    if commit_time is not None:
        parts.append(commit_time.encode())
        if occurrence:
            parts.append(str(occurrence).encode())
    else:
        parts.append(b"row:" + _canonical(row))
    digest = hashlib.sha256(b"\x1f".join(parts)).hexdigest()[:40]
    return f"{schema}.{table}.{cls}.{digest}"


def build_message(prefix: str, schema: str, table: str, key: Sequence[Any],
                  key_columns: Sequence[str], op: str, origin: str, commit_time: str | None,
                  row: Mapping[str, Any] | None, decoded_key: Sequence[Any],
                  occurrence: int = 0) -> Message:
    """The message for one change.

    Args:
        key: the key as stored (journal form), for the id.
        decoded_key: the same key decoded the way rows are (for the body's ``pk``).
        op: ``I``, ``U``, ``D`` or ``R`` (a snapshot row).
        origin: ``live``, ``replay``, ``snapshot`` or ``resync``.
        row: the row as read now (None: deleted, or a delete).
        occurrence: see :func:`message_id`.

    Body (JSON object): ``schema``, ``table``, ``op`` (``INSERT``/``UPDATE``/``DELETE``/
    ``SNAPSHOT``), ``pk`` (column -> value), ``row`` (the row, or null), ``origin``,
    ``commit_timestamp`` (or null). Headers: ``Nats-Msg-Id``, ``Supasync-Op``,
    ``Supasync-Origin``, ``Supasync-Table`` and, when known, ``Supasync-Commit-Timestamp``.
    """
    commit = normalise_commit_time(commit_time)
    body_row = None if op == "D" else row
    msg_id = message_id(schema, table, key, op, commit, body_row, occurrence)
    name = OPS[op]
    body = {
        "schema": schema,
        "table": table,
        "op": name,
        "pk": dict(zip(key_columns, decoded_key, strict=True)),
        "row": None if body_row is None else dict(body_row),
        "origin": origin,
        "commit_timestamp": commit,
    }
    headers = {MSG_ID: msg_id, HEADER_OP: name, HEADER_ORIGIN: origin,
               HEADER_TABLE: f"{schema}.{table}"}
    if commit is not None:
        headers[HEADER_COMMIT] = commit
    return Message(subject_for(prefix, schema, table), _ENCODER.encode(body), headers, msg_id)
