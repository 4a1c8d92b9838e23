"""NIfTI, MetaImage and NRRD volumes read with SimpleITK, brought to LPS millimetres.

ITK holds every image in LPS: its NIfTI reader negates the first two rows of the file's RAS+
transform (``qform``/``sform``), its NRRD reader converts the ``right-anterior-superior`` and
``left-anterior-superior`` spaces, and MetaImage is LPS by ITK's own convention. What each file
said, and what was done, is recorded in ``LoadedVolume.conversion`` and the short ``source`` code:

==================  ============================================================================
source              meaning
==================  ============================================================================
``nifti:ras2lps``   NIfTI RAS+ transform (the sform when sform_code > 0, else the qform; codes in
                    ``meta``) converted to LPS; the sform's geometry is mmstream's own (:mod:`.nifti1`)
``nifti:no_xform``  qform_code = sform_code = 0: orientation unknown (``orientation_known`` False)
``nrrd:lps``        NRRD ``space: left-posterior-superior`` (used as is)
``nrrd:ras2lps``    NRRD ``space: right-anterior-superior`` converted to LPS
``nrrd:las2lps``    NRRD ``space: left-anterior-superior`` converted to LPS
``nrrd:no_space``   no ``space`` field: orientation unknown
``metaimage:lps``   MetaImage (ITK convention: LPS); ``AnatomicalOrientation`` kept in ``meta``
==================  ============================================================================

NIfTI ``scl_slope``/``scl_inter`` are applied by ITK when the slope is not 0 or 1 / intercept not 0
(``rescaled`` True); a slope of 0 means no scaling (raw values, ``rescaled`` False). NaN and inf
voxels of a float NIfTI-1 file, which ITK's NIfTI reader gives as 0, are put back as the file holds
them (``meta["non_finite_voxels"]``), as they come from NRRD and MetaImage. 4-D files: pick
one volume with ``index_4d`` (default: refused, so that a time series is never silently cut to its
first volume). A non-spatial axis among the first three (MetaImage ``Kinds`` other than ``domain``/
``space`` or PLUS ``Seq_Frame`` fields; NRRD ``kinds`` ``time``/``list`` or a ``none`` space direction)
is refused (``not_3d``): ITK would make 1 mm slices of a sequence of 2-D frames.

A header whose origin, spacing or direction is not finite numbers is refused (ReadError
``invalid_geometry``) before ITK reads it, because ITK would make one up: MetaImage ``Offset = nan 0 0``
(or text) becomes 0, NRRD ``spacings: nan`` becomes 1 mm, NIfTI-1 non-finite ``pixdim`` becomes 1 mm
and non-finite quaternion or ``qoffset`` values 0. Checked: MetaImage ``Offset``/``Origin``/``Position``,
``ElementSpacing``/``ElementSize`` (also > 0), ``TransformMatrix``/``Rotation``/``Orientation``; NRRD
``space origin``, ``space directions``, the first three ``spacings`` (also > 0); NIfTI-1 ``pixdim[1..3]``,
the qform (``pixdim[0]``, quaternion, ``qoffset``) when ``qform_code`` > 0, ``srow_x/y/z`` when
``sform_code`` > 0.
"""

import math
import re
from pathlib import Path

import numpy as np

from mmstream.errors import InputError, ReadError
from mmstream.io._common import file_beside, floats
from mmstream.io.metaimage import parse_header

from .model import LoadedVolume
from .nifti1 import read_nifti1, restore_non_finite, unscaled

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mha", ".mhd")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DEFAULT_MAX_VOXELS = 64 * 1024 * 1024  # what one volume message may carry (codec Limits.max_elements)


def file_format(path: Path) -> str | None:
    """``nifti``, ``metaimage``, ``nrrd`` or ``dicom`` from the name (or the DICM magic); else None."""
    name = Path(path).name.lower()
    for fmt, suffixes in (("nifti", NIFTI_SUFFIXES), ("metaimage", METAIMAGE_SUFFIXES), ("nrrd", NRRD_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    if name.endswith((".dcm", ".dicom")):
        return "dicom"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    return "dicom" if len(head) == 132 and head[128:] == b"DICM" else None


def _meta(reader, key: str) -> str | None:
    return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None


def _nrrd_header(path: Path) -> str:
    """The text of a NRRD header (up to its blank line; empty when the file cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(65536).split(b"\n\n", 1)[0].decode("latin-1")
    except OSError:
        return ""


def _nrrd_field(head: str, pattern: str) -> str | None:
    """A field of the NRRD header text ``head`` as written (``pattern``: its name as a regex; None
    when absent)."""
    m = re.search(rf"^{pattern}\s*:\s*(.+?)\s*$", head, flags=re.M | re.I)
    return m.group(1) if m else None


def _check_header(path: Path, fmt: str, head: str) -> bool:
    """What ITK would take without complaint but mmstream refuses, in a MetaImage or NRRD header: an
    ``ElementDataFile`` or ``data file`` that is not one file beside the header (ITK would read any
    path, or a LIST of them: ReadError ``path_traversal``, ``unsupported``, ``not_found``, see
    :func:`mmstream.io._common.file_beside`), non-finite geometry (``invalid_geometry``, see the
    module docstring), a non-spatial axis among the first three (``not_3d``); ``head``: a NRRD's header
    text. Returns whether the header gives the voxel spacing (ITK assumes 1 mm where it does not)."""
    if fmt == "metaimage":
        fields = parse_header(path)[0]
        name = fields.get("ElementDataFile", "LOCAL")
        if name.upper() != "LOCAL":
            file_beside(path, name, "ElementDataFile")
        _check_metaimage_geometry(path, fields)
        kinds = fields.get("Kinds", "").split()[:3]  # PLUS: 'domain domain list', a sequence of 2-D frames
        seq = any(k.startswith("Seq_Frame") for k in fields)
        if seq or any(k.lower() not in ("domain", "space") for k in kinds):
            why = f"Kinds = {' '.join(kinds)}" if kinds else "PLUS Seq_Frame fields"
            raise ReadError(f"{path.name}: a sequence of 2-D frames ({why}), not a volume: the 'mha' source and "
                            "'mmstream analyze' read those", reason="not_3d")  # fmt: skip
        return "ElementSpacing" in fields or "ElementSize" in fields
    name = _nrrd_field(head, r"data ?file")
    if name is not None:
        file_beside(path, name, "data file")
    given = _check_nrrd_geometry(path, head)
    _check_nrrd_axes(path, head)
    return given


_NRRD_AXIS_KINDS = ("domain", "space", "time", "list", "???", "none")  # other kinds (vector, RGB-color, ...): components


def _check_nrrd_axes(path: Path, head: str) -> None:
    """ReadError ``not_3d`` when one of the first three image axes (``kinds`` not a component kind)
    is ``time`` or ``list``, or has ``none`` for its space direction: ITK would make it 1 mm slices."""
    dims = floats(_nrrd_field(head, "dimension")) or [0]
    kinds = (_nrrd_field(head, "kinds") or "").lower().split() or ["???"] * int(dims[0])
    dirs = re.findall(r"\([^()]*\)|none", (_nrrd_field(head, "space ?directions") or "").lower())
    axes = [n for n, k in enumerate(kinds) if k in _NRRD_AXIS_KINDS][:3]
    for n in axes:
        if kinds[n] in ("time", "list") or (n < len(dirs) and dirs[n] == "none"):
            why = f"kind '{kinds[n]}'" if kinds[n] in ("time", "list") else "space direction 'none'"
            raise ReadError(f"{path.name}: axis {n} is not spatial ({why}): a sequence of 2-D frames, not a volume",
                            reason="not_3d")


def _geometry_error(path: Path, what: str, raw) -> ReadError:
    return ReadError(f"{path.name}: {what} = {str(raw)[:120]!r}: origin, spacing and direction must be finite numbers "
                     "(spacing > 0)", reason="invalid_geometry")  # fmt: skip


_MHA_GEOMETRY = {  # MetaIO keys (with synonyms) -> (values per dimension as a power of NDims, must be > 0)
    "Offset": (1, False), "Origin": (1, False), "Position": (1, False), "ElementSpacing": (1, True),
    "ElementSize": (1, True), "TransformMatrix": (2, False), "Rotation": (2, False), "Orientation": (2, False),
}  # fmt: skip


def _check_metaimage_geometry(path: Path, fields: dict[str, str]) -> None:
    ndims = floats(fields.get("NDims"))
    for key, (power, positive) in _MHA_GEOMETRY.items():
        if key not in fields:
            continue
        vals = floats(fields[key])
        if vals is None or not all(math.isfinite(v) and (v > 0 or not positive) for v in vals):
            raise _geometry_error(path, key, fields[key])
        if ndims is not None and len(ndims) == 1 and len(vals) != ndims[0] ** power:
            raise ReadError(f"{path.name}: {key} has {len(vals)} values, {int(ndims[0] ** power)} expected for NDims "
                            f"{ndims[0]:g}", reason="invalid_geometry")  # fmt: skip


def _check_nrrd_geometry(path: Path, head: str) -> bool:
    """Refuses non-finite geometry in the header text ``head``; returns whether it gives a spacing
    (``spacings`` or ``space directions``)."""
    given = False
    for field in ("space origin", "space directions"):  # teem also reads 'spaceorigin', 'spacedirections'
        raw = _nrrd_field(head, field.replace(" ", " ?"))
        if raw is None:
            continue
        vectors = re.findall(r"\(([^()]*)\)", raw)
        outside = re.sub(r"\([^()]*\)", " ", raw).split()  # only 'none' (a non-spatial axis) may stand alone
        values = [floats(v.replace(",", " ")) for v in vectors]
        finite = all(v is not None and all(map(math.isfinite, v)) for v in values)
        if not vectors or not finite or any(t.lower() != "none" for t in outside):
            raise _geometry_error(path, field, raw)
        given |= field == "space directions"
    raw = _nrrd_field(head, "spacings")
    if raw is not None:
        vals = floats(raw)  # NaN is NRRD's 'no spacing' for a non-spatial axis, after the three spatial ones
        if vals is None or len(vals) < 3 or not all(math.isfinite(v) and v > 0 for v in vals[:3]):
            raise _geometry_error(path, "spacings", raw)
    return given or raw is not None


def _describe(fmt: str, reader, head: str) -> tuple[str, str, bool, dict]:
    """(source code, conversion text, orientation_known, meta) of what the reader saw (``head``: a
    NRRD's header text)."""
    if fmt == "nifti":
        q, s = _meta(reader, "qform_code") or "0", _meta(reader, "sform_code") or "0"
        meta = {"qform_code": int(q), "sform_code": int(s)}
        for k in ("scl_slope", "scl_inter", "xyzt_units"):
            if _meta(reader, k) is not None:
                meta[k] = _meta(reader, k)
        # ITK takes an unknown spatial unit (xyzt_units & 7 == 0) as mm: say that it is not known
        meta["spatial_unit"] = {1: "m", 2: "mm", 3: "um"}.get(int(meta.get("xyzt_units") or 0) & 7, "unknown")
        if q == "0" and s == "0":
            return "nifti:no_xform", "NIfTI without qform/sform: orientation unknown, identity assumed", False, meta
        used = "sform" if s != "0" else "qform"
        text = f"NIfTI RAS+ {used} (qform_code {q}, sform_code {s}) -> LPS: x and y negated"
        return "nifti:ras2lps", text, True, meta
    if fmt == "nrrd":
        space = _nrrd_field(head, "space")  # as written: ITK's NRRD_space reports LPS after converting
        space = space.lower() if space else None
        meta = {"nrrd_space": space}
        if space in ("left-posterior-superior", "lps"):
            return "nrrd:lps", "NRRD space left-posterior-superior: used as is", True, meta
        if space in ("right-anterior-superior", "ras"):
            return "nrrd:ras2lps", "NRRD space right-anterior-superior -> LPS: x and y negated", True, meta
        if space in ("left-anterior-superior", "las"):
            return "nrrd:las2lps", "NRRD space left-anterior-superior -> LPS: y negated", True, meta
        if space is None:
            return "nrrd:no_space", "NRRD without space field: orientation unknown, identity assumed", False, meta
        raise ReadError(f"NRRD space {space!r} is not a patient space mmstream reads (LPS, RAS, LAS; ITK does not convert "
                        "the '-time' ones)", reason="unsupported_space")  # fmt: skip
    orient = _meta(reader, "AnatomicalOrientation")
    return "metaimage:lps", "MetaImage TransformMatrix/Offset are LPS by ITK convention", True, {"anatomical_orientation": orient}


def load_image_file(path: Path, *, index_4d: int | None = None, max_voxels: int = DEFAULT_MAX_VOXELS) -> LoadedVolume:
    """Read a NIfTI, MetaImage or NRRD file into LPS (see the module docstring).

    Raises ReadError (``unreadable``, ``not_3d``, ``too_large``, ``unsupported_pixel``,
    ``invalid_geometry``, ...) or InputError.
    """
    import SimpleITK as sitk

    path = Path(path)
    fmt = file_format(path)
    if fmt not in ("nifti", "metaimage", "nrrd"):
        raise InputError(f"{path.name}: not a NIfTI, MetaImage or NRRD file name", reason="unknown_format")
    nifti = read_nifti1(path) if fmt == "nifti" else None  # None: not NIfTI-1, left to ITK
    head = _nrrd_header(path) if fmt == "nrrd" else ""  # read once, for the checks and the orientation
    spacing_given = (nifti is None or nifti.spacing_given) if fmt == "nifti" else _check_header(path, fmt, head)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError(f"{path.name}: cannot read {fmt} header: {str(exc).strip().splitlines()[-1][:300]}") from None
    size, ndim = reader.GetSize(), reader.GetDimension()
    if reader.GetNumberOfComponents() != 1:
        raise ReadError(f"{path.name}: {reader.GetNumberOfComponents()} components per voxel; scalar volumes only",
                        reason="unsupported_pixel")  # fmt: skip
    if ndim == 4 and size[3] == 1:
        index_4d = 0
    if ndim == 4:
        if index_4d is None or not 0 <= index_4d < size[3]:
            given = "" if index_4d is None else f"index_4d {index_4d} is out of range: "
            raise ReadError(f"{path.name}: {given}4-D file with {size[3]} volumes; choose one, 0 to {size[3] - 1}, with "
                            "index_4d (--index-4d)", reason="not_3d")  # fmt: skip
        reader.SetExtractIndex((0, 0, 0, index_4d))
        reader.SetExtractSize((size[0], size[1], size[2], 0))
    elif ndim != 3:
        raise ReadError(f"{path.name}: {ndim}-D image; volumes are 3-D", reason="not_3d")
    if math.prod(size[:3]) > max_voxels:  # Python ints: no int64 wrap-around
        raise ReadError(f"{path.name}: {size[:3]} voxels exceed the limit of {max_voxels}", reason="too_large")
    source, conversion, known, meta = _describe(fmt, reader, head)
    if not spacing_given:  # ITK's 1 mm is a guess: no volume in mm3 from it (biomarkers compute)
        meta["spatial_unit"] = "unknown"
        conversion += "; the header gives no voxel spacing: 1 mm assumed, not measured"
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ReadError(f"{path.name}: cannot read {fmt} voxels: {str(exc).strip().splitlines()[-1][:300]}") from None
    voxels = sitk.GetArrayFromImage(img)  # (K, J, I)
    spacing, origin = img.GetSpacing()[::-1], tuple(float(v) for v in img.GetOrigin())
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    slope, inter = float(meta.get("scl_slope", 0) or 0), float(meta.get("scl_inter", 0) or 0)
    if nifti is not None and nifti.sform_code > 0:  # NIfTI-1's transform, not ITK's reading (nifti1.py)
        spacing, origin, direction, note = nifti.sform_geometry(path.name)
        conversion += f"; {note}" if note else ""
    if nifti is not None and slope == 0.0 and inter != 0.0:  # nifti1.h: slope 0 = no scaling; ITK added scl_inter
        voxels = unscaled(voxels, nifti, path.name)
    if nifti is not None:  # ITK's NIfTI reader gives 0 for NaN and inf: the file's values back (nifti1.py)
        voxels, n_non_finite = restore_non_finite(voxels, nifti, path, index_4d if ndim == 4 else None)
        if n_non_finite:
            meta["non_finite_voxels"] = n_non_finite
            conversion += f"; {n_non_finite} NaN/inf voxel(s) kept as the file holds them (ITK's NIfTI reader gives 0)"
    rescaled = fmt == "nifti" and ((slope not in (0.0, 1.0)) or (slope != 0.0 and inter != 0.0))
    if index_4d is not None:
        meta["index_4d"] = index_4d
    return LoadedVolume(
        voxels=voxels, spacing_mm=spacing, origin_lps_mm=origin, direction_lps=direction,
        modality="OT", source=source, conversion=conversion, orientation_known=known, rescaled=rescaled,
        files=(str(path),), meta=meta,
    )  # fmt: skip
