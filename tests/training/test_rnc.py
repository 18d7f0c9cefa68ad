"""RNC method-1 unpacking (Beneath a Steel Sky's voice lines), against a packer written here from the format."""

from __future__ import annotations

import struct

import pytest

from training.data.rnc import crc16, unpack


class _Packer:
    """Writes what :func:`unpack` reads: bits least significant first into 16-bit little-endian words, a new word
    only when the current one is full, and runs of literal bytes straight into the stream where they fall."""

    def __init__(self) -> None:
        self.out, self.slot, self.used = bytearray(), 0, 16

    def bits(self, value: int, k: int) -> None:
        for i in range(k):
            if self.used == 16:
                self.slot, self.used = len(self.out), 0
                self.out += b"\0\0"
            if value >> i & 1:
                self.out[self.slot + self.used // 8] |= 1 << (self.used % 8)
            self.used += 1

    def table(self) -> None:
        """Every one of 16 symbols with a 4-bit code (canonical: symbol s has code s)."""
        self.bits(16, 5)
        for _ in range(16):
            self.bits(4, 4)

    def value(self, v: int) -> None:
        s = v.bit_length() if v >= 2 else v
        self.bits(int(f"{s:04b}"[::-1], 2), 4)  # codes are read bit-reversed
        if s >= 2:
            self.bits(v - (1 << (s - 1)), s - 1)

    def literals(self, data: bytes) -> None:
        self.value(len(data))
        self.out += data


def pack(chunks: list[list[tuple[bytes, tuple[int, int] | None]]]) -> tuple[bytes, bytes]:
    """(packed block, what it unpacks to) for chunks of steps (literals, (distance, length) or None on the last)."""
    p, expect = _Packer(), bytearray()
    p.bits(0, 2)
    for c, steps in enumerate(chunks):
        for _ in range(3):
            if c == 0:
                p.table()
            else:
                p.bits(0, 5)  # keep the first chunk's tables
        p.bits(len(steps), 16)
        for literals, match in steps:
            p.literals(literals)
            expect += literals
            if match is not None:
                back, n = match
                p.value(back - 1)
                p.value(n - 2)
                for _ in range(n):
                    expect.append(expect[-back])
    return _block(bytes(p.out), bytes(expect), len(chunks)), bytes(expect)


def _block(body: bytes, unpacked: bytes, chunks: int) -> bytes:
    header = b"RNC\x01" + struct.pack(">IIHH", len(unpacked), len(body), crc16(unpacked), crc16(body))
    return header + b"\0" + bytes([chunks]) + body


def test_unpacks_literal_runs_and_matches_across_chunks() -> None:
    block, expect = pack([[(b"abc", (3, 7)), (b"", (1, 5)), (bytes(range(40, 90)), (50, 20)), (b"zz", None)],
                          [(b"Q", (4, 2)), (b"", None)]])
    assert unpack(block) == expect
    assert expect.startswith(b"abcabcabca" + b"aaaaa")  # an overlapping copy repeats what it just wrote


def test_damaged_blocks_are_refused() -> None:
    block, _ = pack([[(b"hello world", None)]])
    assert unpack(block) == b"hello world"
    with pytest.raises(ValueError, match="not an RNC"):
        unpack(b"RNC\x02" + block[4:])
    damaged = bytearray(block)
    damaged[-3] ^= 0xFF  # a literal byte
    with pytest.raises(ValueError, match="CRC"):
        unpack(bytes(damaged))
    with pytest.raises(ValueError, match="ends inside"):
        unpack(block[:-4])
    # a match that reaches back further than anything written
    p = _Packer()
    p.bits(0, 2)
    for _ in range(3):
        p.table()
    p.bits(2, 16)
    p.literals(b"ab")
    p.value(9)  # distance 10
    p.value(0)
    p.literals(b"")
    with pytest.raises(ValueError, match="before the start"):
        unpack(_block(bytes(p.out), b"abab", 1))
