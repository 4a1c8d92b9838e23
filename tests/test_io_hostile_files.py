"""mmstream.io on damaged and hostile files made in tmp_path: data a decoder can only partly decode,
decompression bombs, cut files, frames of animated and many-page images, spacings out of range."""

from __future__ import annotations

import io
import logging
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from source_helpers import us_dataset

from mmstream.errors import ReadError, SpacingError
from mmstream.io import count_frames, read_frames, rgb_to_grey, to_grey_u8
from mmstream.io import images as images_module


def _texture(rows=96, cols=128, seed=0) -> np.ndarray:
    """A grey picture with structure and noise (its JPEG has substantial entropy-coded data)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:rows, :cols]
    img = 110 + 60 * np.sin(r / 7.0) * np.cos(c / 11.0) + rng.normal(0, 12, (rows, cols))
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _cut_scan(jpeg: bytes, *, keep_eoi: bool) -> bytes:
    """A JPEG whose entropy-coded data lost its second half (the end marker kept or not)."""
    return jpeg[: len(jpeg) // 2] + (b"\xff\xd9" if keep_eoi else b"")


def _region(x0, y0, x1, y1, dx_cm, dy_cm) -> Dataset:
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0 = x0, y0
    r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1, y1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
    r.PhysicalDeltaX, r.PhysicalDeltaY = dx_cm, dy_cm
    return r


def _dataset(rows: int, cols: int, n: int, *, spp=1, photometric="MONOCHROME2", ts=ExplicitVRLittleEndian,
             regions=None, **extra) -> Dataset:
    ds = us_dataset(ts)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = spp, photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if spp == 3:
        ds.PlanarConfiguration = 0
    if regions is not None:
        ds.SequenceOfUltrasoundRegions = regions
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _encapsulated(path, encoded: list[bytes], rows: int, cols: int, ts) -> object:
    ds = _dataset(rows, cols, len(encoded), ts=ts)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# pixels a decoder could only partly decode


@pytest.mark.parametrize("keep_eoi", [True, False], ids=["end_marker_kept", "cut_at_the_end"])
def test_jpeg_with_cut_entropy_data_is_refused_not_grey_filled(tmp_path, keep_eoi):
    """With the end marker kept, libjpeg only printed a warning and filled the lost half with grey:
    the frame's mean was analysed as 108.95 instead of 46.63."""
    img = _texture()
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg(img))
    (fr,) = list(read_frames(good))
    assert np.abs(fr.image.astype(int) - img).mean() < 3  # the intact file reads
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(_cut_scan(_jpeg(img), keep_eoi=keep_eoi))
    with pytest.raises(ReadError) as ei:
        list(read_frames(bad))
    assert ei.value.reason in ("corrupt", "truncated") and str(bad) in str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("keep_eoi", [True, False], ids=["end_marker_kept", "cut_at_the_end"])
def test_dicom_jpeg_cine_with_a_damaged_frame_keeps_the_frames_before_it(tmp_path, keep_eoi):
    """pylibjpeg decoded the cut frame without a word (mean 6.64 for 10.52 in the real cine)."""
    frames = [_texture(seed=s) for s in range(4)]
    encoded = [_jpeg(f) for f in frames]
    encoded[2] = _cut_scan(encoded[2], keep_eoi=keep_eoi)
    p = _encapsulated(tmp_path / "cine.dcm", encoded, 96, 128, JPEGBaseline8Bit)
    it = read_frames(p)
    got = [next(it), next(it)]
    assert [f.index for f in got] == [0, 1]
    assert all(np.abs(f.image.astype(int) - frames[f.index]).mean() < 3 for f in got)
    with pytest.raises(ReadError) as ei:
        next(it)
    assert ei.value.reason == "corrupt" and "frame 2 is damaged" in str(ei.value)


@pytest.mark.parametrize("keep_eoi", [True, False], ids=["end_marker_kept", "cut_at_the_end"])
def test_dicom_lossless_jpeg_frame_cut_is_refused(tmp_path, shared_data, keep_eoi):
    """A real JPEG lossless (process 14) frame, then the same frame cut: the second is refused."""
    ds = pydicom.dcmread(shared_data / "dicom-us" / "JPGLosslessP14SV1_1s_1f_8b.dcm")
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    p = _encapsulated(tmp_path / "lossless.dcm", [frame, _cut_scan(frame, keep_eoi=keep_eoi)], ds.Rows, ds.Columns,
                      JPEGLosslessSV1)  # fmt: skip
    it = read_frames(p)
    np.testing.assert_array_equal(next(it).image, ds.pixel_array)
    with pytest.raises(ReadError) as ei:
        next(it)
    assert ei.value.reason == "corrupt" and "frame 1 is damaged" in str(ei.value)


def _rle_cine(path, frames: list[np.ndarray], damaged: int) -> object:
    """An RLE cine whose frame ``damaged`` has a header announcing 2 segments for 1 (pylibjpeg-rle
    refuses it; pydicom's own RLE decoder decodes it into other pixels)."""
    rows, cols = frames[0].shape
    kw = dict(rows=rows, columns=cols, samples_per_pixel=1, bits_allocated=8, bits_stored=8,
              pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)  # fmt: skip
    encoded = [RLELosslessEncoder.encode(f, **kw) for f in frames]
    encoded[damaged] = encoded[damaged][:4] + struct.pack("<I", 2) + encoded[damaged][8:]
    return _encapsulated(path, encoded, rows, cols, RLELossless)


@pytest.mark.parametrize("damaged", [0, 1])
def test_a_frame_one_decoder_failed_on_is_refused_not_decoded_by_another(tmp_path, damaged):
    """pydicom fell back to its other RLE plugin (a UserWarning only, for frame 0 not even that),
    whose pixels differed from the frame's by 87 grey levels on average."""
    frames = [np.random.default_rng(s).integers(0, 256, (64, 80), dtype=np.uint8) for s in range(3)]
    p = _rle_cine(tmp_path / "rle.dcm", frames, damaged)
    it = read_frames(p)
    for i in range(damaged):
        np.testing.assert_array_equal(next(it).image, frames[i])
    with pytest.raises(ReadError) as ei:
        next(it)
    assert ei.value.reason == "corrupt" and f"frame {damaged} is damaged: a decoder failed on it" in str(ei.value)


def test_pydicom_records_of_a_reading_thread_stay_off_the_console(tmp_path):
    """A damaged RLE frame in a live DICOM source printed pydicom's plugin traceback on the service's
    console (its root log handler): the failure is the reader's one-line error. Another thread's
    pydicom records still reach the handlers."""
    frames = [np.random.default_rng(s).integers(0, 256, (64, 80), dtype=np.uint8) for s in range(3)]
    p = _rle_cine(tmp_path / "rle.dcm", frames, 1)
    seen: list[logging.LogRecord] = []

    class Console(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    console = Console(logging.DEBUG)
    errors: list[ReadError] = []

    def read() -> None:
        try:
            list(read_frames(p))
        except ReadError as exc:
            errors.append(exc)

    logging.getLogger().addHandler(console)
    try:
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=60)
        logging.getLogger("pydicom").warning("a record of another thread")
    finally:
        logging.getLogger().removeHandler(console)
    assert len(errors) == 1 and "frame 1 is damaged: a decoder failed on it" in str(errors[0])
    assert [r.getMessage() for r in seen if r.name.startswith("pydicom")] == ["a record of another thread"]


_STDERR_WRITER = """
import os, sys, threading, time
from mmstream.io import read_frames

stop, decoded = threading.Event(), [0]

def decode():
    while not stop.is_set():
        for path in sys.argv[1:]:
            decoded[0] += sum(1 for _ in read_frames(path))

decoder = threading.Thread(target=decode)
decoder.start()
deadline = time.monotonic() + 30
while decoded[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.001)
before = decoded[0]
for k in range(40):
    os.write(2, f"other thread: JPEG note {k} written at {time.monotonic():.6f}\\n".encode())
    time.sleep(0.01)
after = decoded[0]
stop.set()
decoder.join()
print(before, after)
"""


def test_decoding_in_one_thread_neither_swallows_nor_delays_another_threads_stderr(tmp_path):
    """The readers took descriptor 2 into a temporary file around each decode (to catch libjpeg's
    warnings): a line another thread wrote meanwhile came out late, and one containing "JPEG" was
    lost. Here a thread decodes JPEG files and DICOM JPEG frames while another writes 40 lines."""
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg(_texture(1024, 1024)))
    cine = _encapsulated(tmp_path / "cine.dcm", [_jpeg(_texture(seed=s)) for s in range(8)], 96, 128, JPEGBaseline8Bit)
    proc = subprocess.Popen([sys.executable, "-c", _STDERR_WRITER, str(big), str(cine)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    arrived: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + 120
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        pending = b""
        while time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            now = time.monotonic()
            *lines, pending = (pending + chunk).split(b"\n")
            arrived += [(now, line) for line in lines]
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, [line for _, line in arrived]
    before, after = map(int, out.split())
    assert after > before > 0  # the decoding went on while the lines were written
    notes = [(t, line.decode()) for t, line in arrived]
    assert [line.split(" written at ")[0] for _, line in notes] == [f"other thread: JPEG note {k}" for k in range(40)]
    late = [round(t - float(line.split(" written at ")[1]), 3) for t, line in notes]
    assert max(late) < 1.0, late


# ---------------------------------------------------------------------------------------------
# decompression bombs


def _deflated(path, rows: int, cols: int, pixel_bytes: int, fill: int = 0) -> object:
    """A Deflated Explicit VR Little Endian file: a rows x cols 8-bit header and ``pixel_bytes`` of pixel data."""
    ds = _dataset(rows, cols, 1, ts=DeflatedExplicitVRLittleEndian)
    del ds.NumberOfFrames
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, ds.file_meta)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [b"\0" * 128 + b"DICM" + head.getvalue(),
             z.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes))]  # fmt: skip
    chunk = bytes([fill]) * (1 << 20)
    for start in range(0, pixel_bytes, len(chunk)):
        parts.append(z.compress(chunk[: min(len(chunk), pixel_bytes - start)]))
    parts.append(z.flush())
    path.write_bytes(b"".join(parts))
    return path


def test_deflated_data_set_is_inflated_no_further_than_its_header_allows(tmp_path):
    """A 64 MiB pixel data element behind a 64 x 64 header (the audit's: 2 MB of file, 2 GiB
    inflated at once, 4.4 GB resident, accepted) is refused while little has been inflated."""
    ok = _deflated(tmp_path / "ok.dcm", 64, 64, 64 * 64, fill=77)
    (fr,) = list(read_frames(ok))
    assert fr.image.shape == (64, 64) and int(fr.image.min()) == int(fr.image.max()) == 77
    bomb = _deflated(tmp_path / "bomb.dcm", 64, 64, 64 << 20)
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ReadError) as ei:
            read_frames(bomb)
        assert count_frames(bomb) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ei.value.reason == "too_large" and "deflated data set" in str(ei.value)
    assert peak < 16 << 20, peak
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ok.read_bytes()[:-40])
    with pytest.raises(ReadError) as ei:
        read_frames(cut)
    assert ei.value.reason == "truncated"


def _patch_sof(jpeg: bytes, rows: int, cols: int) -> bytes:
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", rows, cols) + jpeg[i + 9 :]


def test_a_codestream_declaring_another_size_than_the_header_is_refused_before_decoding(tmp_path):
    """A JPEG fragment declaring 65000 x 65000 made the decoder allocate 12.7 GB (here 4000 x 4000:
    the same path, harmless if the check were gone)."""
    frames = [_texture(seed=s) for s in range(2)]
    encoded = [_jpeg(f) for f in frames]
    encoded[1] = _patch_sof(encoded[1], 4000, 4000)
    it = read_frames(_encapsulated(tmp_path / "jpeg.dcm", encoded, 96, 128, JPEGBaseline8Bit))
    assert next(it).index == 0
    with pytest.raises(ReadError) as ei:
        next(it)
    assert ei.value.reason == "size_mismatch" and "4000 x 4000" in str(ei.value) and "96 x 128" in str(ei.value)

    openjpeg = pytest.importorskip("openjpeg")
    j2k = bytes(openjpeg.encode(frames[0]))
    i = j2k.index(b"\xff\x4f\xff\x51")
    big = j2k[: i + 8] + struct.pack(">II", 3000, 3000) + j2k[i + 16 :]  # Xsiz, Ysiz (offsets 0)
    with pytest.raises(ReadError) as ei:
        list(read_frames(_encapsulated(tmp_path / "j2k.dcm", [big], 96, 128, JPEG2000Lossless)))
    assert ei.value.reason == "size_mismatch" and "3000 x 3000" in str(ei.value)
    (fr,) = list(read_frames(_encapsulated(tmp_path / "j2k_ok.dcm", [j2k], 96, 128, JPEG2000Lossless)))
    np.testing.assert_array_equal(fr.image, frames[0])


def test_colour_to_grey_needs_no_widened_copy_of_the_image():
    """An (8192, 8192, 4) uint16 PNG needed 2.2 GB for its grey conversion (every channel widened
    to uint32); the result stays bit-exact with Pillow's formula."""
    rng = np.random.default_rng(5)
    bgra = rng.integers(0, 256, (1536, 1024, 4), dtype=np.uint16)
    tracemalloc.start()
    try:
        grey = to_grey_u8("x.png", bgra, channel_order="BGR")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    b, g, r = (bgra[..., k].astype(np.uint32) for k in range(3))
    np.testing.assert_array_equal(grey, ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8))
    assert peak < 16 << 20, peak  # the old conversion: ~60 MB for this 1.5 Mpx image
    np.testing.assert_array_equal(rgb_to_grey(bgra[..., 2::-1].astype(np.uint8)), grey)


# ---------------------------------------------------------------------------------------------
# frames of many-page and animated images


def _tiff(path, n: int) -> object:
    assert cv2.imwritemulti(str(path), [np.full((16, 16), i % 251, np.uint8) for i in range(n)])
    return path


def _seconds(path) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        values = [int(f.image[0, 0]) for f in read_frames(path)]
        best = min(best, time.perf_counter() - t)
    assert values == [i % 251 for i in range(len(values))]
    return best


def test_many_page_tiff_is_read_in_time_linear_in_its_pages(tmp_path):
    """Each page used to be decoded by walking from page 0 (2000 pages: 201 s); 4x the pages
    took 16x the time."""
    small, large = _tiff(tmp_path / "100.tif", 100), _tiff(tmp_path / "400.tif", 400)
    assert count_frames(large) == 400
    assert _seconds(large) < 8 * _seconds(small)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _apng(frames: list[np.ndarray], announced: int | None = None, default: np.ndarray | None = None) -> bytes:
    """An animated PNG of grey frames, the first also the default image unless ``default`` is given."""
    rows, cols = frames[0].shape

    def zipped(img: np.ndarray) -> bytes:
        return zlib.compress(b"".join(b"\x00" + row.tobytes() for row in img))

    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)),
           _chunk(b"acTL", struct.pack(">II", len(frames) if announced is None else announced, 0))]  # fmt: skip
    if default is not None:
        out.append(_chunk(b"IDAT", zipped(default)))
    seq = 0
    for i, f in enumerate(frames):
        out.append(_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, cols, rows, 0, 0, 1, 25, 0, 0)))
        seq += 1
        data = zipped(f)
        if i == 0 and default is None:
            out.append(_chunk(b"IDAT", data))
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", seq) + data))
            seq += 1
    return b"".join(out + [_chunk(b"IEND", b"")])


def test_animated_png_gives_every_frame(tmp_path, monkeypatch):
    """Only the first frame used to be read, silently."""
    frames = [_texture(40, 50, seed=s) for s in range(3)]
    p = tmp_path / "anim.png"
    p.write_bytes(_apng(frames))
    got = list(read_frames(p))
    assert [f.index for f in got] == [0, 1, 2] and count_frames(p) == 3
    for f, want in zip(got, frames):
        np.testing.assert_array_equal(f.image, want)
    assert got[0].meta["n_frames"] == 3 and got[0].meta["animated"] is True
    p.write_bytes(_apng(frames[1:], default=frames[0]))  # a default image shown by viewers without APNG only
    got = list(read_frames(p))
    assert len(got) == 2 and all(np.array_equal(f.image, want) for f, want in zip(got, frames[1:]))
    p.write_bytes(_apng(frames[1:2], default=frames[0]))  # OpenCV would give the default image for the frame
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "unsupported"
    p.write_bytes(_apng(frames, announced=5))
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "truncated" and "announces 5 frame(s) and holds 3" in str(ei.value)
    p.write_bytes(_apng(frames))
    monkeypatch.setattr(images_module, "MAX_ANIMATION_BYTES", 3 * 40 * 50 * 8 - 1)
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "too_large"


# ---------------------------------------------------------------------------------------------
# header facts


def test_uncompressed_ybr_full_422_is_read(tmp_path):
    """Refused as truncated: its 2 samples a pixel (Y Y Cb Cr for 2 pixels) were counted as 3."""
    rng = np.random.default_rng(3)
    y = rng.integers(16, 236, (32, 40), dtype=np.uint8)
    cb, cr = rng.integers(100, 156, (2, 32, 20), dtype=np.uint8)
    packed = np.stack([y[:, 0::2], y[:, 1::2], cb, cr], axis=-1)  # (rows, cols / 2, 4)
    ds = _dataset(32, 40, 1, spp=3, photometric="YBR_FULL_422")
    ds.PixelData = packed.tobytes()
    p = tmp_path / "ybr422.dcm"
    ds.save_as(p, enforce_file_format=True)
    (fr,) = list(read_frames(p))
    np.testing.assert_array_equal(fr.image, rgb_to_grey(pydicom.dcmread(p).pixel_array))


def _with_region(path, rows=48, cols=64, **kw) -> object:
    ds = _dataset(rows, cols, 1, **kw)
    del ds.NumberOfFrames
    ds.PixelData = _texture(rows, cols).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("where", ["rows", "cols"])
def test_region_starting_at_the_image_edge_is_unusable_not_an_empty_roi(tmp_path, where):
    """MinY0 = MaxY1 = Rows became region_rc (48, 0, 48, 64), which the analysis refused as a bad ROI
    the user never gave: the whole file failed."""
    reg = _region(0, 48, 63, 48, 0.01, 0.01) if where == "rows" else _region(64, 0, 64, 47, 0.01, 0.01)
    (fr,) = list(read_frames(_with_region(tmp_path / "edge.dcm", regions=[reg])))
    assert fr.spacing_mm is None and fr.meta["spacing_error"] == "region_outside_image"
    assert "region_rc" not in fr.meta and fr.image.shape == (48, 64)


def _dicom_bytes(**kw) -> bytes:
    buf = io.BytesIO()
    ds = _dataset(48, 64, 1, regions=[_region(0, 0, 63, 47, 0.01, 0.01)], **kw)
    del ds.NumberOfFrames
    ds.PixelData = _texture(48, 64).tobytes()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_cut_before_its_pixel_data_is_truncated(tmp_path):
    """pydicom reads such a file without a word (a cut value kept short, a cut element header
    dropped): it was reported as a file without pixel data."""
    whole = _dicom_bytes()
    ds = pydicom.dcmread(io.BytesIO(whole))
    starts = sorted(e.value_tell for e in ds.elements() if e.tag != 0x7FE00010)
    cuts = {150, 200, 300}  # inside the File Meta Information
    cuts |= {starts[2] + 1, starts[-1] - 4}  # inside a value, inside an element header
    region_at = next(e.value_tell for e in ds.elements() if e.tag == 0x00186011)
    cuts.add(region_at + 20)  # inside the region sequence
    for n in sorted(cuts):
        p = tmp_path / f"cut_{n}.dcm"
        p.write_bytes(whole[:n])
        with pytest.raises(ReadError) as ei:
            read_frames(p)
        assert ei.value.reason == "truncated", (n, str(ei.value))
    no_pixels = pydicom.dcmread(io.BytesIO(whole))
    del no_pixels.PixelData
    p = tmp_path / "no_pixels.dcm"
    no_pixels.save_as(p, enforce_file_format=True)
    with pytest.raises(ReadError) as ei:
        read_frames(p)
    assert ei.value.reason == "no_pixel_data"


def test_out_of_range_spacing_in_a_file_names_the_tag_and_value(tmp_path):
    """It used to be refused as if the user had given it: 'spacing_mm: ... got (1000000.0, ...)'."""
    p = _with_region(tmp_path / "delta.dcm", regions=[_region(0, 0, 63, 47, 1e5, 1e5)])
    (fr,) = list(read_frames(p))
    assert fr.spacing_mm is None and fr.meta["spacing_error"] == "invalid_spacing"
    with pytest.raises(SpacingError) as ei:
        read_frames(p, strict_spacing=True)
    assert "PhysicalDeltaX/Y (100000.0, 100000.0) cm" in str(ei.value) and "spacing_mm" not in str(ei.value)
    p = _with_region(tmp_path / "ps.dcm", PixelSpacing=[1e-9, 1e-9])
    (fr,) = list(read_frames(p))
    assert fr.spacing_mm is None and fr.meta["spacing_error"] == "invalid_spacing"
    assert "PixelSpacing" in fr.meta["spacing_detail"] and "1e-09" in fr.meta["spacing_detail"]
    mha = tmp_path / "huge.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 2\nDimSize = 4 3\nElementSpacing = 1e6 1e6\n"
                    b"ElementType = MET_UCHAR\nElementDataFile = LOCAL\n" + bytes(12))  # fmt: skip
    with pytest.raises(ReadError) as ei:
        read_frames(mha)
    assert ei.value.reason == "invalid_spacing" and "ElementSpacing = '1e6 1e6'" in str(ei.value)
    assert "spacing_mm" not in str(ei.value)
