"""Rob Northen's "RNC" method-1 compression, decompression only: how *Beneath a Steel Sky* stores its voice lines.

A packed block is an 18-byte header (``RNC\\x01``, the unpacked and packed sizes as big-endian 32-bit numbers, a
CRC-16 of each, a byte we do not need and the number of chunks) and a stream in which bits and whole bytes
interleave. Bits are taken least significant first from little-endian 16-bit words, a word only when the bits
left are too few (so whole bytes, a run of literals, sit right after the last word taken). After two flag bits,
each chunk holds three Huffman tables (literal-run lengths, match distances, match lengths: a 5-bit count, then
a 4-bit code length per symbol; canonical codes, shorter first, read bit-reversed), a 16-bit count of steps, and
that many steps: a run of literal bytes (its length may be 0), then, except after the last step, a match (distance
from 1, length from 2) copied from the output. A symbol ``s`` >= 2 stands for ``2**(s-1)`` plus ``s-1`` more bits.
The CRC-16 (polynomial 0xA001, reflected) of the output is checked.
"""

from __future__ import annotations

import struct

MAGIC = b"RNC\x01"
HEADER = 18


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = (crc >> 8) ^ _CRC[(crc ^ b) & 0xFF]
    return crc


class _Stream:
    """Bits (least significant first, from 16-bit little-endian words, taken when needed) and bytes, interleaved."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.bits, self.n = data, 0, 0, 0

    def _word(self, at: int) -> int:
        return int.from_bytes(self.data[at : at + 2].ljust(2, b"\0"), "little")

    def read(self, k: int) -> int:
        if self.n < k:
            self.bits |= self._word(self.pos) << self.n
            self.pos += 2
            self.n += 16
        value = self.bits & ((1 << k) - 1)
        self.bits >>= k
        self.n -= k
        return value

    def peek16(self) -> int:
        """The next 16 bits, taking nothing (the word after those taken may yet turn out to be literal bytes)."""
        return (self.bits | self._word(self.pos) << self.n) & 0xFFFF

    def take_bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("the packed data ends inside a run of literals")
        self.pos += n
        return out


Table = list[tuple[int, int, int, int]]  # (mask, bit-reversed code, code length, symbol)


def _table(s: _Stream) -> Table | None:
    count = s.read(5)
    if not count:
        return None  # the chunk keeps the previous chunk's table
    lengths = [s.read(4) for _ in range(count)]
    table, code = [], 0
    for length in range(1, 17):
        for symbol, n in enumerate(lengths):
            if n == length:
                top = code >> (16 - length)
                table.append(((1 << length) - 1, int(f"{top:0{length}b}"[::-1], 2), length, symbol))
                code += 1 << (16 - length)
    return table


def _value(s: _Stream, table: Table | None) -> int:
    if table is None:
        raise ValueError("a chunk uses a Huffman table it never defined")
    look = s.peek16()
    for mask, code, length, symbol in table:
        if look & mask == code:
            s.read(length)
            return (1 << (symbol - 1)) | s.read(symbol - 1) if symbol >= 2 else symbol
    raise ValueError("no Huffman code matches the packed data")


def unpack(data: bytes) -> bytes:
    """The unpacked bytes of an RNC method-1 block; ValueError if it is not one, or is damaged."""
    if len(data) < HEADER or data[:4] != MAGIC:
        raise ValueError("not an RNC method-1 block")
    size, packed, crc_unpacked, _ = struct.unpack(">IIHH", data[4:16])
    chunks = data[17]
    s = _Stream(data[HEADER : HEADER + packed])
    s.read(2)  # lock and key flags
    out = bytearray()
    raw = dist = length = None
    for _ in range(chunks):
        raw, dist, length = _table(s) or raw, _table(s) or dist, _table(s) or length
        steps = s.read(16)
        for step in range(steps):
            if n := _value(s, raw):
                out += s.take_bytes(n)
            if step < steps - 1:
                back = _value(s, dist) + 1
                n = _value(s, length) + 2
                start = len(out) - back
                if start < 0:
                    raise ValueError("a match reaches before the start of the output")
                if back >= n:
                    out += out[start : start + n]
                else:  # overlapping: the copy repeats what it has just written
                    for i in range(n):
                        out.append(out[start + i])
            if len(out) > size:
                raise ValueError(f"the packed data unpacks past its stated {size} bytes")
    if len(out) != size or crc16(out) != crc_unpacked:
        raise ValueError("the unpacked data fails its size or CRC check")
    return bytes(out)
