"""pgoutput v1 decoding on hand-built bytes and on bytes captured from PostgreSQL 15."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from supasync.devstack.realtime.pgoutput import (
    UNCHANGED,
    Begin,
    ChangeAssembler,
    Commit,
    Delete,
    Insert,
    Origin,
    PgOutputError,
    Relation,
    Truncate,
    TypeInfo,
    Unknown,
    Update,
    decode_message,
    pg_time,
)


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def tup(*values: object) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(v, str)
            raw = v.encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def relation(relid: int, schema: str, table: str, ident: str,
             cols: list[tuple[str, int, bool]]) -> bytes:
    out = b"R" + struct.pack(">I", relid) + s(schema) + s(table) + ident.encode()
    out += struct.pack(">h", len(cols))
    for name, oid, key in cols:
        out += bytes([1 if key else 0]) + s(name) + struct.pack(">Ii", oid, -1)
    return out


T0 = datetime(2026, 8, 21, 10, 15, 30, 123456, tzinfo=UTC)
T0_MICROS = int((T0 - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)


def begin(lsn: int, xid: int = 7) -> bytes:
    return b"B" + struct.pack(">QqI", lsn, T0_MICROS, xid)


def commit(lsn: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, lsn, lsn + 48, T0_MICROS)


def test_begin_commit_origin_type() -> None:
    b = decode_message(begin(0x1_0000_0000))
    assert b == Begin(final_lsn=0x1_0000_0000, commit_time=T0, xid=7)
    c = decode_message(commit(99))
    assert isinstance(c, Commit) and c.commit_lsn == 99 and c.end_lsn == 147
    assert c.commit_time == T0
    o = decode_message(b"O" + struct.pack(">Q", 5) + s("node_a"))
    assert o == Origin(5, "node_a")
    y = decode_message(b"Y" + struct.pack(">I", 16500) + s("public") + s("mood"))
    assert y == TypeInfo(16500, "public", "mood")
    assert pg_time(0) == datetime(2000, 1, 1, tzinfo=UTC)


def test_relation_and_pg_catalog_namespace() -> None:
    r = decode_message(relation(42, "", "t", "f", [("id", 23, True), ("v", 25, False)]))
    assert isinstance(r, Relation)
    assert r.schema == "pg_catalog" and r.table == "t" and r.replica_identity == "f"
    assert [(c.name, c.type_oid, c.is_key, c.type_modifier) for c in r.columns] == [
        ("id", 23, True, -1), ("v", 25, False, -1)]


def test_insert_update_delete_truncate() -> None:
    rel = struct.pack(">I", 42)
    ins = decode_message(b"I" + rel + b"N" + tup("1", None, UNCHANGED, "é"))
    assert ins == Insert(42, ("1", None, UNCHANGED, "é"))
    upd = decode_message(b"U" + rel + b"K" + tup("1", None) + b"N" + tup("2", "x"))
    assert upd == Update(42, "K", ("1", None), ("2", "x"))
    upd2 = decode_message(b"U" + rel + b"N" + tup("2", "y"))
    assert upd2 == Update(42, None, None, ("2", "y"))
    dele = decode_message(b"D" + rel + b"O" + tup("2", "y"))
    assert dele == Delete(42, "O", ("2", "y"))
    tr = decode_message(b"T" + struct.pack(">IB", 2, 1) + struct.pack(">II", 42, 43))
    assert tr == Truncate(1, (42, 43))
    assert isinstance(decode_message(b"M\x01rest"), Unknown)


@pytest.mark.parametrize("data", [
    b"", b"B\x00", b"I\x00\x00\x00\x2aX", b"R\x00\x00\x00\x2apublic",
    b"I\x00\x00\x00\x2aN\x00\x01t\x00\x00\x00\x09ab", b"I\x00\x00\x00\x2aN\x00\x01b",
    b"D\x00\x00\x00\x2aN\x00\x00",
])
def test_malformed(data: bytes) -> None:
    with pytest.raises(PgOutputError):
        decode_message(data)


def test_assembler_builds_row_changes() -> None:
    a = ChangeAssembler()
    cols = [("id", 23, True), ("big", 25, False), ("k", 23, False)]
    rel = struct.pack(">I", 9)
    msgs = [
        begin(1000), relation(9, "public", "toast", "d", cols),
        b"I" + rel + b"N" + tup("1", "zzz", None),
        b"U" + rel + b"N" + tup("1", UNCHANGED, "2"),
        b"U" + rel + b"K" + tup("1", None, None) + b"N" + tup("5", UNCHANGED, "2"),
        b"D" + rel + b"K" + tup("5", None, None),
        commit(1000),
    ]
    out = [c for m in msgs if (c := a.feed(m)) is not None]
    assert [c.op for c in out] == ["INSERT", "UPDATE", "UPDATE", "DELETE"]
    assert out[0].new == {"id": "1", "big": "zzz", "k": None} and out[0].old is None
    assert out[1].new == {"id": "1", "k": "2"} and out[1].old is None  # TOAST left out
    assert out[2].old == {"id": "1"} and out[2].old_kind == "K"  # key columns only
    assert out[3].old == {"id": "5"} and out[3].new is None
    assert all(c.commit_lsn == 1000 and c.commit_time == T0 and c.xid == 7 for c in out)
    assert [c.seq for c in out] == [1, 2, 3, 4]


def test_assembler_errors() -> None:
    a = ChangeAssembler()
    with pytest.raises(PgOutputError, match="outside a transaction"):
        a.feed(b"I" + struct.pack(">I", 1) + b"N" + tup("1"))
    a.feed(begin(1))
    with pytest.raises(PgOutputError, match="unknown relation"):
        a.feed(b"I" + struct.pack(">I", 1) + b"N" + tup("1"))


# Captured from PostgreSQL 15 (pg_logical_slot_get_binary_changes, proto_version 1):
#   t(id int pk, v text, n numeric) DEFAULT identity; f(id int pk, big text) FULL identity;
#   insert t (1,'x',null); update t set v='y', id=2; insert f (1,'a'); update f set big='b';
#   delete from f; delete from t; truncate t.
CAPTURED = [
    b'B\x00\x00\x00\x00\x01R\xcb\x10\x00\x03\x04 \xad\xc0\xf8p\x00\x00\x02\xdc',
    b'R\x00\x00@@public\x00t\x00d\x00\x03\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\x00v\x00'
    b'\x00\x00\x00\x19\xff\xff\xff\xff\x00n\x00\x00\x00\x06\xa4\xff\xff\xff\xff',
    b'I\x00\x00@@N\x00\x03t\x00\x00\x00\x011t\x00\x00\x00\x01xn',
    b'C\x00\x00\x00\x00\x00\x01R\xcb\x10\x00\x00\x00\x00\x01R\xcb@\x00\x03\x04 \xad\xc0\xf8p',
    b'B\x00\x00\x00\x00\x01R\xcb\xd8\x00\x03\x04 \xad\xc0\xfa\x10\x00\x00\x02\xdd',
    b'U\x00\x00@@K\x00\x03t\x00\x00\x00\x011nnN\x00\x03t\x00\x00\x00\x012t\x00\x00\x00\x01yn',
    b'C\x00\x00\x00\x00\x00\x01R\xcb\xd8\x00\x00\x00\x00\x01R\xcc\x08\x00\x03\x04 \xad\xc0\xfa'
    b'\x10',
    b'B\x00\x00\x00\x00\x01R\xcc\xe8\x00\x03\x04 \xad\xc0\xfa\xfe\x00\x00\x02\xde',
    b'R\x00\x00@Gpublic\x00f\x00f\x00\x02\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\x01big\x00'
    b'\x00\x00\x00\x19\xff\xff\xff\xff',
    b'I\x00\x00@GN\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01a',
    b'C\x00\x00\x00\x00\x00\x01R\xcc\xe8\x00\x00\x00\x00\x01R\xcd\x18\x00\x03\x04 \xad\xc0\xfa'
    b'\xfe',
    b'B\x00\x00\x00\x00\x01R\xcdp\x00\x03\x04 \xad\xc0\xfb\x8f\x00\x00\x02\xdf',
    b'U\x00\x00@GO\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01aN\x00\x02t\x00\x00\x00\x011t\x00'
    b'\x00\x00\x01b',
    b'C\x00\x00\x00\x00\x00\x01R\xcdp\x00\x00\x00\x00\x01R\xcd\xa0\x00\x03\x04 \xad\xc0\xfb\x8f',
    b'B\x00\x00\x00\x00\x01R\xcd\xe8\x00\x03\x04 \xad\xc0\xfb\xf5\x00\x00\x02\xe0',
    b'D\x00\x00@GO\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01b',
    b'C\x00\x00\x00\x00\x00\x01R\xcd\xe8\x00\x00\x00\x00\x01R\xce\x18\x00\x03\x04 \xad\xc0\xfb'
    b'\xf5',
    b'B\x00\x00\x00\x00\x01R\xe5\xd8\x00\x03\x04 \xad\xc1\tN\x00\x00\x02\xe3',
    b'D\x00\x00@@K\x00\x03t\x00\x00\x00\x012nn',
    b'C\x00\x00\x00\x00\x00\x01R\xe5\xd8\x00\x00\x00\x00\x01R\xe6\x08\x00\x03\x04 \xad\xc1\tN',
    b'B\x00\x00\x00\x00\x01R\xf1\x88\x00\x03\x04 \xad\xc1\x0cf\x00\x00\x02\xe4',
    b'R\x00\x00@@public\x00t\x00d\x00\x03\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\x00v\x00'
    b'\x00\x00\x00\x19\xff\xff\xff\xff\x00n\x00\x00\x00\x06\xa4\xff\xff\xff\xff',
    b'T\x00\x00\x00\x01\x00\x00\x00@@',
    b'C\x00\x00\x00\x00\x00\x01R\xf1\x88\x00\x00\x00\x00\x01R\xf2\xf8\x00\x03\x04 \xad\xc1\x0cf',
]


def test_captured_stream() -> None:
    a = ChangeAssembler()
    out = [c for m in CAPTURED if (c := a.feed(m)) is not None]
    summary = [(c.relation.table, c.op, c.new, c.old, c.old_kind) for c in out]
    assert summary == [
        ("t", "INSERT", {"id": "1", "v": "x", "n": None}, None, None),
        ("t", "UPDATE", {"id": "2", "v": "y", "n": None}, {"id": "1"}, "K"),
        ("f", "INSERT", {"id": "1", "big": "a"}, None, None),
        ("f", "UPDATE", {"id": "1", "big": "b"}, {"id": "1", "big": "a"}, "O"),
        ("f", "DELETE", None, {"id": "1", "big": "b"}, "O"),
        ("t", "DELETE", None, {"id": "2"}, "K"),
    ]
    rel_t = a.relations[16448]
    assert rel_t.replica_identity == "d" and [c.type_oid for c in rel_t.columns] == [23, 25, 1700]
    assert a.relations[16455].replica_identity == "f"
    # commit LSNs increase in stream order; commit time is the Begin's timestamp
    lsns = [c.commit_lsn for c in out]
    assert lsns == sorted(lsns)
    assert all(c.commit_time.year == 2026 for c in out)
    assert isinstance(decode_message(CAPTURED[-2]), Truncate)
