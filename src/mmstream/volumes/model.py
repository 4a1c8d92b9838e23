"""The in-memory volume every loader returns, and its wire form (:class:`mmstream.messages.Volume`).

One canonical geometry: patient LPS millimetres (DICOM's patient coordinate system), voxels indexed
``voxels[k, j, i]`` with ``i`` the fastest axis (DICOM column / NIfTI and ITK first index). A voxel's
centre is ``origin_lps_mm + direction_lps @ (i * s_i, j * s_j, k * s_k)``.
"""

import hashlib
import re
from dataclasses import dataclass, field, replace

import numpy as np
from pydantic import ValidationError

from mmstream.codec import buffer_specs
from mmstream.errors import InputError
from mmstream.messages import ClinicalContext, Volume

# dtypes a Volume message may carry (messages.Dtype); others are widened without loss
_WIRE_DTYPES = {"uint8", "uint16", "int16", "int32", "int64", "float32", "float64"}
_WIDEN = {"int8": "int16", "uint32": "int64", "uint64": "float64", "bool": "uint8", "float16": "float32"}


@dataclass(frozen=True)
class LoadedVolume:
    """A volume in LPS millimetres.

    Attributes
    ----------
    voxels : ndarray of shape (K, J, I)
        K slices of J rows by I columns (C order); modality units after any rescale.
    spacing_mm : (s_k, s_j, s_i)
        Slice, row and column spacing in mm.
    origin_lps_mm : (L, P, S)
        Centre of voxel (0, 0, 0) in mm.
    direction_lps : ndarray of shape (3, 3)
        Columns are the unit vectors of the i, j and k axes in LPS.
    source : str
        Short code of the reader and conversion (``nifti:ras2lps``, ``dicom:lps``, ...); goes on the wire.
    conversion : str
        Human-readable account of how the file's own frame became LPS (kept with the volume).
    orientation_known : bool
        False when the file gives no orientation (NIfTI with qform and sform codes 0): the direction
        is then the identity by convention, not a measurement.
    """

    voxels: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction_lps: np.ndarray
    modality: str = "OT"
    source: str = "unknown"
    conversion: str = ""
    orientation_known: bool = True
    rescaled: bool = False
    series_uid: str | None = None
    patient_id: str | None = None
    files: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        """Refuses (InputError ``invalid_geometry``) empty voxels, spacing not positive and finite,
        an origin not three finite numbers, a direction not a finite orthonormal 3x3 matrix."""
        if self.voxels.ndim != 3 or 0 in self.voxels.shape:
            raise InputError(f"voxels must be a non-empty (K, J, I) array, got shape {self.voxels.shape}")
        if len(self.spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise InputError(f"spacing_mm must be 3 positive finite numbers, got {self.spacing_mm}", reason="invalid_geometry")
        if len(self.origin_lps_mm) != 3 or not np.all(np.isfinite(self.origin_lps_mm)):
            raise InputError(f"origin_lps_mm must be 3 finite numbers, got {self.origin_lps_mm}", reason="invalid_geometry")
        d = np.asarray(self.direction_lps, dtype=np.float64)
        if d.shape != (3, 3) or not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
            raise InputError(f"direction_lps must be a finite 3x3 matrix with orthonormal columns, got {d.tolist()}",
                             reason="invalid_geometry")  # fmt: skip

    def with_patient(self, patient_id: str | None) -> "LoadedVolume":
        return replace(self, patient_id=patient_id)

    def default_id(self) -> str:
        """A stable identifier: the modality's ASCII letters and digits (lower case, at most 8; ``vol``
        when none, e.g. ``M R`` -> ``mr``) plus a hash of the series UID (or of the files' names)."""
        key = self.series_uid or "|".join(self.files) or str(id(self))
        prefix = re.sub(r"[^a-z0-9]", "", self.modality.lower())[:8] or "vol"
        return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def geometry(self) -> dict:
        """Geometry as plain JSON-ready values (what ``mmstream volumes load`` prints)."""
        return {
            "shape_kji": list(self.voxels.shape),
            "dtype": self.voxels.dtype.name,
            "spacing_mm": list(self.spacing_mm),
            "origin_lps_mm": list(self.origin_lps_mm),
            "direction_lps": np.asarray(self.direction_lps).round(9).tolist(),
            "modality": self.modality,
            "source": self.source,
            "conversion": self.conversion,
            "orientation_known": self.orientation_known,
            "rescaled": self.rescaled,
            "series_uid": self.series_uid,
            "files": len(self.files),
        }

    def to_message(self, volume_id: str | None = None) -> tuple[Volume, np.ndarray]:
        """The :class:`Volume` header and its ``voxels`` array (native byte order, a wire dtype)."""
        vox = self.voxels
        name = vox.dtype.name
        if name not in _WIRE_DTYPES:
            if name not in _WIDEN:
                raise InputError(f"voxel dtype {name} cannot travel as a volume message")
            vox = vox.astype(_WIDEN[name])
        vox = np.ascontiguousarray(vox.astype(vox.dtype.newbyteorder("="), copy=False))
        try:
            header = Volume(
                volume_id=volume_id or self.default_id(),
                modality=self.modality[:16] or "OT",
                spacing_mm=tuple(float(s) for s in self.spacing_mm),
                origin_lps_mm=tuple(float(o) for o in self.origin_lps_mm),
                direction_lps=tuple(float(v) for v in np.asarray(self.direction_lps).ravel()),
                clinical=ClinicalContext(patient_id=self.patient_id),
                series_uid=self.series_uid if self.series_uid and len(self.series_uid) <= 64 else None,
                source=self.source[:32],
                rescaled=self.rescaled,
                buffers=buffer_specs(voxels=vox),
            )
        except ValidationError as exc:  # e.g. a volume_id given by the caller that is not an identifier
            first = exc.errors()[0]
            where = ".".join(str(v) for v in first["loc"]) or "volume"
            raise InputError(f"not a valid volume message: {where}: {first['msg']}", reason="invalid_volume") from None
        return header, vox
