"""mmstream.io on DICOM files built with pydicom in tmp_path (regions, photometrics, codecs, hostile)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from mmstream.errors import MmstreamError, ReadError, SpacingError
from mmstream.io import count_frames, read_frames, rgb_to_grey


def region(x0, y0, x1, y1, dx_cm, dy_cm, *, fmt=1, typ=1, ux=3, uy=3):
    r = Dataset()
    r.RegionSpatialFormat = fmt
    r.RegionDataType = typ
    r.RegionFlags = 0
    r.RegionLocationMinX0, r.RegionLocationMinY0 = x0, y0
    r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1, y1
    r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = ux, uy
    r.PhysicalDeltaX, r.PhysicalDeltaY = dx_cm, dy_cm
    return r


def make_dicom(path, frames: np.ndarray, *, photometric="MONOCHROME2", regions=None, ts=ExplicitVRLittleEndian,
               bits=8, extra=None, palette=None):
    """frames: (n, rows, cols) or (n, rows, cols, 3)."""
    n, rows, cols = frames.shape[:3]
    spp = 3 if frames.ndim == 4 else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if n > 1 else UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if spp == 3:
        ds.PlanarConfiguration = 0
    if n > 1:
        ds.NumberOfFrames = n
    if regions is not None:
        ds.SequenceOfUltrasoundRegions = regions
    if palette is not None:
        lut, lut_bits = palette
        for c, name in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [len(lut), 0, lut_bits])
            dt = "<u2" if lut_bits == 16 else "u1"
            setattr(ds, f"{name}PaletteColorLookupTableData", np.ascontiguousarray(lut[:, c]).astype(dt).tobytes())
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    if ts == JPEGBaseline8Bit:
        ds.file_meta.TransferSyntaxUID = ts
        jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames]
        ds.PixelData = encapsulate(jpegs)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = frames.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
        if ts != ExplicitVRLittleEndian:
            ds.compress(ts, frames.astype(np.uint8) if bits == 8 else frames)
    ds.save_as(path, enforce_file_format=True)
    return path


def _img(n=1, rows=40, cols=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)


def test_single_region_spacing_row_col_order(tmp_path):
    p = make_dicom(tmp_path / "a.dcm", _img(), regions=[region(2, 3, 44, 36, dx_cm=0.02, dy_cm=0.03)])
    (fr,) = list(read_frames(p))
    assert fr.spacing_source == "dicom_us_regions"
    assert fr.spacing_mm == pytest.approx((0.3, 0.2))  # (row_mm, col_mm) = (dY, dX) * 10
    assert fr.meta["region_rc"] == [3, 2, 37, 45]  # half-open (r0, c0, r1, c1)
    json.dumps(dict(fr.meta))


def test_doppler_and_non_2d_regions_ignored(tmp_path):
    regs = [region(0, 0, 49, 39, 0.05, 0.05, typ=2), region(0, 0, 49, 20, 0.01, 0.0, fmt=4, typ=10, uy=0),
            region(0, 0, 49, 39, 0.04, 0.04)]
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", _img(), regions=regs)))
    assert fr.spacing_mm == pytest.approx((0.4, 0.4))
    assert len(fr.meta["us_regions"]) == 3


def test_two_bmode_regions_same_spacing_ok(tmp_path):
    regs = [region(0, 0, 24, 39, 0.0383, 0.0383), region(25, 0, 49, 39, 0.0383, 0.0383)]
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", _img(), regions=regs)))
    assert fr.spacing_mm == pytest.approx((0.383, 0.383))
    assert fr.meta["bmode_regions_rc"] == [[0, 0, 40, 25], [0, 25, 40, 50]]
    assert "region_rc" not in fr.meta


@pytest.mark.parametrize("dx_cm", [(0.03, 0.05), (0.0100, 0.0102)], ids=["far-apart", "2-percent-apart"])
def test_conflicting_bmode_regions(tmp_path, dx_cm):
    """B-mode spacings 2 % apart are ambiguous: a looser tolerance took them for one, a 2 % error in every length."""
    regs = [region(0, 0, 24, 39, dx_cm[0], dx_cm[0]), region(25, 0, 49, 39, dx_cm[1], dx_cm[1])]
    p = make_dicom(tmp_path / "a.dcm", _img(), regions=regs)
    # pixels are still readable
    (fr,) = list(read_frames(p))
    assert fr.spacing_mm is None and fr.spacing_source == "unknown"
    assert fr.meta["spacing_error"] == "ambiguous_regions"
    assert len(fr.meta["us_regions"]) == 2
    with pytest.raises(SpacingError) as ei:
        fr.require_spacing()
    assert ei.value.reason == "ambiguous_regions" and "a.dcm" in str(ei.value)
    with pytest.raises(SpacingError) as ei:
        read_frames(p, strict_spacing=True)
    assert ei.value.reason == "ambiguous_regions"
    # caller override resolves it
    (fr,) = list(read_frames(p, spacing_mm=(0.3, 0.3), strict_spacing=True))
    assert fr.spacing_source == "config" and fr.meta["file_spacing_error"] == "ambiguous_regions"


@pytest.mark.parametrize(
    "reg, reason",
    [
        (region(0, 0, 80, 39, 0.03, 0.03), "region_outside_image"),
        (region(0, 0, 49, 39, 0.03, 0.03, ux=4, uy=4), "region_units"),
        (region(0, 0, 49, 39, 0.03, 0.03, uy=0), "region_units"),  # cm across, no unit down
        (region(0, 0, 49, 39, 0.03, 0.03, ux=0), "region_units"),
        (region(0, 0, 49, 39, -0.03, 0.03), "invalid_spacing"),
        (region(0, 0, 49, 39, float("nan"), 0.03), "invalid_spacing"),
        (region(0, 0, 49, 39, 0.0, 0.03), "invalid_spacing"),
    ],
)
def test_unusable_bmode_region(tmp_path, reg, reason):
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", _img(), regions=[reg])))
    assert fr.spacing_mm is None and fr.meta["spacing_error"] == reason
    json.dumps(dict(fr.meta))


def test_region_max_one_past_end_is_clipped(tmp_path):
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", _img(), regions=[region(5, 5, 50, 40, 0.02, 0.02)])))
    assert fr.spacing_mm == pytest.approx((0.2, 0.2)) and fr.meta["region_rc"] == [5, 5, 40, 50]


def test_pixel_spacing_fallback_and_none(tmp_path):
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", _img(), extra={"PixelSpacing": [0.25, 0.5]})))
    assert fr.spacing_mm == (0.25, 0.5) and fr.spacing_source == "dicom_pixel_spacing"
    # the detector-plane spacing of a projection image is not a spacing in the patient: pixels only
    (fr,) = list(read_frames(make_dicom(tmp_path / "b.dcm", _img(), extra={"ImagerPixelSpacing": [0.1, 0.2]})))
    assert fr.spacing_mm is None and fr.meta["spacing_error"] == "detector_spacing"
    (fr,) = list(read_frames(make_dicom(tmp_path / "c.dcm", _img())))
    assert fr.spacing_mm is None and fr.meta["spacing_error"] == "no_spacing"


@pytest.mark.parametrize("bits", [8, 16])
def test_monochrome1_inverted(tmp_path, bits):
    """Inverted against 255 instead of 2**BitsStored - 1, a 16-bit MONOCHROME1 file was refused or read wrong."""
    grey = _img()
    stored = ((1 << bits) - 1) - grey.astype(np.uint16)  # 16 bits: 65280..65535, white is 0
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", stored, photometric="MONOCHROME1", bits=bits)))
    np.testing.assert_array_equal(fr.image, grey[0])


def test_rgb_to_grey(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", rgb, photometric="RGB")))
    np.testing.assert_array_equal(fr.image, rgb_to_grey(rgb[0]))


@pytest.mark.parametrize("lut_bits", [8, 16])
def test_palette_color(tmp_path, lut_bits):
    rng = np.random.default_rng(6)
    lut8 = rng.integers(0, 256, (256, 3), dtype=np.uint16)
    # 16 bits: up to half a step either side of each 8-bit level, rounded to it (200 is level 1, not 200 >> 8 = 0)
    near = np.clip(lut8 * 257 + rng.integers(-128, 129, lut8.shape), 0, 65535).astype(np.uint16)
    lut = near if lut_bits == 16 else lut8
    idx = _img()
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", idx, photometric="PALETTE COLOR", palette=(lut, lut_bits))))
    np.testing.assert_array_equal(fr.image, rgb_to_grey(lut8[idx[0]].astype(np.uint8)))


def test_16bit_grey_rule(tmp_path):
    small = _img().astype(np.uint16)
    (fr,) = list(read_frames(make_dicom(tmp_path / "a.dcm", small, bits=16)))
    np.testing.assert_array_equal(fr.image, small[0])
    with pytest.raises(ReadError) as ei:
        list(read_frames(make_dicom(tmp_path / "b.dcm", small * 100, bits=16)))
    assert ei.value.reason == "unsupported_bit_depth"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"FrameTime": 40.0}, [0.0, 0.04, 0.08]),
        ({"FrameTimeVector": [0.0, 10.0, 30.0]}, [0.0, 0.01, 0.04]),
        ({"CineRate": 25}, [0.0, 0.04, 0.08]),
        ({}, [None, None, None]),
        # beyond a minute per frame is no cine timing (1e12 ms paused a live source for years): ignored
        ({"FrameTime": 1e12}, [None, None, None]),
        ({"FrameTime": 1e12, "CineRate": 25}, [0.0, 0.04, 0.08]),
        ({"FrameTimeVector": [0.0, 10.0, 1e9]}, [None, None, None]),
        ({"CineRate": 0.001}, [None, None, None]),
    ],
)
def test_frame_times(tmp_path, extra, expected):
    p = make_dicom(tmp_path / "a.dcm", _img(3), extra=extra)
    assert count_frames(p) == 3
    frames = list(read_frames(p))
    assert [f.index for f in frames] == [0, 1, 2]
    for f, t in zip(frames, expected):
        assert f.t_s == (None if t is None else pytest.approx(t))


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless])
def test_lossless_compressed_multiframe(tmp_path, ts):
    img = _img(3, seed=7)
    p = make_dicom(tmp_path / "a.dcm", img, ts=ts)
    assert pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    frames = list(read_frames(p))
    for f, ref in zip(frames, img):
        np.testing.assert_array_equal(f.image, ref)


def test_jpeg_baseline_multiframe(tmp_path):
    img = np.stack([cv2.GaussianBlur(f, (7, 7), 3) for f in _img(2, 48, 64)])
    p = make_dicom(tmp_path / "a.dcm", img, ts=JPEGBaseline8Bit)
    frames = list(read_frames(p))
    assert len(frames) == 2
    for f, ref in zip(frames, img):
        assert np.abs(f.image.astype(int) - ref).mean() < 3


def test_frames_decoded_lazily(tmp_path, monkeypatch):
    import pydicom.pixels

    produced = []
    real = pydicom.pixels.iter_pixels

    def counting(*a, **k):
        for arr in real(*a, **k):
            produced.append(1)
            yield arr

    monkeypatch.setattr(pydicom.pixels, "iter_pixels", counting)
    it = read_frames(make_dicom(tmp_path / "a.dcm", _img(10), ts=RLELossless))
    assert produced == []
    next(it)
    assert len(produced) == 1


def test_no_pixel_data(tmp_path):
    p = make_dicom(tmp_path / "a.dcm", _img())
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "no_pixel_data" and "a.dcm" in str(ei.value)


def test_truncated_dicom(tmp_path):
    p = make_dicom(tmp_path / "a.dcm", _img(2, 60, 80))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 3000])
    with pytest.raises(ReadError) as ei:
        list(read_frames(p))
    assert ei.value.reason in {"truncated", "corrupt"}
    p.write_bytes(data[:200])
    with pytest.raises(ReadError):
        list(read_frames(p))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_truncated_compressed_dicom(tmp_path):
    p = make_dicom(tmp_path / "a.dcm", _img(3, 60, 80), ts=RLELossless)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ReadError):
        list(read_frames(p))


def test_more_frames_declared_than_encapsulated_is_refused_at_once(tmp_path):
    """A compressed file whose NumberOfFrames exceeds its fragments (a bogus count, possibly 2**31 - 1)
    is refused before anything is allocated per declared frame."""
    import pydicom

    p = make_dicom(tmp_path / "a.dcm", _img(2, 8, 8), ts=RLELossless, extra={"FrameTime": 33.0})
    ds = pydicom.dcmread(p)
    for n in (3, 2**31 - 1):
        ds.NumberOfFrames = n
        ds.save_as(p)
        with pytest.raises(ReadError) as ei:
            read_frames(p)
        assert ei.value.reason == "truncated" and "2 fragment(s)" in str(ei.value)


def test_garbage_after_dicm_marker(tmp_path):
    p = tmp_path / "g.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(8).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(ReadError):
        list(read_frames(p))
    with pytest.raises(ReadError):
        count_frames(p)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_dicom_never_leaks_library_errors(tmp_path, data):
    src = tmp_path / "src.dcm"
    if not src.exists():
        make_dicom(src, _img(2, 16, 16), regions=[region(0, 0, 15, 15, 0.02, 0.02)], extra={"FrameTime": 30.0})
    raw = bytearray(src.read_bytes())
    raw = raw[: data.draw(st.integers(133, len(raw)))]
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(132, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.dcm"
    p.write_bytes(bytes(raw))
    try:
        for fr in read_frames(p):
            assert fr.image.dtype == np.uint8
    except MmstreamError:
        pass


@pytest.mark.shared_data
def test_a_cut_cine_is_truncated_not_without_pixel_data(shared_data, tmp_path):
    """The real SonoSite cine cut at 3 MB (a copy interrupted): pydicom warns and reads an empty data
    set; that is a truncated file. Threads reading a whole and a cut file at once are told apart."""
    import threading

    from mmstream.io.reader import open_file

    whole = shared_data / "dicom-us" / "color3d_jpeg_baseline.dcm"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:3_000_000])
    with pytest.raises(ReadError) as exc:
        list(read_frames(cut))
    assert exc.value.reason == "truncated" and "ends inside its data set" in str(exc.value)
    reasons = {"whole": [], "cut": []}

    def read(name, path):
        for _ in range(40):
            try:
                open_file(path)
                reasons[name].append("ok")
            except ReadError as e:
                reasons[name].append(e.reason)

    threads = [threading.Thread(target=read, args=a) for a in (("whole", whole), ("cut", cut))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(reasons["whole"]) == {"ok"} and set(reasons["cut"]) == {"truncated"}
