"""Volumes in a session file (``/volumes``, layout 5): written by :class:`VolumeLog` (inside the
writer's flush), read by :func:`read_voxels`.

A volume's voxel bytes go to ``/volumes/voxels`` from a chunk boundary (``VOXEL_CHUNK_BYTES``), its
row (id, version, modality, dtype, shape, spacing, origin, offset, length, SHA-256) to
``/volumes/table`` and its header JSON to ``/volumes/json``. SWMR forbids creating datasets once
writing has started, so volumes share one byte dataset instead of one dataset each.
"""

import hashlib
import time

import h5py
import numpy as np

from mmstream.errors import ReadError
from mmstream.messages import Volume
from mmstream.recording import layout as L


class VolumeLog:
    """``/volumes``: the table, its JSON heap and the voxel bytes (each volume from a chunk boundary,
    so a committed volume's chunks are never written again). A volume whose id, header and voxels
    equal one already in this part (committed or pending) is not written again."""

    def __init__(self, table, voxels: h5py.Dataset):
        """``table``: the writer's pending-rows table over ``/volumes/table`` and its JSON heap."""
        self.table = table
        self.voxels = voxels
        self.n_bytes = 0  # end of the last volume's bytes (pending included)
        self.pending: list[tuple[int, np.ndarray]] = []  # (offset, voxels)
        self._seen: dict[str, list[str]] = {}  # volume_id -> keys of its versions, committed or pending
        self._pending_keys: list[tuple[str, str]] = []

    def add(self, header: Volume, voxels: np.ndarray) -> bool:
        """Queue ``voxels`` (K, J, I) under ``header``; False (nothing queued) for a duplicate."""
        voxels = np.ascontiguousarray(voxels)
        digest = hashlib.sha256(voxels.data).hexdigest()
        text = header.model_dump_json().encode()
        key = hashlib.sha256(text).hexdigest() + digest
        versions = self._seen.setdefault(header.volume_id, [])
        if key in versions:
            return False
        versions.append(key)
        self._pending_keys.append((header.volume_id, key))
        chunk = L.VOXEL_CHUNK_BYTES
        off = -(-self.n_bytes // chunk) * chunk
        self.pending.append((off, voxels))
        self.n_bytes = off + voxels.nbytes
        self.table.add(text, t_recorded_s=time.monotonic(), version=len(versions), voxels_offset=off,
                       voxels_n_bytes=voxels.nbytes, voxels_sha256=digest, **_volume_columns(header))  # fmt: skip
        return True

    def write_voxels(self) -> None:
        """Append the pending voxels: one resize, then whole chunks straight to the file
        (uncompressed, the last chunk of a volume padded with zeros)."""
        if not self.pending:
            return
        chunk = L.VOXEL_CHUNK_BYTES
        self.voxels.resize((self.n_bytes,))
        for off, voxels in self.pending:
            data = voxels.reshape(-1).view(np.uint8)
            for start in range(0, len(data), chunk):
                block = data[start : start + chunk]
                if len(block) < chunk:
                    block = np.concatenate([block, np.zeros(chunk - len(block), np.uint8)])
                self.voxels.id.write_direct_chunk((off + start,), block)
        self.pending.clear()
        self._pending_keys.clear()

    def discard(self) -> None:
        self.table.discard()
        for vid, key in self._pending_keys:
            self._seen[vid].remove(key)
        self._pending_keys.clear()
        self.pending.clear()
        self.n_bytes = int(self.voxels.shape[0])


def _volume_columns(header: Volume) -> dict:
    """The volume row's columns taken from the header (``row_of`` needs a model for the others,
    and the row's JSON is the header's text)."""
    return {c.name: c.get(header) for c in L.VOLUME_COLUMNS if c.get is not None}


def read_voxels(voxels: h5py.Dataset, row) -> np.ndarray:
    """The (K, J, I) voxels of one ``/volumes/table`` row (its shape, dtype and length checked by the
    reader), checked against its SHA-256 (ReadError ``damaged`` on a mismatch or bytes past the end
    of the dataset)."""
    off, n = int(row["voxels_offset"]), int(row["voxels_n_bytes"])
    if off + n > voxels.shape[0]:
        raise ReadError(f"volume {row['volume_id'].decode()!r}: voxels end at byte {off + n}, the dataset holds "
                        f"{voxels.shape[0]}", reason="damaged")  # fmt: skip
    data = voxels[off : off + n]
    if hashlib.sha256(data).hexdigest() != row["voxels_sha256"].decode():
        raise ReadError(f"volume {row['volume_id'].decode()!r}: voxel bytes differ from their recorded SHA-256",
                        reason="damaged")  # fmt: skip
    shape = (int(row["shape_k"]), int(row["shape_j"]), int(row["shape_i"]))
    return data.view(np.dtype(row["dtype"].decode())).reshape(shape)
