"""CRC-64 of OpenIGTLink bodies (ECMA-182 polynomial 0x42F0E1EBA9EA3693, MSB first, initial value
and final XOR 0 -- the parameters pyigtl's ``CRC64`` uses), computed eight bytes at a time (slice-by-8).

pyigtl's ``crcmod`` function handles one byte per table step; this slice-by-8 kernel gives the same
value (tests compare them on random and real messages) several times faster, so checking every
message costs little beside receiving it (``tools/bench_sources.py``).
"""

import numpy as np

from mmstream.kernels._jit import kernel

_POLY = np.uint64(0x42F0E1EBA9EA3693)


def _tables() -> np.ndarray:
    """(8, 256) uint64: row 0 is the byte table, row k one byte followed by k zero bytes."""
    t = np.zeros((8, 256), np.uint64)
    top = 1 << 63
    for i in range(256):
        c = i << 56
        for _ in range(8):
            c = ((c << 1) ^ int(_POLY)) & 0xFFFFFFFFFFFFFFFF if c & top else (c << 1) & 0xFFFFFFFFFFFFFFFF
        t[0, i] = c
    for k in range(1, 8):
        for i in range(256):
            prev = int(t[k - 1, i])
            t[k, i] = ((prev << 8) & 0xFFFFFFFFFFFFFFFF) ^ int(t[0, prev >> 56])
    return t


_T = _tables()
_T_SWAPPED = _T.byteswap()  # the tables as little-endian loads see them


@kernel("uint64(uint64[::1], uint64[:, ::1])")
def _crc64_words(words, t):  # pragma: no cover - compiled
    # The CRC is kept byte-swapped (r = bswap(crc)) so that each 8-byte word is used as the CPU loads
    # it (little-endian): byte k of ``r ^ word`` is byte k of the message XOR the CRC's byte 7 - k.
    r = np.uint64(0)
    ff = np.uint64(0xFF)
    for i in range(words.shape[0]):
        x = r ^ words[i]
        r = (t[7, x & ff] ^ t[6, (x >> np.uint64(8)) & ff] ^ t[5, (x >> np.uint64(16)) & ff]
             ^ t[4, (x >> np.uint64(24)) & ff] ^ t[3, (x >> np.uint64(32)) & ff] ^ t[2, (x >> np.uint64(40)) & ff]
             ^ t[1, (x >> np.uint64(48)) & ff] ^ t[0, x >> np.uint64(56)])  # fmt: skip
    return r


def crc64(body) -> int:
    """CRC-64 of a bytes-like ``body`` (bytes, bytearray, memoryview)."""
    data = np.frombuffer(body, np.uint8)
    n8 = data.size - data.size % 8
    words = data[:n8].view("<u8")
    if not words.flags.aligned:
        words = words.copy()
    r = int(_crc64_words(words, _T_SWAPPED)) if n8 else 0
    crc = int.from_bytes(r.to_bytes(8, "little"), "big")
    for b in data[n8:].tolist():
        crc = int(_T[0, ((crc >> 56) ^ b) & 0xFF]) ^ ((crc << 8) & 0xFFFFFFFFFFFFFFFF)
    return crc
