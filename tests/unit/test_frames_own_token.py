"""OwnTokenChannel without a server: its join payload carries its own token, and the client's
set_auth (the socket's token refreshed) leaves it alone while other channels follow."""

from __future__ import annotations

import pytest

from supasync.client.frames import OwnTokenChannel, TappedRealtimeClient


async def test_a_channel_joins_with_its_own_token_and_set_auth_leaves_it_alone() -> None:
    client = TappedRealtimeClient("ws://127.0.0.1:9/realtime/v1", token="anon-key",
                                  auto_reconnect=False)
    await client.set_auth("socket-token")
    own = client.channel_with_token("alice~1", "alice-token")
    plain = client.channel("plain~2")
    assert isinstance(own, OwnTokenChannel) and own.topic == "realtime:alice~1"
    assert client.channels["realtime:alice~1"] is own
    own._prepare_join(None)
    plain._prepare_join(None)
    assert own.join_push.payload["access_token"] == "alice-token"
    assert plain.join_push.payload["access_token"] == "socket-token"

    await client.set_auth("socket-token-2")  # not joined: only the stored payloads change
    assert own.join_push.payload["access_token"] == "alice-token"
    assert plain.join_push.payload["access_token"] == "socket-token-2"

    await client.set_channel_token(own, "alice-token-2")  # a rejoin would use the new one
    assert own.own_token == "alice-token-2"
    assert own.join_push.payload["access_token"] == "alice-token-2"
    assert plain.join_push.payload["access_token"] == "socket-token-2"

    with pytest.raises(ValueError, match="already exists"):
        client.channel_with_token("alice~1", "x")
