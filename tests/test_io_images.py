"""mmstream.io on raster images (PNG/JPEG/TIFF/BMP) generated in tmp_path; hostile inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmstream.errors import InputError, MmstreamError, ReadError, SpacingError
from mmstream.io import ImageFrame, count_frames, read_frames, rgb_to_grey


def _write(path, img):
    assert cv2.imwrite(str(path), img)
    return path


def _grey(h=30, w=41, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _one(path, **kw) -> ImageFrame:
    frames = list(read_frames(path, **kw))
    assert len(frames) == 1
    return frames[0]


# ---------------------------------------------------------------------------------------------
# grey conversion


def test_rgb_to_grey_matches_pillow_bit_exact():
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    # random colours plus every colour where the decimal formula (R*299+G*587+B*114+500)//1000 differs
    r, g, b = np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 3), indexing="ij")
    allc = np.stack([r, g, b], -1).reshape(-1, 3)
    dec = (allc[:, 0] * 299 + allc[:, 1] * 587 + allc[:, 2] * 114 + 500) // 1000
    pillow_fixed = (allc[:, 0] * 19595 + allc[:, 1] * 38470 + allc[:, 2] * 7471 + 0x8000) >> 16
    differing = allc[dec != pillow_fixed]
    assert len(differing) > 0  # the two formulas really disagree somewhere
    colours = np.concatenate([differing, rng.integers(0, 256, (20000, 3))]).astype(np.uint8)
    img = colours[: (len(colours) // 100) * 100].reshape(-1, 100, 3)
    expected = np.asarray(pil.fromarray(img, "RGB").convert("L"))
    np.testing.assert_array_equal(rgb_to_grey(img), expected)


def test_grey_png_roundtrip_exact(tmp_path):
    img = _grey()
    fr = _one(_write(tmp_path / "a.png", img))
    np.testing.assert_array_equal(fr.image, img)
    assert fr.image.dtype == np.uint8 and fr.image.flags.c_contiguous
    assert fr.spacing_mm is None and fr.spacing_source == "unknown"
    assert fr.index == 0 and fr.t_s is None
    assert fr.meta["format"] == "png" and fr.meta["spacing_error"] == "no_spacing"
    json.dumps(dict(fr.meta))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_colour_converted_with_pillow_weights(tmp_path, ext):
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (20, 33, 3), dtype=np.uint8)
    fr = _one(_write(tmp_path / f"c{ext}", bgr))
    np.testing.assert_array_equal(fr.image, rgb_to_grey(bgr[..., ::-1]))


def test_alpha_is_dropped(tmp_path):
    rng = np.random.default_rng(3)
    bgra = rng.integers(0, 256, (16, 17, 4), dtype=np.uint8)
    fr = _one(_write(tmp_path / "a.png", bgra))
    np.testing.assert_array_equal(fr.image, rgb_to_grey(bgra[..., 2::-1]))


def test_jpeg_decodes_like_opencv(tmp_path):
    img = cv2.GaussianBlur(_grey(64, 80), (5, 5), 2)
    p = _write(tmp_path / "a.jpg", img)
    fr = _one(p)
    np.testing.assert_array_equal(fr.image, cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
    assert np.abs(fr.image.astype(int) - img).mean() < 3


@pytest.mark.parametrize("mode", ["RGB", "YCbCr", "CMYK", "L"])
@pytest.mark.parametrize("progressive", [False, True], ids=["sequential", "progressive"])
def test_jpeg_colour_spaces_give_opencvs_pixels(tmp_path, mode, progressive):
    """libjpeg-turbo's strict decode (which refuses damaged data) gives OpenCV's pixels bit for bit,
    colour through the Pillow-exact luma, CMYK included (Pillow writes it inverted, Adobe style)."""
    pil = pytest.importorskip("PIL.Image")
    r, c = np.mgrid[:90, :130]
    rgb = np.stack([128 + 100 * np.sin(r / (7 + 3 * k) + k) * np.cos(c / 11) for k in range(3)], -1)
    rgb = np.clip(rgb + np.random.default_rng(4).normal(0, 15, rgb.shape), 0, 255).astype(np.uint8)
    p = tmp_path / f"{mode}.jpg"
    pil.fromarray(rgb).convert(mode).save(p, quality=90, progressive=progressive)
    opencv = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    want = opencv if opencv.ndim == 2 else rgb_to_grey(opencv[..., ::-1])
    np.testing.assert_array_equal(_one(p).image, want)


@pytest.mark.parametrize("warning", ["sos", "jfif"])
def test_jpeg_with_a_warning_that_is_not_damage_is_read(tmp_path, warning):
    """libjpeg warns of a baseline scan's spectral range 0..62 ("Invalid SOS parameters for sequential
    JPEG") and of an unknown JFIF revision (2.01); strict decoding stops there, yet the pixels are whole."""
    img = cv2.GaussianBlur(_grey(64, 80), (5, 5), 2)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    if warning == "sos":
        sos = jpeg.index(b"\xff\xda")
        at = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big") - 2  # Se, 63 in a baseline scan
    else:
        at = jpeg.index(b"JFIF\x00") + 5  # major version
    p = tmp_path / f"{warning}.jpg"
    p.write_bytes(jpeg[:at] + (b"\x3e" if warning == "sos" else b"\x02") + jpeg[at + 1 :])
    np.testing.assert_array_equal(_one(p).image, cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED))


def test_12bit_jpeg_is_unsupported_bit_depth_not_corrupt(tmp_path):
    """OpenCV could not decode it: it was refused as a corrupt file (and libjpeg's warning printed)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    ds = dcmread(get_testdata_file("JPEG-lossy.dcm"))  # JPEG Extended, 12-bit
    p = tmp_path / "twelve.jpg"
    p.write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "unsupported_bit_depth" and "12-bit" in str(ei.value)


def test_16bit_png_fitting_8_bits_is_accepted(tmp_path):
    img = _grey().astype(np.uint16)
    fr = _one(_write(tmp_path / "a16.png", img))
    np.testing.assert_array_equal(fr.image, img.astype(np.uint8))


def test_16bit_png_beyond_8_bits_is_refused_not_rescaled(tmp_path):
    img = _grey().astype(np.uint16) * 200
    p = _write(tmp_path / "b16.png", img)
    it = read_frames(p)
    with pytest.raises(ReadError) as ei:
        next(it)
    assert ei.value.reason == "unsupported_bit_depth" and "b16.png" in str(ei.value)


def test_multipage_tiff_is_frames_and_lazy(tmp_path):
    pages = [np.full((10, 12), v, np.uint8) for v in (5, 50, 250)]
    p = tmp_path / "m.tiff"
    assert cv2.imwritemulti(str(p), pages)
    assert count_frames(p) == 3
    frames = list(read_frames(p))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [int(f.image[0, 0]) for f in frames] == [5, 50, 250]
    assert all(f.meta["n_frames"] == 3 for f in frames)


@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_tiff_page_sizes_are_checked_from_the_directories(tmp_path, big):
    """A small, highly compressed TIFF or BigTIFF of a huge page is refused before decoding."""
    import tifffile

    p = tmp_path / "a.tif"
    tifffile.imwrite(p, np.stack([np.full((10, 12), v, np.uint8) for v in (5, 250)]), bigtiff=big, photometric="minisblack")
    assert count_frames(p) == 2 and [int(f.image[0, 0]) for f in read_frames(p)] == [5, 250]
    tifffile.imwrite(p, np.zeros((4096, 4096), np.uint8), bigtiff=big, compression="zlib")
    assert p.stat().st_size < 100_000
    with pytest.raises(ReadError) as ei:
        read_frames(p, max_pixels=1000)
    assert ei.value.reason == "too_large" and "4096" in str(ei.value)


def test_caller_spacing_overrides(tmp_path):
    fr = _one(_write(tmp_path / "a.png", _grey()), spacing_mm=(0.1, 0.2))
    assert fr.spacing_mm == (0.1, 0.2) and fr.spacing_source == "config"
    assert "spacing_error" not in fr.meta


@pytest.mark.parametrize("bad", [(0.0, 0.1), (-1, 1), (float("nan"), 1.0), (1.0,), "ab", (1, float("inf"))])
def test_invalid_caller_spacing(tmp_path, bad):
    p = _write(tmp_path / "a.png", _grey())
    with pytest.raises(SpacingError) as ei:
        read_frames(p, spacing_mm=bad)
    assert ei.value.reason == "invalid_spacing"


def test_strict_spacing_raises_up_front(tmp_path):
    p = _write(tmp_path / "a.png", _grey())
    with pytest.raises(SpacingError) as ei:
        read_frames(p, strict_spacing=True)
    assert ei.value.reason == "no_spacing"
    fr = _one(p)
    with pytest.raises(SpacingError):
        fr.require_spacing()
    assert _one(p, spacing_mm=(0.1, 0.1)).require_spacing() == (0.1, 0.1)


def test_max_pixels_checked_from_header(tmp_path):
    p = _write(tmp_path / "a.png", _grey(30, 40))
    with pytest.raises(ReadError) as ei:
        read_frames(p, max_pixels=30 * 40 - 1)
    assert ei.value.reason == "too_large"
    assert len(list(read_frames(p, max_pixels=30 * 40))) == 1
    with pytest.raises(InputError):
        read_frames(p, max_pixels=0)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_huge_dimensions_in_header_refused_before_decoding(tmp_path, ext):
    p = _write(tmp_path / f"a{ext}", _grey(8, 8))
    data = bytearray(p.read_bytes())
    if ext == ".png":
        data[16:24] = (100000).to_bytes(4, "big") * 2
    elif ext == ".bmp":
        data[18:26] = (100000).to_bytes(4, "little") * 2
    else:
        i = data.index(b"\xff\xc0")
        data[i + 5 : i + 9] = (60000).to_bytes(2, "big") * 2
    p.write_bytes(bytes(data))
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "too_large"


def test_zero_byte_missing_and_directory(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    cases = [(tmp_path / "z.png", "empty_file"), (tmp_path / "nope.png", "not_found"), (tmp_path, "not_a_file")]
    for path, reason in cases:
        with pytest.raises(ReadError) as ei:
            read_frames(path)
        assert ei.value.reason == reason and str(path) in str(ei.value)
        with pytest.raises(ReadError):
            count_frames(path)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif", ".dcm", ".mha", ".xyz"])
def test_garbage_bytes_with_extension(tmp_path, ext):
    p = tmp_path / f"g{ext}"
    p.write_bytes(np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "unknown_format"


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_truncated_image(tmp_path, ext):
    p = _write(tmp_path / f"t{ext}", _grey(64, 64))
    p.write_bytes(p.read_bytes()[: 40])
    with pytest.raises(ReadError) as ei:
        list(read_frames(p))
    assert ei.value.reason in {"truncated", "corrupt"}


def test_imageframe_validation():
    with pytest.raises(TypeError):
        ImageFrame(np.zeros((2, 2), np.float32), None, "unknown", 0, None, {})
    with pytest.raises(TypeError):
        ImageFrame(np.zeros((4, 4), np.uint8)[:, ::2], None, "unknown", 0, None, {})
    with pytest.raises(ValueError):
        ImageFrame(np.zeros((2, 2), np.uint8), None, "metaimage", 0, None, {})
    with pytest.raises(ValueError):
        ImageFrame(np.zeros((2, 2), np.uint8), None, "bogus", 0, None, {})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_png_never_leaks_library_errors(tmp_path, data):
    ok, buf = cv2.imencode(".png", _grey(12, 13))
    raw = bytearray(buf.tobytes())
    cut = data.draw(st.integers(1, len(raw)))
    raw = raw[:cut]
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.png"
    p.write_bytes(bytes(raw))
    try:
        for fr in read_frames(p):
            assert fr.image.dtype == np.uint8
    except MmstreamError:
        pass
