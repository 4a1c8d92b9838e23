"""Test helper: rewrite the end-of-allocation address an HDF5 file's superblock (version 2 or 3)
stores, with its checksum, to make the state a killed SWMR writer can leave behind."""


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


_M = 0xFFFFFFFF


def _rounds(a: int, b: int, c: int, steps) -> tuple[int, int, int]:
    """lookup3's mix/final: each step ``(x, y, z, k)`` does ``x -= z; x ^= rot(z, k); z += y``
    (mix, when y is given) or ``x ^= z; x -= rot(z, k)`` (final, y None) on the named registers."""
    r = {"a": a, "b": b, "c": c}
    for x, y, z, k in steps:
        if y is None:
            r[x] = (r[x] ^ r[z]) - _rot(r[z], k) & _M
        else:
            r[x] = ((r[x] - r[z]) & _M) ^ _rot(r[z], k)
            r[z] = (r[z] + r[y]) & _M
    return r["a"], r["b"], r["c"]


_MIX = (("a", "b", "c", 4), ("b", "c", "a", 6), ("c", "a", "b", 8), ("a", "b", "c", 16), ("b", "c", "a", 19),
        ("c", "a", "b", 4))  # fmt: skip
_FINAL = (("c", None, "b", 14), ("a", None, "c", 11), ("b", None, "a", 25), ("c", None, "b", 16),
          ("a", None, "c", 4), ("b", None, "a", 14), ("c", None, "b", 24))  # fmt: skip


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' hashlittle (lookup3): the checksum of HDF5 superblocks (H5_checksum_lookup3)."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n - i > 12:
        a, b, c = ((v + int.from_bytes(data[i + 4 * q : i + 4 * q + 4], "little")) & _M for q, v in enumerate((a, b, c)))
        a, b, c = _rounds(a, b, c, _MIX)
        i += 12
    if n == i:
        return c
    tail = data[i:] + bytes(12 - (n - i))
    a, b, c = ((v + int.from_bytes(tail[4 * q : 4 * q + 4], "little")) & _M for q, v in enumerate((a, b, c)))
    return _rounds(a, b, c, _FINAL)[2]


def set_stored_eoa(path, eoa: int) -> None:
    """Write ``eoa`` as the superblock's end-of-file address and update the superblock checksum."""
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(48))
        if head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
            raise ValueError(f"{path}: not an HDF5 file with a version 2/3 superblock")
        n = head[9]  # size of offsets; the fields: base, extension, end of file, root object header
        at, end = 12 + 2 * n, 12 + 4 * n
        head[at : at + n] = eoa.to_bytes(n, "little")
        head[end : end + 4] = lookup3(bytes(head[:end])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(head[: end + 4])
