"""The NIfTI-1 header as mmstream reads it itself, beside ITK: checks made before ITK reads a file,
the geometry of the transform NIfTI-1 says to use, and the raw values ITK's scaling hides.

ITK's NIfTI reader does not follow NIfTI-1 on three points, so mmstream does not take its geometry
or its scaling as they come:

* **sform first.** NIfTI-1 (nifti1.h, "method 3") and nibabel use the sform whenever
  ``sform_code`` > 0, else the qform. ITK 5.4 sometimes reads the qform instead (e.g. qform_code 1
  with sform_code 2, 3 or 4; or a sheared sform). mmstream takes the sform's geometry from the
  header: ``origin`` = its last column, ``spacing`` = its column lengths, ``direction`` = its
  columns divided by their lengths (x and y negated: RAS -> LPS). Where the qform disagrees it is
  said in ``conversion``; it is never mixed in.
* **sform scales.** ITK takes the spacing from ``pixdim[1..3]`` even when the sform's column lengths
  differ (direction and origin from the sform): the spacing is the sform's, as it says.
* **scl_slope 0.** nifti1.h: "If the scl_slope field is nonzero, then each voxel value ... should be
  scaled"; ITK adds ``scl_inter`` anyway. The raw values are given back (``rescaled`` False).
* **NaN and inf.** ITK's reader (nifti1_io) writes 0 for every non-finite float voxel, so that a
  failed fit of a T2 map would count as 0 ms. They are put back as the file holds them
  (:func:`restore_non_finite`), as ITK reads them from NRRD and MetaImage.

A sform whose axes are not orthogonal (sheared: cosine of an angle between two axes over
:data:`MAX_AXIS_COSINE`) or whose columns are zero cannot be a volume in LPS without resampling:
ReadError ``invalid_geometry``. The spatial unit (``xyzt_units``: m, mm, um; unknown taken as mm, as
ITK does) scales the sform to millimetres.
"""

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmstream.errors import ReadError

MAX_AXIS_COSINE = 1e-3  # |cos| between two sform axes (0.06 deg off a right angle); LoadedVolume's tolerance
DISAGREE_MM = 0.01  # qform and sform further apart than this (at a corner of the volume) are reported
_UNIT_MM = {1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7: metre, mm, micron; 0 (unknown) taken as mm
_RAW_DTYPES = {2: "uint8", 4: "int16", 8: "int32", 256: "int8", 512: "uint16", 768: "uint32"}  # integer datatypes
_FLOAT_DTYPES = {16: "f4", 64: "f8"}  # FLOAT32, FLOAT64: nifti1_io writes 0 for their NaN and inf
_CHUNK_BYTES = 1 << 20  # voxel bytes checked at a time
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Nifti1Header:
    """The NIfTI-1 fields mmstream reads itself (``pixdim[0]`` is qfac; ``quatern``: b, c, d and
    qoffset x, y, z; ``srow``: (3, 4) RAS+ in the file's unit)."""

    dim: tuple[int, ...]
    datatype: int
    pixdim: tuple[float, ...]
    scl_slope: float
    scl_inter: float
    xyzt_units: int
    qform_code: int
    sform_code: int
    quatern: tuple[float, ...]
    srow: np.ndarray
    vox_offset: float
    byte_order: str  # "<" or ">"
    single_file: bool  # "n+1": the voxels follow the header in the same file
    non_finite: bool | None  # float voxels holding NaN or inf (None: not looked at yet)

    @property
    def unit_mm(self) -> float:
        return _UNIT_MM.get(self.xyzt_units & 7, 1.0)

    @property
    def spacing_given(self) -> bool:
        """Whether the header gives the voxel spacing (ITK's spacing is |pixdim|, 0 read as 1 mm)."""
        return self.sform_code > 0 or all(abs(v) > 0 for v in self.pixdim[1:4])

    def qform(self) -> np.ndarray:
        """The qform as a 4x4 RAS+ affine in the file's unit (nifti1_io's ``nifti_quatern_to_mat44``)."""
        b, c, d, qx, qy, qz = self.quatern
        a2 = 1.0 - (b * b + c * c + d * d)
        if a2 < 1e-7:  # a 180 degree rotation: (b, c, d) normalised
            n = math.sqrt(b * b + c * c + d * d)
            a, b, c, d = 0.0, b / n, c / n, d / n
        else:
            a = math.sqrt(a2)
        rot = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])  # fmt: skip
        scale = [v if v > 0 else 1.0 for v in self.pixdim[1:4]]
        scale[2] *= -1.0 if self.pixdim[0] < 0 else 1.0
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = rot * scale, (qx, qy, qz)
        return out

    def sform(self) -> np.ndarray:
        out = np.eye(4)
        out[:3] = self.srow
        return out

    def sform_geometry(self, name: str) -> tuple[tuple, tuple, np.ndarray, str]:
        """``(spacing (s_k, s_j, s_i) mm, origin LPS mm, direction LPS, note)`` of the sform
        (``sform_code`` > 0); ``note`` says where pixdim or the qform disagree (empty when not)."""
        m = _RAS_TO_LPS @ self.srow[:, :3] * self.unit_mm
        lengths = np.linalg.norm(m, axis=0)
        if not np.all(lengths > 0):
            raise ReadError(f"{name}: the sform (sform_code {self.sform_code}) has a zero column: no volume",
                            reason="invalid_geometry")  # fmt: skip
        unit = m / lengths
        cosines = np.abs(unit.T @ unit - np.eye(3))
        if cosines.max() > MAX_AXIS_COSINE:
            angle = math.degrees(math.acos(min(1.0, float(cosines.max()))))
            raise ReadError(f"{name}: the sform (sform_code {self.sform_code}) is sheared (two axes {angle:.2f} deg apart); "
                            "a volume needs orthogonal axes: resample the file. The qform is not used in its place "
                            "(NIfTI-1: the sform comes first)", reason="invalid_geometry")  # fmt: skip
        u, _, vt = np.linalg.svd(unit)
        notes = []
        pixdim = np.abs(np.asarray(self.pixdim[1:4])) * self.unit_mm
        if not np.allclose(pixdim, lengths, rtol=1e-4):
            notes.append(f"pixdim {_mm(pixdim)} differs from the sform's spacing {_mm(lengths)}: the sform's used")
        if self.qform_code > 0:
            corners = np.array([[i, j, k, 1.0] for i in (0, self.dim[1] - 1) for j in (0, self.dim[2] - 1)
                                for k in (0, self.dim[3] - 1)]).T  # fmt: skip
            apart = float(np.linalg.norm((self.sform() - self.qform())[:3] @ corners, axis=0).max()) * self.unit_mm
            if apart > DISAGREE_MM:
                notes.append(f"the qform (qform_code {self.qform_code}) disagrees by up to {apart:.3g} mm at a corner: "
                             "not used")  # fmt: skip
        origin = _RAS_TO_LPS @ self.srow[:, 3] * self.unit_mm
        spacing = tuple(float(v) for v in lengths[::-1])
        return spacing, tuple(float(v) for v in origin), u @ vt, "; ".join(notes)


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ") mm"


def read_nifti1(path: Path) -> Nifti1Header | None:
    """The header of a NIfTI-1 file after the checks ITK skips (None when it is not NIfTI-1: left to
    ITK, which reads no NIfTI-2 here). ReadError ``invalid_geometry``: ``pixdim[1..3]``, the qform
    (``pixdim[0]``, quaternion, ``qoffset``; when ``qform_code`` > 0) or the sform (``srow_x/y/z``; when
    ``sform_code`` > 0) not finite (ITK makes them 1 mm or 0). ReadError ``truncated``: a single
    file (``.nii``, ``.nii.gz``) shorter than ``vox_offset`` plus its voxels (ITK fills in zeros)."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            head = f.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    order = next((o for o in "<>" if len(head) == 348 and struct.unpack_from(o + "i", head)[0] == 348), None)
    if order is None:
        return None
    pixdim = struct.unpack_from(order + "8f", head, 76)
    q_code, s_code = struct.unpack_from(order + "hh", head, 252)
    quatern = struct.unpack_from(order + "6f", head, 256)
    srow = struct.unpack_from(order + "12f", head, 280)
    checks = {"pixdim[1..3]": pixdim[1:4]}
    if q_code > 0:
        checks["qform (pixdim[0], quatern_b/c/d, qoffset_x/y/z)"] = (pixdim[0], *quatern)
    if s_code > 0:
        checks["sform (srow_x/y/z)"] = srow
    for what, vals in checks.items():
        if not all(map(math.isfinite, vals)):
            raise ReadError(f"{path.name}: NIfTI {what} = {' '.join(f'{v:g}' for v in vals)[:120]!r}: origin, spacing "
                            "and direction must be finite numbers (spacing > 0)", reason="invalid_geometry")  # fmt: skip
    single = head[344:348] == b"n+1\x00"
    datatype = struct.unpack_from(order + "h", head, 70)[0]
    non_finite = None
    if single:  # one file: its voxels follow the header (ITK fills a short file with zeros)
        non_finite = _check_nifti1_size(path, order, head, _FLOAT_DTYPES.get(datatype))
    return Nifti1Header(
        dim=struct.unpack_from(order + "8h", head, 40), datatype=datatype,
        pixdim=pixdim, scl_slope=struct.unpack_from(order + "f", head, 112)[0],
        scl_inter=struct.unpack_from(order + "f", head, 116)[0], xyzt_units=head[123], qform_code=q_code,
        sform_code=s_code, quatern=quatern, srow=np.asarray(srow, dtype=np.float64).reshape(3, 4),
        vox_offset=struct.unpack_from(order + "f", head, 108)[0], byte_order=order, single_file=single,
        non_finite=non_finite if datatype in _FLOAT_DTYPES else False,
    )  # fmt: skip


def _check_nifti1_size(path: Path, order: str, head: bytes, float_code: str | None) -> bool | None:
    """ReadError ``truncated`` when a single-file NIfTI-1 (``.nii``, ``.nii.gz``) holds fewer bytes
    than ``vox_offset`` + its voxels (``dim``, ``bitpix``) need. A ``.nii.gz`` is read to its end for
    that, and its float voxels (``float_code``: their numpy type) are looked at on the way: returns
    whether one is NaN or inf (None when not looked at: a ``.nii``, whose length is its size)."""
    dim = struct.unpack_from(order + "8h", head, 40)
    bitpix = struct.unpack_from(order + "h", head, 72)[0]
    vox_offset = struct.unpack_from(order + "f", head, 108)[0]
    if not (1 <= dim[0] <= 7 and bitpix > 0 and math.isfinite(vox_offset)) or any(d < 1 for d in dim[1 : dim[0] + 1]):
        return None  # a header ITK refuses anyway
    start = int(vox_offset)
    need = start + math.prod(dim[1 : dim[0] + 1]) * bitpix // 8
    non_finite = None
    if path.name.lower().endswith(".gz"):
        have, tail = 0, b""
        dtype = None if float_code is None else np.dtype(order + float_code)
        non_finite = False if dtype is not None else None
        try:
            with gzip.open(path, "rb") as f:
                while have < need and (chunk := f.read(_CHUNK_BYTES)):
                    if dtype is not None and not non_finite and have + len(chunk) > start:
                        data = tail + chunk[max(0, start - have) : need - have]
                        usable = len(data) - len(data) % dtype.itemsize
                        non_finite = not np.isfinite(np.frombuffer(data, dtype, usable // dtype.itemsize)).all()
                        tail = data[usable:]
                    have += len(chunk)
        except (OSError, EOFError, zlib.error):
            pass  # a cut compressed stream: counted as far as it reads
    else:
        have = path.stat().st_size
    if have < need:
        raise ReadError(f"{path.name}: {have} bytes where the header's dimensions and vox_offset need {need}",
                        reason="truncated")
    return non_finite


def restore_non_finite(voxels: np.ndarray, hdr: Nifti1Header, path: Path, index_4d: int | None) -> tuple[np.ndarray, int]:
    """``voxels`` (ITK's reading of volume ``index_4d`` of a float NIfTI-1 single file, (K, J, I))
    with the NaN and inf the file holds where ITK's reader wrote 0, scaled as ITK scaled the rest;
    and how many there are. Reads that volume's voxel block once, a chunk at a time (not at all for
    integer data, or a ``.nii.gz`` whose size check saw no such value); ITK's voxel order is the
    file's (i fastest)."""
    code = _FLOAT_DTYPES.get(hdr.datatype)
    if code is None or not hdr.single_file or hdr.non_finite is False:
        return voxels, 0
    dtype = np.dtype(hdr.byte_order + code)
    out = np.ascontiguousarray(voxels)
    flat = out.reshape(-1)  # a view: writing it writes ``out``
    slope = hdr.scl_slope if hdr.scl_slope != 0 else 1.0  # ITK's scaling (slope 0: none; float data then has no intercept)
    count, done, per_chunk = 0, 0, max(1, _CHUNK_BYTES // dtype.itemsize)
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            f.seek(int(hdr.vox_offset) + (index_4d or 0) * flat.size * dtype.itemsize)
            while done < flat.size:
                buf = f.read(min(per_chunk, flat.size - done) * dtype.itemsize)
                raw = np.frombuffer(buf, dtype, len(buf) // dtype.itemsize)
                if raw.size == 0:  # shorter than its size check saw: changed since
                    raise ReadError(f"{path.name}: the file got shorter while it was read", reason="truncated")
                bad = np.flatnonzero(~np.isfinite(raw))
                if bad.size:
                    if count == 0 and not out.flags.writeable:
                        out = out.copy()
                        flat = out.reshape(-1)
                    flat[done + bad] = raw[bad].astype(np.float64) * slope + hdr.scl_inter
                    count += int(bad.size)
                done += raw.size
    except (OSError, EOFError, zlib.error) as exc:
        raise ReadError(f"{path.name}: cannot read the NIfTI voxels again for their NaN and inf: {exc}") from None
    return out, count


def unscaled(voxels: np.ndarray, hdr: Nifti1Header, name: str) -> np.ndarray:
    """The raw values of a file with ``scl_slope`` 0 and ``scl_inter`` != 0 (no scaling per nifti1.h)
    from ITK's float32 ``raw + scl_inter``: exact for integer datatypes while every value is within
    2**22 (float32 then resolves 0.25); ReadError ``unsupported_scaling`` otherwise (float data: the
    raw values are not recoverable from ITK's sum)."""
    dtype = _RAW_DTYPES.get(hdr.datatype)
    if dtype is None or np.abs(voxels).max(initial=0) >= 2**22:
        raise ReadError(f"{name}: scl_slope 0 with scl_inter {hdr.scl_inter:g} (no scaling, nifti1.h) but ITK adds the "
                        f"intercept, and the raw values of this datatype ({hdr.datatype}) cannot be recovered exactly",
                        reason="unsupported_scaling")  # fmt: skip
    return np.rint(voxels.astype(np.float64) - hdr.scl_inter).astype(dtype)
