"""ClickHouse's own compressed framing (``compress=1``), which the JDBC driver asks for.

A compressed answer is a run of blocks: a 16-byte checksum, a method byte (0x82:
LZ4), the block's size with its 9-byte header, the uncompressed size (both little
endian uint32), then the LZ4 block. The checksum is CityHash128 as ClickHouse has it
(CityHash 1.0.2, not the later versions), over the header byte on; written here in
Python since no package of ours has that version.
"""

from __future__ import annotations

import struct

import lz4.block

M = (1 << 64) - 1
K0, K1, K2, K3 = 0xC3A5C85C97CB3127, 0xB492B66FBE98F273, 0x9AE16A3B2F90404F, 0xC949D7C7509E6557
LZ4 = 0x82
BLOCK = 1 << 20  # ClickHouse's max_compress_block_size


def frames(data: bytes) -> bytes:
    """``data`` in ClickHouse's compressed blocks."""
    out = bytearray()
    for start in range(0, len(data), BLOCK) if data else [0]:
        raw = data[start:start + BLOCK]
        packed = lz4.block.compress(raw, store_size=False)
        body = struct.pack("<BII", LZ4, len(packed) + 9, len(raw)) + packed
        low, high = city128(body)
        out += struct.pack("<QQ", low, high) + body
    return bytes(out)


def _f64(s: bytes, i: int) -> int:
    return int.from_bytes(s[i:i + 8], "little")


def _f32(s: bytes, i: int) -> int:
    return int.from_bytes(s[i:i + 4], "little")


def _rot(v: int, shift: int) -> int:
    return v if shift == 0 else ((v >> shift) | (v << (64 - shift))) & M


def _mix(v: int) -> int:
    return v ^ (v >> 47)


def _h16(u: int, v: int) -> int:
    mul = 0x9DDFEA08EB382D69
    a = ((u ^ v) * mul) & M
    a ^= a >> 47
    b = ((v ^ a) * mul) & M
    b ^= b >> 47
    return (b * mul) & M


def _len0to16(s: bytes, i: int, n: int) -> int:
    if n > 8:
        a, b = _f64(s, i), _f64(s, i + n - 8)
        return _h16(a, _rot((b + n) & M, n)) ^ b
    if n >= 4:
        a = _f32(s, i)
        return _h16((n + (a << 3)) & M, _f32(s, i + n - 4))
    if n > 0:
        a, b, c = s[i], s[i + (n >> 1)], s[i + n - 1]
        y = (a + (b << 8)) & 0xFFFFFFFF
        z = (n + (c << 2)) & 0xFFFFFFFF
        return (_mix(((y * K2) ^ (z * K3)) & M) * K2) & M
    return K2


def _murmur(s: bytes, i: int, n: int, a: int, b: int) -> tuple[int, int]:
    c = d = 0
    left = n - 16
    if left <= 0:
        a = (_mix((a * K1) & M) * K1) & M
        c = (b * K1 + _len0to16(s, i, n)) & M
        d = _mix((a + (_f64(s, i) if n >= 8 else c)) & M)
    else:
        c = _h16((_f64(s, i + n - 8) + K1) & M, a)
        d = _h16((b + n) & M, (c + _f64(s, i + n - 16)) & M)
        a = (a + d) & M
        while True:
            a ^= (_mix((_f64(s, i) * K1) & M) * K1) & M
            a = (a * K1) & M
            b ^= a
            c ^= (_mix((_f64(s, i + 8) * K1) & M) * K1) & M
            c = (c * K1) & M
            d ^= c
            i += 16
            left -= 16
            if left <= 0:
                break
    a = _h16(a, c)
    b = _h16(d, b)
    return a ^ b, _h16(b, a)


def _weak32(s: bytes, i: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = _f64(s, i), _f64(s, i + 8), _f64(s, i + 16), _f64(s, i + 24)
    a = (a + w) & M
    b = _rot((b + a + z) & M, 21)
    c = a
    a = (a + x + y) & M
    b = (b + _rot(a, 44)) & M
    return (a + z) & M, (b + c) & M


def _city128_seed(s: bytes, i: int, n: int, x: int, y: int) -> tuple[int, int]:
    if n < 128:
        return _murmur(s, i, n, x, y)
    z = (n * K1) & M
    v0 = (_rot(y ^ K1, 49) * K1 + _f64(s, i)) & M
    v1 = (_rot(v0, 42) * K1 + _f64(s, i + 8)) & M
    w0 = (_rot((y + z) & M, 35) * K1 + x) & M
    w1 = (_rot((x + _f64(s, i + 88)) & M, 53) * K1) & M
    while True:
        for _ in range(2):
            x = (_rot((x + y + v0 + _f64(s, i + 16)) & M, 37) * K1) & M
            y = (_rot((y + v1 + _f64(s, i + 48)) & M, 42) * K1) & M
            x ^= w1
            y ^= v0
            z = _rot(z ^ w0, 33)
            v0, v1 = _weak32(s, i, (v1 * K1) & M, (x + w0) & M)
            w0, w1 = _weak32(s, i + 32, (z + w1) & M, y)
            z, x = x, z
            i += 64
        n -= 128
        if n < 128:
            break
    y = (y + _rot(w0, 37) * K0 + z) & M
    x = (x + _rot((v0 + z) & M, 49) * K0) & M
    done = 0
    while done < n:
        done += 32
        y = (_rot((y - x) & M, 42) * K0 + v1) & M
        w0 = (w0 + _f64(s, i + n - done + 16)) & M
        x = (_rot(x, 49) * K0 + w0) & M
        w0 = (w0 + v0) & M
        v0, v1 = _weak32(s, i + n - done, v0, v1)
    x = _h16(x, v0)
    y = _h16(y, w0)
    return (_h16((x + v1) & M, w1) + y) & M, _h16((x + w1) & M, (y + v1) & M)


def city128(s: bytes) -> tuple[int, int]:
    """CityHash128 (1.0.2) of ``s``: (low, high)."""
    n = len(s)
    if n >= 16:
        return _city128_seed(s, 16, n - 16, _f64(s, 0) ^ K3, _f64(s, 8))
    if n >= 8:
        return _city128_seed(b"", 0, 0, _f64(s, 0) ^ ((n * K0) & M), _f64(s, n - 8) ^ K1)
    return _city128_seed(s, 0, n, K0, K1)
