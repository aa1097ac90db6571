"""The Realtime wire format (realtime-protocol.md §2), bytes and text in, messages out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supasync.devstack.realtime.protocol import (
    BINARY,
    JSON,
    V1,
    V2,
    Message,
    ProtocolError,
    UserBroadcast,
    serializer_for,
)


def test_vsn_negotiation() -> None:
    assert serializer_for(None) is V1
    assert serializer_for("1.0.0") is V1
    assert serializer_for("1.0.3") is V1
    assert serializer_for("2.0.0") is V2
    for bad in ("3.0.0", "1.1.0", "2", "abc", "", "2.0.0.0", "1.0.x"):
        assert serializer_for(bad) is None, bad


def test_v1_decode_requires_the_four_keys() -> None:
    msg = V1.decode_text('{"topic":"t","event":"e","payload":{"a":1},"ref":"3","join_ref":"1"}')
    assert (msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload) == ("1", "3", "t", "e",
                                                                          {"a": 1})
    null_ref = V1.decode_text('{"topic":"t","event":"e","payload":{},"ref":null}')
    assert null_ref.ref is None and null_ref.join_ref is None
    for bad in ('{"topic":"t","event":"e","payload":{}}', '{"event":"e","payload":{},"ref":1}',
                "[1,2,3,4,5]", "nope", '{"topic":1,"event":"e","payload":{},"ref":null}',
                '{"topic":"t","event":null,"payload":{},"ref":null}', "", "\xff"):
        with pytest.raises(ProtocolError):
            V1.decode_text(bad)


def test_v1_encode_never_carries_join_ref() -> None:
    text = V1.encode(Message.reply("1", "7", "phoenix", "ok", {}))
    assert json.loads(text) == {"topic": "phoenix", "event": "phx_reply",
                                "payload": {"status": "ok", "response": {}}, "ref": "7"}
    close = json.loads(V1.encode(Message.close("4", "realtime:x")))
    assert close == {"topic": "realtime:x", "event": "phx_close", "payload": {}, "ref": "4"}


def test_v2_text_arrays() -> None:
    msg = V2.decode_text('["1","2","realtime:a","phx_join",{},"extra"]')
    assert (msg.join_ref, msg.ref, msg.topic, msg.event) == ("1", "2", "realtime:a", "phx_join")
    for bad in ('["1","2","t","e"]', '{"topic":"t"}', '[null,null,3,"e",{}]', "x"):
        with pytest.raises(ProtocolError):
            V2.decode_text(bad)
    assert json.loads(V2.encode(Message.push("3", "realtime:a", "system", {"x": 1}))) == [
        "3", None, "realtime:a", "system", {"x": 1}]
    assert json.loads(V2.encode(Message.fanout("realtime:a", "broadcast", {}))) == [
        None, None, "realtime:a", "broadcast", {}]
    assert json.loads(V2.encode(Message.close("3", "realtime:a"))) == [
        "3", "3", "realtime:a", "phx_close", {}]


def test_kind3_worked_example_from_the_doc() -> None:
    frame = bytes([3, 1, 1, 14, 6, 0, 1]) + b"3" + b"5" + b"realtime:room1" + b"cursor" + b'{"x":1}'
    msg = V2.decode_binary(frame)
    assert (msg.join_ref, msg.ref, msg.topic, msg.event) == ("3", "5", "realtime:room1",
                                                             "broadcast")
    assert msg.payload == {"type": "broadcast", "event": "cursor", "payload": {"x": 1}}
    assert msg.user is not None and msg.user.payload == b'{"x":1}' and msg.user.encoding == JSON
    out = V2.encode_user_broadcast(UserBroadcast("realtime:room1", "cursor", b'{"x":1}'))
    assert out == bytes([4, 14, 6, 0, 1]) + b"realtime:room1cursor" + b'{"x":1}'


def test_kind4_with_meta_and_binary_payload() -> None:
    ub = UserBroadcast("realtime:r", "ev", b"\x00\x01", BINARY, {"id": "abc"})
    out = V2.encode_user_broadcast(ub)
    assert isinstance(out, bytes)
    meta = b'{"id":"abc"}'
    assert out == bytes([4, 10, 2, len(meta), 0]) + b"realtime:r" + b"ev" + meta + b"\x00\x01"
    # V1 receivers never get binary payloads, and get JSON ones as a broadcast object.
    assert V1.encode_user_broadcast(ub) is None
    v1 = V1.encode_user_broadcast(UserBroadcast("realtime:r", "ev", b"[1]", JSON, {"id": "x"}))
    assert v1 is not None and json.loads(v1) == {
        "topic": "realtime:r", "event": "broadcast", "ref": None,
        "payload": {"event": "ev", "payload": [1], "type": "broadcast", "meta": {"id": "x"}}}


def test_kind4_falls_back_to_json_when_a_length_does_not_fit() -> None:
    topic = "realtime:" + "x" * 300
    out = V2.encode_user_broadcast(UserBroadcast(topic, "e", b"{}"))
    assert isinstance(out, str)
    assert json.loads(out) == [None, None, topic, "broadcast",
                               {"event": "e", "payload": {}, "type": "broadcast"}]


def test_bad_binary_frames() -> None:
    good = bytes([3, 0, 0, 1, 1, 0, 1]) + b"te" + b"{}"
    assert V2.decode_binary(good).topic == "t"
    for bad in (b"", bytes([4, 0, 0, 0, 0]), bytes([3, 0, 0, 9, 1, 0, 1]) + b"t",
                bytes([3, 0, 0, 1, 1, 0, 7]) + b"te", bytes([3, 0, 0, 1, 1, 0, 1]) + b"te{",
                bytes([3, 0, 0, 1, 1, 2, 1]) + b"te[]{}"):
        with pytest.raises(ProtocolError):
            V2.decode_binary(bad)
    with pytest.raises(ProtocolError):
        V1.decode_binary(good)


@given(st.binary(max_size=64))
def test_binary_decoder_only_raises_protocol_errors(data: bytes) -> None:
    try:
        V2.decode_binary(data)
    except ProtocolError:
        pass


@given(st.text(max_size=64))
def test_text_decoders_only_raise_protocol_errors(text: str) -> None:
    for ser in (V1, V2):
        try:
            ser.decode_text(text)
        except ProtocolError:
            pass
