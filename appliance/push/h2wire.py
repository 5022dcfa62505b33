"""h2, tuned for a client that only ever sends APNs pushes: our HPACK encoder, no stream scans, GOAWAY drain."""

from __future__ import annotations

import h2.config
from h2.connection import ConnectionState, H2Connection
from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman

CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    # our headers are fixed and known-good; h2's per-header checks cost ~15 % of a push
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)


class APNsH2Connection(H2Connection):
    """h2's connection adjusted for a client that only ever sends pushes (see each part)."""

    def __init__(self, streams: dict, **kwargs):
        super().__init__(**kwargs)
        self.encoder = RequestEncoder()
        self.decoder = ResponseDecoder()
        self._apns_streams = streams
        self._ended = 0

    @property
    def open_outbound_streams(self) -> int:
        # h2 counts open streams by scanning all of them on every send_headers (cost grows with
        # concurrency); our own table of in-flight pushes holds the same number.
        return len(self._apns_streams)

    def purge_closed_streams(self) -> None:
        """h2 forgets closed streams only while counting them: let it, now and then."""
        self._ended += 1
        if self._ended % 256 == 0:
            H2Connection.open_outbound_streams.fget(self)

    def _receive_goaway_frame(self, frame):
        frames, events = super()._receive_goaway_frame(frame)
        # h2 treats a received GOAWAY as the end of everything, but RFC 9113 §6.8 lets the server
        # still finish the streams up to last_stream_id. Keep the connection readable so their
        # answers are not lost; we never open new streams on a draining connection.
        if self.state_machine.state is ConnectionState.CLOSED:
            self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_HPACK_STATIC = {(b":method", b"POST"): b"\x83", (b":scheme", b"https"): b"\x87"}  # RFC 7541 App. A
_HPACK_NAMES = {b":authority": 1, b":path": 4}


class RequestEncoder:
    """HPACK for our requests: static-table entries and literals without indexing, no Huffman.

    Never touching the dynamic table keeps the server's decoder state trivially in step, and the
    encoded form of every repeated header is cached: hpack's general encoder (table search and
    Huffman coding per header) was the largest single cost of a push.
    """

    header_table_size = 4096  # h2 sets it on SETTINGS_HEADER_TABLE_SIZE; we never use the table

    def __init__(self):
        self._cache: dict[tuple, bytes] = {}

    def encode(self, headers, huffman: bool = True) -> bytes:
        cache = self._cache
        parts = []
        for header in headers:
            block = cache.get(header)
            if block is None:
                name, value = header
                block = _HPACK_STATIC.get((name, value))
                if block is None:
                    index = _HPACK_NAMES.get(name)
                    head = _hpack_int(index, 4) if index else b"\x00" + _hpack_int(len(name), 7) + name
                    block = head + _hpack_int(len(value), 7) + value
                if name != b":path":  # one per device token: not worth keeping
                    if len(cache) > 64:
                        cache.clear()
                    cache[header] = block
            parts.append(block)
        return b"".join(parts)


class ResponseDecoder(Decoder):
    """hpack's decoder, remembering what Huffman-coded strings decode to.

    Servers repeat most response header values (date, server, content-type) and hpack decodes
    Huffman one nibble at a time in Python: a quarter of a push's CPU went there. Everything else
    (the dynamic table, limits) is hpack's own; tests/test_h2wire.py compares both decoders.
    """

    def __init__(self) -> None:
        super().__init__()
        self._huffman: dict[bytes, bytes] = {}

    def _text(self, raw: bytes, huffman: bool) -> bytes:
        if not huffman:
            return raw
        text = self._huffman.get(raw)
        if text is None:
            text = decode_huffman(raw)
            if len(self._huffman) >= 512:  # apns-id values never repeat: keep the memory bounded
                self._huffman.clear()
            self._huffman[raw] = text
        return text

    def _decode_literal(self, data, should_index: bool):
        """A literal header field (RFC 7541 §6.2): name by index or literal, then a literal value."""
        data = bytes(data)
        prefix_bits = 6 if should_index else 4
        if data[0] & ((1 << prefix_bits) - 1):
            index, pos = decode_integer(data, prefix_bits)
            name = self.header_table.get_by_index(index)[0]
        else:
            length, used = decode_integer(data[1:], 7)
            start = 1 + used
            name = data[start:start + length]
            if len(name) != length:
                raise HPACKDecodingError("Truncated header block")
            name = self._text(name, bool(data[1] & 0x80))
            pos = start + length
        length, used = decode_integer(data[pos:], 7)
        start = pos + used
        value = data[start:start + length]
        if len(value) != length:
            raise HPACKDecodingError("Truncated header block")
        value = self._text(value, bool(data[pos] & 0x80))
        if should_index:
            self.header_table.add(name, value)
        never_indexed = not should_index and bool(data[0] & 0x10)
        header = (NeverIndexedHeaderTuple if never_indexed else HeaderTuple)(name, value)
        return header, start + length
