"""Our HPACK pieces against hpack's own: the request encoder decodes with hpack's decoder, and our
response decoder gives exactly what hpack's decoder gives for whatever hpack's encoder produces."""

from __future__ import annotations

import random

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from appliance.push.h2wire import RequestEncoder, ResponseDecoder

VALUES = [b"200", b"410", b"nginx", b"Sat, 21 Nov 2026 21:00:00 GMT", b"application/json", b"0",
          b"x" * 130, b"\xff\x00binary", b"", b"E3872FE5-107C-4E95-A27A-20520295C719"]
NAMES = [b":status", b"apns-id", b"server", b"date", b"content-type", b"content-length",
         b"apns-unique-id", b"x-" + b"n" * 140, b"retry-after"]


def test_response_decoder_matches_hpack_across_a_stateful_stream():
    rng = random.Random(20261121)
    encoder, theirs, ours = Encoder(), Decoder(), ResponseDecoder()
    for block_number in range(600):
        headers = []
        for _ in range(rng.randint(1, 8)):
            name, value = rng.choice(NAMES), rng.choice(VALUES)
            if value == VALUES[-1]:
                value = f"{rng.getrandbits(128):032X}".encode()  # unique like apns-id
            headers.append(NeverIndexedHeaderTuple(name, value) if rng.random() < 0.1 else (name, value))
        if block_number == 300:
            encoder.header_table_size = 256  # a table-size update mid-stream, with evictions after
        block = encoder.encode(headers, huffman=rng.random() < 0.8)
        expected = theirs.decode(block, raw=True)
        got = ours.decode(block, raw=True)
        assert got == expected
        assert [type(h) for h in got] == [type(h) for h in expected]


def test_request_encoder_output_decodes_with_hpack():
    headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.push.apple.com"),
               (b":path", b"/3/device/" + b"ab" * 100), (b"apns-topic", b"com.apple.mgmt.External.x"),
               (b"apns-push-type", b"mdm"), (b"apns-priority", b"10"), (b"apns-expiration", b"1790000000")]
    encoder, decoder = RequestEncoder(), Decoder()
    for _ in range(3):  # cached blocks on repeat
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0  # never touches the server's table
