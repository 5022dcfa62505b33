"""Our h2 adjustments against h2/hpack's own other side (sans-I/O, both ends in memory): what our
request encoder writes is decoded by h2's server (hpack's decoder, which checks table-size rules),
and after a GOAWAY the streams at or below its last-stream-id still get their answers."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.settings import SettingCodes
from hpack import Decoder

from appliance.push.h2wire import CONFIG, APNsH2Connection, RequestEncoder


def request(token: str, expiration: bytes = b"1790000000") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.push.apple.com"),
            (b":path", b"/3/device/" + token.encode()),
            (b"apns-topic", b"com.apple.mgmt.External.0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
            (b"apns-push-type", b"mdm"), (b"apns-priority", b"10"), (b"apns-expiration", expiration)]


class Pair:
    """Our client connection wired to a plain h2 server connection."""

    def __init__(self, server_settings: dict | None = None):
        self.streams: dict[int, object] = {}
        self.client = APNsH2Connection(self.streams, config=CONFIG)
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.client.initiate_connection()
        self.server.initiate_connection()
        if server_settings:
            self.server.update_settings(server_settings)
        self.server_events: list = []
        self.client_events: list = []
        self.pump()

    def pump(self) -> None:
        while True:
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            if to_client:
                self.client_events += self.client.receive_data(to_client)

    def send(self, headers) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers)
        self.client.send_data(stream_id, b'{"mdm":"x"}', end_stream=True)
        self.streams[stream_id] = object()
        self.pump()
        return stream_id

    def received(self) -> list[list[tuple[bytes, bytes]]]:
        return [list(e.headers) for e in self.server_events if isinstance(e, h2.events.RequestReceived)]


@pytest.mark.parametrize("table_size", [0, 256, 4096, 65536])
def test_h2_server_decodes_our_requests_whatever_its_header_table_size(table_size):
    pair = Pair({SettingCodes.HEADER_TABLE_SIZE: table_size})
    sent = [request(f"{n:064x}", str(1790000000 + n).encode()) for n in range(5)]
    for headers in sent:
        pair.send(headers)
    assert pair.received() == sent
    # and a change of the setting mid-connection (RFC 7541 §4.2: acknowledged in the next block)
    pair.server.update_settings({SettingCodes.HEADER_TABLE_SIZE: 128})
    pair.pump()
    pair.send(request("ee" * 32))
    assert pair.received()[-1] == request("ee" * 32)
    assert not [e for e in pair.client_events if isinstance(e, h2.events.ConnectionTerminated)]


def test_request_encoder_output_decodes_with_hpack_and_leaves_its_table_empty():
    encoder, decoder = RequestEncoder(), Decoder()
    for n in range(3):  # cached blocks on repeat, a new :path each time
        headers = request(f"{n:0200x}")
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0  # never touches the server's table
    long_value = [(b"x-" + b"n" * 140, b"v" * 300)]  # multi-byte HPACK integers for both lengths
    assert decoder.decode(encoder.encode(long_value), raw=True) == long_value


def test_streams_up_to_goaways_last_stream_id_are_still_answered():
    pair = Pair()
    ids = [pair.send(request(f"{n:064x}")) for n in range(4)]
    # h2's server side cannot send after its own GOAWAY: build the answers first, deliver them after it
    for stream_id in ids[:2]:
        pair.server.send_headers(stream_id, [(b":status", b"200"), (b"apns-id", b"A")], end_stream=True)
    answers = pair.server.data_to_send()
    pair.server.close_connection(last_stream_id=ids[1])
    events = pair.client.receive_data(pair.server.data_to_send())
    [goaway] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.last_stream_id == ids[1]
    events = pair.client.receive_data(answers)  # plain h2 would raise: it closes on any GOAWAY
    answered = [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)]
    assert answered == ids[:2]  # the server may still finish what it took (RFC 9113 §6.8)
