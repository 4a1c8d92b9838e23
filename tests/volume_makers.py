"""Synthetic volumes with known geometry for the volume tests: DICOM series (single-frame slices or
one enhanced multi-frame object) and hand-written NIfTI-1 files (header built byte by byte)."""

import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def oblique_geometry():
    """(row cosines, column cosines, normal) of a plane rotated 30 deg about L then 20 deg about S."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    r = rz @ rx
    return r[:, 0], r[:, 1], r[:, 2]


def _base(series_uid: str, rows: int, cols: int, patient=("Doe^Jane", "PID-0001"), modality="MR") -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _finish(ds: Dataset, sop_class: str) -> Dataset:
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def truth_voxels(n: int, rows: int, cols: int) -> np.ndarray:
    """Stored values of slice k: distinct per (k, j, i), uint16."""
    k, j, i = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (1000 * k + 10 * j + i).astype(np.uint16)


def make_series(folder: Path, n: int = 5, rows: int = 6, cols: int = 7, *, spacing=(2.5, 0.8, 0.6),
                origin=(-10.0, 20.0, 30.0), slopes=None, gaps=None, shuffle=True, patient=("Doe^Jane", "PID-0001"),
                modality="MR", extra=None) -> dict:  # fmt: skip
    """Write ``n`` single-frame slices of one oblique series (``extra``: more attributes, by keyword);
    returns the truth (geometry, voxels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, col, normal = oblique_geometry()
    s_k, s_j, s_i = spacing
    depths = np.cumsum([0.0, *(gaps if gaps is not None else [s_k] * (n - 1))])
    series = generate_uid()
    stored = truth_voxels(n, rows, cols)
    slopes = slopes or [1.0] * n
    order = np.random.default_rng(1).permutation(n) if shuffle else np.arange(n)
    paths = []
    for k in order:
        ds = _base(series, rows, cols, patient, modality)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + depths[k] * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [s_j, s_i]
        ds.SliceThickness = s_k
        ds.RescaleSlope, ds.RescaleIntercept = slopes[k], -100.0
        ds.InstanceNumber = int(k) + 1
        ds.PixelData = stored[k].tobytes()
        for kw, value in (extra or {}).items():
            setattr(ds, kw, value)
        _finish(ds, MR)
        p = folder / f"slice_{k:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    expected = stored.astype(np.float32) * np.asarray(slopes, np.float32)[:, None, None] - 100.0
    return {"paths": paths, "series_uid": series, "origin": np.asarray(origin), "direction": np.column_stack([row, col, normal]),
            "spacing": spacing, "voxels": expected}  # fmt: skip


def make_enhanced(path: Path, n: int = 4, rows: int = 5, cols: int = 6, *, spacing=(3.0, 1.25, 0.75),
                  origin=(5.0, -7.0, 12.0)) -> dict:  # fmt: skip
    """One enhanced MR multi-frame object, frames stored in reverse order, per-frame rescale."""
    row, col, normal = oblique_geometry()
    ds = _base(generate_uid(), rows, cols)
    ds.NumberOfFrames = n
    stored = truth_voxels(n, rows, cols)
    shared = Dataset()
    pm, po = Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [spacing[1], spacing[2]], spacing[0]
    po.ImageOrientationPatient = [float(v) for v in (*row, *col)]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [pm], [po]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, pixels = [], []
    for k in reversed(range(n)):
        g, pp, pv = Dataset(), Dataset(), Dataset()
        pp.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[0] * normal]
        pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = 0.5 * (k + 1), 10.0, "US"
        g.PlanePositionSequence, g.PixelValueTransformationSequence = [pp], [pv]
        frames.append(g)
        pixels.append(stored[k])
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(pixels).tobytes()
    _finish(ds, ENHANCED_MR)
    ds.save_as(path, enforce_file_format=True)
    slopes = 0.5 * (np.arange(n) + 1)
    expected = stored.astype(np.float32) * slopes.astype(np.float32)[:, None, None] + 10.0
    return {"path": Path(path), "origin": np.asarray(origin), "direction": np.column_stack([row, col, normal]),
            "spacing": spacing, "voxels": expected}  # fmt: skip


def write_nifti1(path: Path, data_ijk: np.ndarray, sform: np.ndarray, *, qform_code=0, sform_code=1, slope=0.0, inter=0.0,
                 xyzt_units=2, pixdim=None, quatern=(0.0,) * 6, qfac=1.0) -> None:  # fmt: skip
    """A NIfTI-1 single file written by hand: ``data_ijk`` (I, J, K) int16 (float32 if given so),
    ``sform`` 4x4 RAS+ mm; ``pixdim[1..3]`` the sform's column norms unless given; the qform's
    ``quatern`` (b, c, d, qoffset x, y, z) and ``qfac`` (pixdim[0])."""
    dtype, code = ("<f4", 16) if data_ijk.dtype == np.float32 else ("<i2", 4)
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *data_ijk.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, code, 8 * np.dtype(dtype).itemsize)  # datatype, bitpix
    pix = np.linalg.norm(sform[:3, :3], axis=0) if pixdim is None else pixdim
    struct.pack_into("<8f", hdr, 76, qfac, *pix, 0, 0, 0, 0)
    struct.pack_into("<fff", hdr, 108, 352.0, slope, inter)
    hdr[123] = xyzt_units  # 2: mm; 0: unknown
    struct.pack_into("<hh", hdr, 252, qform_code, sform_code)
    struct.pack_into("<6f", hdr, 256, *quatern)
    for r in range(3):
        struct.pack_into("<4f", hdr, 280 + 16 * r, *sform[r])
    hdr[344:348] = b"n+1\x00"
    Path(path).write_bytes(bytes(hdr) + np.asarray(data_ijk, dtype).tobytes(order="F"))


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
