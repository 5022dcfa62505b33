"""h2, tuned for a client that only ever sends APNs pushes: our HPACK encoder, no stream scans, GOAWAY drain.

Why a request encoder of our own (measured, docs/PERFORMANCE.md "APNs pushes"): hpack's general
encoder (dynamic-table search and Huffman coding of every header, ~40-55 µs a push here) against
ours (~3 µs: only `:path` changes between pushes, the rest is cached bytes) is about a fifth of the
client's whole CPU per push. Responses are decoded by hpack's own decoder: a cache of decoded
strings measured no difference (APNs answers carry a unique apns-id and little else).
These parts lean on h2 internals: h2 is pinned to its minor version in pyproject.toml, and
tests/unit/test_h2wire.py runs our connection against h2's server side (hpack's decoder) to catch a change.
"""

from __future__ import annotations

import h2.config
from h2.connection import ConnectionState, H2Connection

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

    def __init__(self):
        self._cache: dict[tuple, bytes] = {}
        self._table_size = 4096  # RFC 7541's initial maximum
        self._size_update = b""

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # h2 sets this when the server's SETTINGS_HEADER_TABLE_SIZE arrives. RFC 7541 §4.2: a changed
        # maximum must be acknowledged by a dynamic table size update at the start of the next
        # block (hpack's decoder refuses the block otherwise). We never use the table, so 0 is the
        # size we announce, whatever the server allows.
        if value != self._table_size:
            self._table_size = value
            self._size_update = b"\x20"  # size update to 0 (RFC 7541 §6.3)

    def encode(self, headers, huffman: bool = True) -> bytes:
        cache = self._cache
        parts = []
        if self._size_update:
            parts.append(self._size_update)
            self._size_update = b""
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
