"""mmstream.io on MetaImage .mha/.mhd files written in tmp_path; PLUS fields and config; hostile headers."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmstream.errors import MmstreamError, ReadError, SpacingError
from mmstream.io import count_frames, read_frames

IDENT = "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"


def header(dims, *, etype="MET_UCHAR", spacing="0.2 0.3 1", compressed=False, csize=None, datafile="LOCAL",
           extra=(), channels=None):
    lines = ["ObjectType = Image", f"NDims = {len(dims)}", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {'True' if compressed else 'False'}"]
    if csize is not None:
        lines.append(f"CompressedDataSize = {csize}")
    lines.append("DimSize = " + " ".join(str(d) for d in dims))
    if channels is not None:
        lines.append(f"ElementNumberOfChannels = {channels}")
    if spacing is not None:
        lines.append(f"ElementSpacing = {spacing}")
    lines += list(extra)
    lines += [f"ElementType = {etype}", f"ElementDataFile = {datafile}"]
    return ("\n".join(lines) + "\n").encode()


def write_mha(path, frames: np.ndarray, *, compressed=False, spacing="0.2 0.3 1", extra=(), **kw):
    """frames: (n, rows, cols) -> 3-D MetaImage with DimSize cols rows n."""
    n, rows, cols = frames.shape[:3]
    data = frames.tobytes()
    if compressed:
        data = zlib.compress(data)
    dims = (cols, rows, n) if frames.ndim == 3 else (cols, rows, n)
    path.write_bytes(header(dims, compressed=compressed, csize=len(data) if compressed else None,
                            spacing=spacing, extra=extra, **kw) + data)
    return path


def plus_fields(n, skip=()):
    out = []
    for i in range(n):
        if i in skip:
            continue
        out += [f"Seq_Frame{i:04d}_Timestamp = {10 + 0.1 * i:.6f}",
                f"Seq_Frame{i:04d}_ProbeToTrackerTransform = 1 0 0 {i} 0 1 0 0 0 0 1 0 0 0 0 1",
                f"Seq_Frame{i:04d}_ProbeToTrackerTransformStatus = {'OK' if i % 2 == 0 else 'INVALID'}",
                f"Seq_Frame{i:04d}_ImageStatus = OK",
                f"Seq_Frame{i:04d}_FrameNumber = {100 + i}",
                f"Seq_Frame{i:04d}_Custom = hello {i}"]
    return out


def _stack(n=3, rows=20, cols=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)


@pytest.mark.parametrize("compressed", [False, True])
def test_stack_roundtrip_axes_and_spacing(tmp_path, compressed):
    img = _stack()
    p = write_mha(tmp_path / "a.mha", img, compressed=compressed)
    assert count_frames(p) == 3
    frames = list(read_frames(p))
    assert len(frames) == 3
    for f, ref in zip(frames, img):
        np.testing.assert_array_equal(f.image, ref)
    assert frames[0].image.shape == (20, 30)
    assert frames[0].spacing_mm == (0.3, 0.2)  # (row, col) = (ElementSpacing[1], ElementSpacing[0])
    assert frames[0].spacing_source == "metaimage"


def test_agrees_with_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    img = _stack(4, 17, 23, seed=1)
    vol = sitk.GetImageFromArray(img)  # numpy (z, y, x)
    vol.SetSpacing((0.11, 0.22, 1.0))  # (x, y, z)
    for name, comp in (("s.mha", True), ("s.mhd", False)):
        sitk.WriteImage(vol, str(tmp_path / name), useCompression=comp)
        frames = list(read_frames(tmp_path / name))
        assert len(frames) == 4
        for f, ref in zip(frames, img):
            np.testing.assert_array_equal(f.image, ref)
        assert frames[0].spacing_mm == pytest.approx((0.22, 0.11))


def test_2d_image_and_rgb_channels(tmp_path):
    img = _stack(1, 8, 9)[0]
    p = tmp_path / "two.mha"
    p.write_bytes(header((9, 8), spacing="0.5 0.25") + img.tobytes())
    (f,) = list(read_frames(p))
    np.testing.assert_array_equal(f.image, img)
    assert f.spacing_mm == (0.25, 0.5) and count_frames(p) == 1
    rgb = np.random.default_rng(2).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    p.write_bytes(header((9, 8), spacing="0.5 0.25", channels=3) + rgb.tobytes())
    from mmstream.io import rgb_to_grey

    np.testing.assert_array_equal(next(read_frames(p)).image, rgb_to_grey(rgb))


def test_16bit_elements_rule(tmp_path):
    img = _stack(1, 5, 6)[0].astype("<u2")
    p = tmp_path / "u16.mha"
    p.write_bytes(header((6, 5), etype="MET_USHORT", spacing="0.2 0.3") + img.tobytes())
    np.testing.assert_array_equal(next(read_frames(p)).image, img)
    p.write_bytes(header((6, 5), etype="MET_USHORT", spacing="0.2 0.3") + (img + 300).astype("<u2").tobytes())
    with pytest.raises(ReadError) as ei:
        next(read_frames(p))
    assert ei.value.reason == "unsupported_bit_depth"
    p.write_bytes(header((6, 5), etype="MET_SHORT", spacing="0.2 0.3") + np.full((5, 6), -1, "<i2").tobytes())
    with pytest.raises(ReadError) as ei:  # a negative sample is refused too, not wrapped to 255
        next(read_frames(p))
    assert ei.value.reason == "unsupported_bit_depth"


def test_big_endian_elements_are_read_in_their_byte_order(tmp_path):
    """BinaryDataByteOrderMSB = True ignored: each 16-bit sample was read byte-swapped (and refused as over 8 bits)."""
    img = _stack(1, 5, 6)[0].astype(">u2")
    p = tmp_path / "msb.mha"
    p.write_bytes(header((6, 5), etype="MET_USHORT", spacing="0.2 0.3").replace(
        b"BinaryDataByteOrderMSB = False", b"BinaryDataByteOrderMSB = True") + img.tobytes())
    np.testing.assert_array_equal(next(read_frames(p)).image, img)


def test_plus_per_frame_fields(tmp_path):
    img = _stack(4)
    p = write_mha(tmp_path / "s.igs.mha", img, compressed=True, spacing="1 1 1",
                  extra=["UltrasoundImageOrientation = MF"] + plus_fields(4, skip={2}))
    frames = list(read_frames(p))
    assert [f.t_s for f in frames] == [pytest.approx(10.0), pytest.approx(10.1), None, pytest.approx(10.3)]
    f0, f1 = frames[0].meta, frames[1].meta
    assert f0["transforms"]["ProbeToTracker"][0] == [1.0, 0.0, 0.0, 0.0]
    assert f1["transforms"]["ProbeToTracker"][0][3] == 1.0
    assert f0["transform_status"] == {"ProbeToTracker": "OK"}
    assert f1["transform_status"] == {"ProbeToTracker": "INVALID"}
    assert f0["frame_number"] == 100 and f0["image_status"] == "OK" and f0["frame_fields"] == {"Custom": "hello 0"}
    assert "transforms" not in frames[2].meta
    # PLUS placeholder spacing 1 1 is not trusted
    assert frames[0].spacing_mm is None and f0["spacing_error"] == "placeholder_spacing"
    for f in frames:
        json.dumps(dict(f.meta))


def test_image_to_probe_transform_and_bad_fields(tmp_path):
    extra = [f"Seq_Frame0000_ImageToProbeTransform = {IDENT}", "Seq_Frame0000_Timestamp = nan",
             "Seq_Frame0000_BadTransform = 1 2 3"]
    p = write_mha(tmp_path / "s.mha", _stack(1), extra=extra)
    (f,) = list(read_frames(p))
    assert f.meta["image_to_probe"][3] == [0.0, 0.0, 0.0, 1.0]
    assert f.t_s is None and sorted(f.meta["invalid_fields"]) == ["BadTransform", "Timestamp"]


def test_unit_spacing_is_a_placeholder_in_any_metaimage(tmp_path):
    """ITK writers put 1 1 in an image given no spacing: reported unknown (pixels only), not 1 mm/px
    (a thickness of 116 mm was reported from such a file); other spacings are kept."""
    (f, *_) = list(read_frames(write_mha(tmp_path / "a.mha", _stack(), spacing="1 1 1")))
    assert f.spacing_mm is None and f.meta["spacing_error"] == "placeholder_spacing"
    (f, *_) = list(read_frames(write_mha(tmp_path / "a.mha", _stack(), spacing="1 1 1"), spacing_mm=(1.0, 1.0)))
    assert f.spacing_mm == (1.0, 1.0) and f.spacing_source == "config"  # a user who means it says so
    (f, *_) = list(read_frames(write_mha(tmp_path / "b.mha", _stack(), spacing="0.2 0.1 1")))
    assert f.spacing_mm == (0.1, 0.2) and f.spacing_source == "metaimage"
    (f, *_) = list(read_frames(write_mha(tmp_path / "c.mha", _stack(), spacing="0.5 1 1")))
    assert f.spacing_mm == (1.0, 0.5) and f.spacing_source == "metaimage"  # 1 mm on one axis only: a real spacing


def test_no_element_spacing(tmp_path):
    (f, *_) = list(read_frames(write_mha(tmp_path / "a.mha", _stack(), spacing=None)))
    assert f.spacing_mm is None and f.meta["spacing_error"] == "no_spacing"


def test_mhd_with_external_raw(tmp_path):
    img = _stack()
    (tmp_path / "d.raw").write_bytes(img.tobytes())
    p = tmp_path / "d.mhd"
    p.write_bytes(header((30, 20, 3), datafile="d.raw"))
    frames = list(read_frames(p))
    np.testing.assert_array_equal(frames[2].image, img[2])


def test_lazy_compressed_reading(tmp_path):
    # the last frame's data is corrupt: the first frames still come out
    img = _stack(5)
    data = bytearray(zlib.compress(img.tobytes(), 0))  # stored blocks: bytes map 1:1
    data[-200:-4] = b"\xff" * 196
    p = tmp_path / "lazy.mha"
    p.write_bytes(header((30, 20, 5), compressed=True) + bytes(data))
    it = read_frames(p)
    np.testing.assert_array_equal(next(it).image, img[0])
    with pytest.raises(ReadError):
        list(it)


# ---------------------------------------------------------------------------------------------
# PLUS config


CONFIG = """<PlusConfiguration version="2.3">
  <ScanConversion TransducerGeometry="LINEAR" OutputImageSizePixel="{cols} {rows}"
     OutputImageSpacingMmPerPixel="{sx} {sy}"/>
  <CoordinateDefinitions>
    <Transform From="Image" To="Probe" Matrix="0 0.085 0 1  -0.085 0 0 2  0 0 0.085 0  0 0 0 1"/>
  </CoordinateDefinitions>
</PlusConfiguration>
"""


def test_plus_config_spacing(tmp_path):
    p = write_mha(tmp_path / "s.igs.mha", _stack(), spacing="1 1 1", extra=plus_fields(3))
    cfg = tmp_path / "c.xml"
    cfg.write_text(CONFIG.format(cols=30, rows=20, sx=0.1, sy=0.2))
    frames = list(read_frames(p, plus_config=cfg))
    f = frames[0]
    assert f.spacing_mm == (0.2, 0.1) and f.spacing_source == "plus_config"
    assert f.meta["image_to_probe"][0] == [0.0, 0.085, 0.0, 1.0]
    assert f.meta["file_spacing_error"] == "placeholder_spacing" and "spacing_error" not in f.meta
    # caller spacing beats the config
    assert next(read_frames(p, plus_config=cfg, spacing_mm=(0.5, 0.5))).spacing_source == "config"
    # wrong image size
    cfg.write_text(CONFIG.format(cols=20, rows=30, sx=0.1, sy=0.2))
    with pytest.raises(SpacingError) as ei:
        read_frames(p, plus_config=cfg)
    assert ei.value.reason == "config_mismatch"


@pytest.mark.parametrize(
    "text, exc, reason",
    [
        ("<PlusConfiguration><ScanConversion/></PlusConfiguration>", SpacingError, "no_spacing"),
        (CONFIG.format(cols=30, rows=20, sx="nan", sy=0.1), SpacingError, "invalid_spacing"),
        (CONFIG.format(cols=30, rows=20, sx=-1, sy=0.1), SpacingError, "invalid_spacing"),
        ("<PlusConfiguration><Scan", ReadError, "bad_plus_config"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]><PlusConfiguration/>', ReadError, "bad_plus_config"),
    ],
)
def test_bad_plus_config(tmp_path, text, exc, reason):
    p = write_mha(tmp_path / "s.mha", _stack())
    cfg = tmp_path / "c.xml"
    cfg.write_text(text)
    with pytest.raises(exc) as ei:
        read_frames(p, plus_config=cfg)
    assert ei.value.reason == reason and "c.xml" in str(ei.value)
    with pytest.raises(ReadError):
        read_frames(p, plus_config=tmp_path / "missing.xml")


# ---------------------------------------------------------------------------------------------
# hostile headers


def _expect(path, reason, *, iterate=False):
    with pytest.raises(ReadError) as ei:
        it = read_frames(path)
        if iterate:
            list(it)
    assert ei.value.reason == reason, str(ei.value)
    assert str(path) in str(ei.value)
    return ei.value


@pytest.mark.parametrize(
    "dims, reason",
    [
        ((30, 20, 10**12), "truncated"),
        ((10**9, 10**9, 1), "too_large"),
        ((30, -20, 3), "bad_header"),
        ((30, 0, 3), "bad_header"),
        ((31, 20, 3), "truncated"),
        ((29, 20, 3), "size_mismatch"),
        ((30, 20, 2), "size_mismatch"),
        ((30, 20, 4), "truncated"),
    ],
)
def test_dimsize_mismatch_uncompressed(tmp_path, dims, reason):
    p = tmp_path / "h.mha"
    p.write_bytes(header(dims) + _stack().tobytes())
    _expect(p, reason)


def test_dimsize_huge_compressed(tmp_path):
    data = zlib.compress(_stack().tobytes())
    p = tmp_path / "h.mha"
    p.write_bytes(header((30, 20, 10**9), compressed=True) + data)
    _expect(p, "size_mismatch")
    p.write_bytes(header((30, 20, 3), compressed=True, csize=len(data) + 5) + data)
    _expect(p, "truncated")
    p.write_bytes(header((30, 20, 4), compressed=True) + data)  # stream ends early
    _expect(p, "truncated", iterate=True)
    p.write_bytes(header((30, 20, 2), compressed=True) + data)  # stream holds more
    _expect(p, "size_mismatch", iterate=True)
    p.write_bytes(header((30, 20, 3), compressed=True) + b"\x00" * len(data))
    _expect(p, "corrupt", iterate=True)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.raw", "..\\..\\x.raw"])
def test_element_data_file_traversal(tmp_path, name):
    sub = tmp_path / "inner"
    sub.mkdir()
    (tmp_path / "x.raw").write_bytes(_stack().tobytes())
    p = sub / "t.mhd"
    p.write_bytes(header((30, 20, 3), datafile=name))
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason in ({"path_traversal"} if "\\" not in name else {"path_traversal", "not_found"})


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_element_data_file_symlink_escape(tmp_path):
    sub = tmp_path / "inner"
    sub.mkdir()
    (tmp_path / "x.raw").write_bytes(_stack().tobytes())
    (sub / "link.raw").symlink_to(tmp_path / "x.raw")
    p = sub / "t.mhd"
    p.write_bytes(header((30, 20, 3), datafile="link.raw"))
    _expect(p, "path_traversal")


def test_element_data_file_missing_and_list(tmp_path):
    p = tmp_path / "t.mhd"
    p.write_bytes(header((30, 20, 3), datafile="nothere.raw"))
    _expect(p, "not_found")
    p.write_bytes(header((30, 20, 3), datafile="LIST"))
    _expect(p, "unsupported")
    p.write_bytes(header((30, 20, 3), datafile="slice%03d.raw"))
    _expect(p, "unsupported")


@pytest.mark.parametrize("etype", ["MET_FLOAT", "MET_DOUBLE", "MET_FOO", ""])
def test_unknown_element_type(tmp_path, etype):
    p = tmp_path / "e.mha"
    p.write_bytes(header((30, 20, 3), etype=etype) + _stack().tobytes())
    _expect(p, "unsupported_element_type")


@pytest.mark.parametrize("spacing", ["nan 0.2 1", "0.2 -0.1 1", "0 0.1 1", "inf 1 1", "0.1 0.2", "a b c"])
def test_invalid_spacing(tmp_path, spacing):
    p = write_mha(tmp_path / "s.mha", _stack(), spacing=spacing)
    _expect(p, "invalid_spacing")


@pytest.mark.parametrize(
    "text, reason",
    [
        (b"ObjectType = Image\nNDims = 3\nDimSize = 30 20 3\n", "bad_header"),  # no ElementDataFile
        (b"ObjectType = Image\nthis is not a header\n", "bad_header"),
        (b"NDims = 3\nNDims = 2\nElementDataFile = LOCAL\n", "bad_header"),
        (b"NDims = 4\nDimSize = 1 1 1 1\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n\x00", "unsupported"),
        (b"NDims = x\nElementDataFile = LOCAL\n", "bad_header"),
        (b"NDims = 3\nDimSize = 1 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n", "bad_header"),
        (b"ObjectType = Image\nName = " + b"x" * (2 << 20) + b"\n", "bad_header"),
        (b"ObjectType = \xff\xfe\nElementDataFile = LOCAL\n", "bad_header"),
    ],
)
def test_malformed_headers(tmp_path, text, reason):
    p = tmp_path / "m.mha"
    p.write_bytes(text)
    _expect(p, reason)


def test_identical_duplicate_keys_allowed(tmp_path):
    # PLUS writes "Kinds = domain domain list" twice (Prostate10_video.igs.mhd)
    p = write_mha(tmp_path / "k.mha", _stack(), extra=["Kinds = domain domain list", "Kinds = domain domain list"])
    assert len(list(read_frames(p))) == 3


def test_max_pixels(tmp_path):
    p = write_mha(tmp_path / "s.mha", _stack())
    with pytest.raises(ReadError) as ei:
        read_frames(p, max_pixels=599)
    assert ei.value.reason == "too_large"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_mha_never_leaks_library_errors(tmp_path, data):
    src = write_mha(tmp_path / "src.mha", _stack(2, 6, 7), compressed=data.draw(st.booleans()),
                    extra=plus_fields(2))
    raw = bytearray(src.read_bytes())
    raw = raw[: data.draw(st.integers(1, len(raw)))]
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.sampled_from([0, 10, 32, 45, 48, 57, 61, 255, data.draw(st.integers(0, 255))]))
    p = tmp_path / "fuzz.mha"
    p.write_bytes(bytes(raw))
    try:
        count_frames(p)
        for fr in read_frames(p):
            assert fr.image.dtype == np.uint8
            json.dumps(dict(fr.meta))
    except MmstreamError:
        pass
