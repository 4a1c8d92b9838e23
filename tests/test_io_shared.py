"""mmstream.io on the real files in ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mmstream.errors import SpacingError
from mmstream.io import count_frames, read_frames

SHARED = Path(os.environ.get("MMSTREAM_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

pytestmark = pytest.mark.shared_data


def need(sub: str) -> Path:
    d = SHARED / sub
    if not d.is_dir():
        pytest.skip(f"shared data folder {d} absent (set MMSTREAM_SHARED_DATA to the shared/data folder)")
    return d


# ---------------------------------------------------------------------------------------------
# DICOM ultrasound

DICOM_EXPECTED = {
    # file: (frames, (rows, cols), spacing_mm or None, spacing_source or spacing_error, frame_time_s)
    "color3d_jpeg_baseline.dcm": (120, (480, 640), 0.5104970559477806, "dicom_us_regions", 0.033333),
    "examples_ybr_color.dcm": (30, (240, 320), None, "region_outside_image", 0.033333),
    "US1_UNCR.dcm": (1, (480, 640), None, "no_spacing", None),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (1, (768, 1024), 0.25476696592378157, "dicom_us_regions", None),
    "OBXXXX1A_2frame.dcm": (2, (600, 800), 0.2622878766196998, "dicom_us_regions", None),
    "gdcm-US-ALOKA-16.dcm": (1, (480, 640), 0.3826530650258064, "dicom_us_regions", None),
}


@pytest.mark.parametrize("name", sorted(DICOM_EXPECTED))
def test_dicom_us_files(name):
    path = need("dicom-us") / name
    n, shape, spacing, src, ft = DICOM_EXPECTED[name]
    assert count_frames(path) == n
    it = read_frames(path)
    first = next(it)
    assert first.image.shape == shape and first.image.dtype == np.uint8
    assert 0 < first.image.mean() < 255 and first.image.std() > 5
    if spacing is None:
        assert first.spacing_mm is None and first.meta["spacing_error"] == src
        with pytest.raises(SpacingError):
            read_frames(path, strict_spacing=True)
    else:
        assert first.spacing_source == src
        assert first.spacing_mm == pytest.approx((spacing, spacing), rel=1e-9)
    json.dumps(dict(first.meta))
    if n <= 30:
        rest = list(it)
        assert len(rest) == n - 1
        if ft is not None:
            assert rest[-1].t_s == pytest.approx((n - 1) * ft)


def test_sonosite_cine_120_frames_streamed():
    path = need("dicom-us") / "color3d_jpeg_baseline.dcm"
    frames = read_frames(path)
    seen = 0
    for f in frames:
        assert f.index == seen and f.image.shape == (480, 640)
        assert f.spacing_mm == pytest.approx((0.5105, 0.5105), abs=1e-4)
        assert f.t_s == pytest.approx(seen * 0.033333)
        seen += 1
    assert seen == 120
    assert f.meta["region_rc"] == [31, 84, 415, 596]


def test_sonosite_grey_matches_pillow_on_decoded_rgb():
    pil = pytest.importorskip("PIL.Image")
    import pydicom
    from pydicom.pixels import pixel_array

    path = need("dicom-us") / "color3d_jpeg_baseline.dcm"
    rgb = pixel_array(pydicom.dcmread(path), index=5)
    np.testing.assert_array_equal(next(f for f in read_frames(path) if f.index == 5).image,
                                  np.asarray(pil.fromarray(rgb).convert("L")))


def test_aloka_dual_view_same_spacing():
    f = next(read_frames(need("dicom-us") / "gdcm-US-ALOKA-16.dcm"))
    assert f.meta["bmode_regions_rc"] == [[24, 32, 416, 336], [24, 336, 416, 640]]
    assert f.meta["palette_bits"] == 16


def test_caliper_distance_rough_check():
    # Philips obstetric: on-screen "Cist Mag 1.06 cm"; pixel spacing must make 1 cm ~ 38 px
    f = next(read_frames(need("dicom-us") / "OBXXXX1A_2frame.dcm"))
    assert 10.0 / f.spacing_mm[1] == pytest.approx(38.1, abs=0.1)


# ---------------------------------------------------------------------------------------------
# PLUS MetaImage sequences


def test_bone_ultrasound_sequence_and_config():
    d = need("pluslibdata")
    path = d / "BoneUltrasound_L14.igs.mha"
    assert count_frames(path) == 21
    frames = list(read_frames(path))
    assert len(frames) == 21 and frames[0].image.shape == (616, 820)
    assert frames[0].spacing_mm is None and frames[0].meta["spacing_error"] == "placeholder_spacing"
    t = np.array([f.t_s for f in frames])
    assert t[0] == pytest.approx(232.542071)
    assert np.all(np.diff(t) > 0) and np.median(np.diff(t)) == pytest.approx(0.086, abs=0.005)
    m = frames[0].meta
    assert set(m["transforms"]) == {"ProbeToTracker", "ReferenceToTracker", "StylusToTracker"}
    assert m["transforms"]["ProbeToTracker"][0][3] == pytest.approx(257.956)
    assert m["transform_status"]["ProbeToTracker"] == "OK" and m["image_status"] == "OK"

    cfg = d / "BoneUltrasound_L14_config.xml"
    f = next(read_frames(path, plus_config=cfg, strict_spacing=True))
    assert f.spacing_mm == (0.085, 0.085) and f.spacing_source == "plus_config"
    itp = np.array(f.meta["image_to_probe"])
    assert np.linalg.norm(itp[:3, 0]) == pytest.approx(0.0854, abs=1e-3)


def test_bone_ultrasound_pixels_match_simpleitk():
    sitk = pytest.importorskip("SimpleITK")
    path = need("pluslibdata") / "BoneUltrasound_L14.igs.mha"
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (frames, rows, cols)
    frames = list(read_frames(path))
    assert [f.index for f in frames] == list(range(vol.shape[0]))
    for f in frames:
        np.testing.assert_array_equal(f.image, vol[f.index])


def test_prostate_mhd_raw_pair():
    sitk = pytest.importorskip("SimpleITK")
    path = need("pluslibdata") / "Prostate10_video.igs.mhd"
    frames = list(read_frames(path))
    assert len(frames) == 10 and frames[0].image.shape == (480, 640)
    assert frames[0].spacing_mm == (0.3, 0.3) and frames[0].spacing_source == "metaimage"
    # frame 2 is absent from the header numbering (Frame0000, 0001, 0003, ...)
    assert [f.t_s for f in frames[:4]] == [1.0, 1.5, None, 2.0]
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    for f in frames:
        np.testing.assert_array_equal(f.image, vol[f.index])


def test_water_tank_long_sequence_is_lazy():
    path = need("pluslibdata") / "WaterTankBottomTranslationVideoBuffer.igs.mha"
    assert count_frames(path) == 201
    it = read_frames(path)
    first = [next(it) for _ in range(3)]
    assert [f.index for f in first] == [0, 1, 2]
    assert first[0].t_s == pytest.approx(7417.7313)
    assert first[0].meta["frame_number"] == 1449


# ---------------------------------------------------------------------------------------------
# PNG datasets: grey must equal PIL convert("L") exactly


def test_usgra_seg_grey_equals_pillow():
    pil = pytest.importorskip("PIL.Image")
    files = sorted((need("usgra-seg") / "dataset" / "images").glob("*.png"))
    assert len(files) == 204
    n_colour = 0
    for p in files:
        im = pil.open(p)
        n_colour += im.mode == "RGB"
        (f,) = list(read_frames(p))
        np.testing.assert_array_equal(f.image, np.asarray(im.convert("L")), err_msg=str(p))
        assert f.spacing_mm is None
    assert n_colour == 170


def test_timtrack_png_grey_equals_pillow():
    pil = pytest.importorskip("PIL.Image")
    files = sorted(need("timtrack").rglob("*.png"))
    colour = [p for p in files if pil.open(p).mode != "L"]
    sample = colour + files[:: max(1, len(files) // 20)]
    assert colour
    for p in sample:
        (f,) = list(read_frames(p))
        np.testing.assert_array_equal(f.image, np.asarray(pil.open(p).convert("L")), err_msg=str(p))
