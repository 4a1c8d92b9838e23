"""DICOM cine and MetaImage sequence sources: real files from ../shared/data, synthetic bad files."""

import numpy as np
import pydicom
import pytest

from mmstream.errors import ReadError, SpacingError
from mmstream_drivers.dicom import DicomCineSource
from mmstream_drivers.mha import MetaImageSequenceSource
from source_helpers import us_region, write_cine


# --- DICOM cine --------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_sonosite_cine_streams_120_cropped_frames_at_30_fps(shared_data):
    src = DicomCineSource(str(shared_data / "dicom-us" / "color3d_jpeg_baseline.dcm"), realtime=False)
    frames = list(src.source_frames())
    assert len(frames) == 120 and src.health.counters["frames"] == 120
    # cropped to the one B-mode region (84,31)-(595,414): 384 x 512, 0.5105 mm from 0.05105 cm/px
    assert src.region_rc == (31, 84, 415, 596)
    assert {f.image.shape for f in frames} == {(384, 512)}
    assert frames[0].spacing_mm == pytest.approx((0.5104970559, 0.5104970559))
    assert frames[0].spacing_source == "dicom_us_regions"
    times = np.array([f.t_device_s for f in frames])
    np.testing.assert_allclose(np.diff(times), 0.033333, atol=1e-5)  # FrameTime 33.333 ms
    assert frames[0].metadata["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert frames[0].metadata["frame_time_source"] == "FrameTime"
    assert frames[5].image.dtype == np.uint8 and frames[5].image.std() > 5  # real content, not blank
    assert src.paces_itself is True


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "shape", "spacing_mm"),
    [
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", (721, 997), 0.25476696),  # JPEG lossless, MONOCHROME2
        ("OBXXXX1A_2frame.dcm", (459, 680), 0.26228787),  # PALETTE COLOR, region clipped at the edge
        ("gdcm-US-ALOKA-16.dcm", (480, 640), 0.38265306),  # 16-bit palette, dual view: whole frame
    ],
)
def test_real_files_of_other_encodings_give_grey_frames_with_region_spacing(shared_data, name, shape, spacing_mm):
    frames = list(DicomCineSource(str(shared_data / "dicom-us" / name)).source_frames())
    assert frames[0].image.shape == shape and frames[0].image.dtype == np.uint8
    assert frames[0].spacing_mm == pytest.approx((spacing_mm, spacing_mm))


@pytest.mark.shared_data
def test_file_without_regions_has_unknown_spacing_and_says_so(shared_data):
    src = DicomCineSource(str(shared_data / "dicom-us" / "US1_UNCR.dcm"))
    [frame] = list(src.source_frames())
    assert frame.spacing_mm is None and frame.spacing_source == "unknown"
    assert [e.reason for e in src.health.events] == ["no_spacing"]


def test_conflicting_regions_are_refused_unless_the_config_gives_spacing(tmp_path):
    path = tmp_path / "dual.dcm"
    write_cine(path, regions=[us_region(0, 0, 40, 25, 0.01), us_region(0, 25, 40, 50, 0.02)])
    with pytest.raises(SpacingError) as exc:
        DicomCineSource(str(path))
    assert exc.value.reason == "ambiguous_regions"
    frames = list(DicomCineSource(str(path), spacing_row_mm=0.1, spacing_col_mm=0.1, realtime=False).source_frames())
    assert frames[0].spacing_mm == (0.1, 0.1) and frames[0].spacing_source == "config"
    # several regions, none chosen: the whole frame; region_index picks one
    assert frames[0].image.shape == (40, 50)
    picked = list(DicomCineSource(str(path), spacing_row_mm=0.1, spacing_col_mm=0.1, region_index=1).source_frames())
    assert picked[0].image.shape == (40, 25)
    np.testing.assert_array_equal(picked[0].image[0], np.arange(25, 50))


def test_us_region_chosen_among_doppler_regions_and_timing_from_frame_time(tmp_path):
    path = tmp_path / "cine.dcm"
    truth = write_cine(path, n=5, regions=[us_region(5, 10, 35, 40, 0.02), us_region(0, 0, 10, 50, 0.5, data_type=3)])
    src = DicomCineSource(str(path), realtime=False, loop=True)
    frames = []
    for f in src.source_frames():
        frames.append(f)
        if len(frames) == 12:
            src.close()
    assert len(frames) == 12 and src.health.counters["loops"] == 2
    assert frames[0].image.shape == (30, 30) and frames[0].spacing_mm == pytest.approx((0.2, 0.2))
    np.testing.assert_array_equal(frames[3].image, truth[3, 5:35, 10:40])
    assert frames[0].annotations == {"file_frame": 0.0, "region_row0": 5.0, "region_col0": 10.0}
    # 25 ms frames; the second pass continues the clock one frame interval after the last frame
    np.testing.assert_allclose([f.t_device_s for f in frames], np.arange(12) * 0.025, atol=1e-9)


def test_file_without_timing_is_paced_at_fps(tmp_path):
    path = tmp_path / "untimed.dcm"
    write_cine(path, n=3, frame_time_ms=None)
    frames = list(DicomCineSource(str(path), fps=10.0).source_frames())
    assert [f.t_device_s for f in frames] == pytest.approx([0.0, 0.1, 0.2])


def test_truncated_cine_stops_mid_stream_keeping_the_frames_before(tmp_path):
    path = tmp_path / "trunc.dcm"
    full = write_cine(path, n=6)
    ds = pydicom.dcmread(path)
    ds.PixelData = full.tobytes()[: 40 * 50 * 6]  # exactly 6 frames present
    ds.NumberOfFrames = 8  # but 8 announced
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ReadError) as exc:
        DicomCineSource(str(path))
    assert exc.value.reason == "truncated"


def _corrupt_rle_cine(path):
    """An RLE cine of 4 frames whose frame 2 is garbage; returns the frames as written."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders import RLELosslessEncoder
    from pydicom.uid import RLELossless

    frames = write_cine(path, n=4)
    ds = pydicom.dcmread(path)
    enc = [RLELosslessEncoder.encode(f, rows=40, columns=50, samples_per_pixel=1, bits_allocated=8,
                                     bits_stored=8, pixel_representation=0, photometric_interpretation="MONOCHROME2",
                                     number_of_frames=1)
           for f in frames]  # fmt: skip
    enc[2] = b"\x01\x00\x00\x00" + b"\xff" * 60  # one segment header, then nonsense
    ds.PixelData = encapsulate(enc)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return frames


def test_corrupt_compressed_frame_mid_stream_is_an_error_after_the_good_frames(tmp_path):
    """RLE cine whose frame 2 is garbage: frames 0-1 are produced, then a counted, announced error."""
    path = tmp_path / "rle.dcm"
    frames = _corrupt_rle_cine(path)
    src = DicomCineSource(str(path), realtime=False)
    got = []
    with pytest.raises(ReadError) as exc:
        for f in src.source_frames():
            got.append(f.image)
    assert exc.value.reason == "corrupt"
    assert len(got) == 2
    np.testing.assert_array_equal(got[1], frames[1])
    assert src.health.errors["corrupt"] == 1 and "stopped after 2 frames" in src.health.events[-1].message


def test_unsupported_transfer_syntax_is_named(tmp_path):
    from pydicom.encaps import encapsulate

    path = tmp_path / "mpeg4.dcm"
    write_cine(path, n=1)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC: cine exported as video
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + b"\x67" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ReadError) as exc:
        DicomCineSource(str(path))
    assert exc.value.reason == "unsupported_transfer_syntax"


@pytest.mark.parametrize("content", [b"", b"DICM" * 40, b"\x00" * 128 + b"DICM" + b"\xff" * 64])
def test_garbage_files_are_read_errors_not_crashes(tmp_path, content):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(ReadError):
        DicomCineSource(str(path))


def test_spacing_options_must_come_in_pairs(tmp_path):
    path = tmp_path / "c.dcm"
    write_cine(path, n=1)
    with pytest.raises(SpacingError):
        DicomCineSource(str(path), spacing_row_mm=0.1)
    for bad in ((-1.0, 0.1), (1e-30, 0.1), (0.1, 150.0)):  # the analysis would refuse them on every frame
        with pytest.raises(SpacingError):
            DicomCineSource(str(path), spacing_row_mm=bad[0], spacing_col_mm=bad[1])


# --- MetaImage sequences ------------------------------------------------------------------------


@pytest.mark.shared_data
def test_plus_bone_sequence_keeps_timestamps_transforms_and_config_spacing(shared_data):
    d = shared_data / "pluslibdata"
    src = MetaImageSequenceSource(str(d / "BoneUltrasound_L14.igs.mha"),
                                  plus_config=str(d / "BoneUltrasound_L14_config.xml"))  # fmt: skip
    frames = list(src.source_frames())
    assert len(frames) == 21 and frames[0].image.shape == (616, 820)
    assert frames[0].spacing_mm == (0.085, 0.085) and frames[0].spacing_source == "plus_config"
    assert frames[0].t_device_s == pytest.approx(232.542071)  # raw PLUS timestamp kept
    assert np.all(np.diff([f.t_device_s for f in frames]) > 0.08)
    assert {"probe_to_tracker", "reference_to_tracker", "image_to_probe"} <= set(frames[0].transforms)
    assert all(len(m) == 16 for m in frames[0].transforms.values())
    m = np.reshape(frames[0].transforms["image_to_probe"], (4, 4))
    assert np.linalg.norm(m[:3, 0]) == pytest.approx(0.0854, abs=5e-4)  # the calibration's mm per pixel


@pytest.mark.shared_data
def test_plus_placeholder_spacing_is_unknown_without_the_config(shared_data):
    src = MetaImageSequenceSource(str(shared_data / "pluslibdata" / "BoneUltrasound_L14.igs.mha"), realtime=False)
    first = next(src.source_frames())
    assert first.spacing_mm is None and first.spacing_source == "unknown"
    assert src.health.events[0].reason == "placeholder_spacing"


@pytest.mark.shared_data
def test_mhd_raw_pair_with_a_frame_lacking_its_timestamp(shared_data):
    path = shared_data / "pluslibdata" / "Prostate10_video.igs.mhd"
    frames = list(MetaImageSequenceSource(str(path)).source_frames())
    assert len(frames) == 10 and frames[0].spacing_mm == (0.3, 0.3) and frames[0].spacing_source == "metaimage"
    assert frames[2].t_device_s is None  # Frame0002 is missing from the header: unknown, not invented
    assert frames[0].t_device_s is not None and "tool_to_tracker" in frames[0].transforms
    assert frames[0].annotations["frame_number"] == 1.0


def _write_mha(path, n, fields: dict[int, dict[str, str]], data: bytes | None = None, shape=(6, 8)):
    head = [
        "ObjectType = Image", "NDims = 3", f"DimSize = {shape[1]} {shape[0]} {n}", "ElementType = MET_UCHAR",
        "ElementSpacing = 0.2 0.2 1", "UltrasoundImageOrientation = MF",
    ]  # fmt: skip
    for i, f in fields.items():
        head += [f"Seq_Frame{i:04d}_{k} = {v}" for k, v in f.items()]
    head.append("ElementDataFile = LOCAL")
    pixels = (np.arange(n * shape[0] * shape[1]) % 251).astype(np.uint8).tobytes() if data is None else data
    path.write_bytes(("\n".join(head) + "\n").encode() + pixels)


def test_looping_a_file_without_usable_frames_ends_instead_of_spinning(tmp_path):
    from mmstream_drivers.mha import MetaImageSequenceSource

    p = tmp_path / "allinvalid.igs.mha"
    _write_mha(p, 3, {i: {"Timestamp": f"{10 + i / 10}", "ImageStatus": "INVALID"} for i in range(3)})
    src = MetaImageSequenceSource(str(p), loop=True, realtime=False)
    assert list(src.source_frames()) == []  # returns: no second pass
    assert src.health.errors["no_frames"] == 1 and src.health.counters["loops"] == 0


def test_invalid_images_and_transforms_are_left_out_and_counted(tmp_path):
    eye = "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"
    path = tmp_path / "seq.igs.mha"
    _write_mha(path, 3, {
        0: {"Timestamp": "10.0", "ProbeToTrackerTransform": eye, "ProbeToTrackerTransformStatus": "OK",
            "Depth": "40", "Operator": "probe A"},
        1: {"Timestamp": "10.1", "ImageStatus": "INVALID"},
        2: {"Timestamp": "10.2", "ProbeToTrackerTransform": eye, "ProbeToTrackerTransformStatus": "INVALID"},
    })  # fmt: skip
    src = MetaImageSequenceSource(str(path))
    frames = list(src.source_frames())
    assert [f.t_device_s for f in frames] == [10.0, 10.2]
    assert frames[0].transforms == {"probe_to_tracker": tuple(float(v) for v in eye.split())}
    assert frames[0].annotations == {"Depth": 40.0} and frames[0].metadata == {"Operator": "probe A"}
    assert frames[1].transforms == {}
    assert src.health.errors["invalid_image"] == 1 and src.health.counters["invalid_transforms"] == 1
    assert frames[0].spacing_mm == (0.2, 0.2)


def test_truncated_mha_is_refused_at_open(tmp_path):
    path = tmp_path / "short.mha"
    _write_mha(path, 4, {}, data=b"\x00" * 100)
    with pytest.raises(ReadError) as exc:
        MetaImageSequenceSource(str(path))
    assert exc.value.reason == "truncated"


def test_compressed_stream_ending_mid_sequence_keeps_the_frames_before(tmp_path):
    import zlib

    pixels = np.arange(4 * 48, dtype=np.uint8).tobytes()
    comp = zlib.compress(pixels[: 2 * 48 + 10])  # a device that stopped inside frame 2
    path = tmp_path / "stopped.mha"
    head = ["ObjectType = Image", "NDims = 3", "DimSize = 8 6 4", "ElementType = MET_UCHAR",
            "CompressedData = True", f"CompressedDataSize = {len(comp)}", "ElementDataFile = LOCAL"]  # fmt: skip
    path.write_bytes(("\n".join(head) + "\n").encode() + comp)
    src = MetaImageSequenceSource(str(path), realtime=False)
    got = []
    with pytest.raises(ReadError) as exc:
        for f in src.source_frames():
            got.append(f)
    assert exc.value.reason == "truncated" and len(got) == 2
    assert src.health.errors["truncated"] == 1


def test_frame_fields_from_hostile_sources_are_bounded_and_made_identifiers():
    from mmstream_drivers.fields import sort_fields

    raw = {f"n{i}": str(i) for i in range(40)}
    raw.update({"../evil key!": "x" * 1000, "!!!": "gone", "BadTransform": "1 2 3", "NaNValue": "nan"})
    f = sort_fields(raw, prefix="igtl.")
    assert len(f.annotations) == 32 and f.dropped == 8 + 1  # 8 numbers over the limit, "!!!" has no name left
    assert f.metadata["igtl..._evil_key"] == "x" * 256  # "/", " ", "!" replaced; at most 256 characters
    assert f.metadata["igtl.BadTransform"] == "1 2 3"  # not 16 numbers: kept as text, not as a matrix
    assert f.metadata["igtl.NaNValue"] == "nan" and f.transforms == {}


def _cine_with_tags(path, n: int, tags: dict):
    """A cine of ``n`` frames without FrameTime, with the timing ``tags`` set instead."""
    write_cine(path, n=n, frame_time_ms=None)
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("tags", "times_s"), [
    ({"FrameTimeVector": [0.0, 20.0, 30.0]}, [0.0, 0.020, 0.050]),  # increments, cumulated
    ({"CineRate": 50}, [0.0, 0.02, 0.04]),
])  # fmt: skip
def test_frame_timing_from_frame_time_vector_and_cine_rate(tmp_path, tags, times_s):
    path = _cine_with_tags(tmp_path / "timed.dcm", 3, tags)
    frames = list(DicomCineSource(str(path)).source_frames())
    assert [f.t_device_s for f in frames] == pytest.approx(times_s)
    assert frames[0].metadata["frame_time_source"] == next(iter(tags))


@pytest.mark.shared_data
def test_plus_frames_keep_transforms_and_timestamps_on_the_wire(shared_data):
    """Through FrameSender and the codec, as the service's ingest receives them."""
    from mmstream.codec import decode
    from mmstream.source import FrameSender
    from mmstream.transport import make_socket

    d = shared_data / "pluslibdata"
    src = MetaImageSequenceSource(str(d / "BoneUltrasound_L14.igs.mha"),
                                  plus_config=str(d / "BoneUltrasound_L14_config.xml"))  # fmt: skip
    with make_socket("pull", "tcp://127.0.0.1:*", bind=True) as pull:
        with FrameSender(pull.last_endpoint, "tracked") as sender:
            frames = list(src.source_frames())[:3]
            for f in frames:
                sender.send(f)
        got = [decode(pull.recv(timeout_ms=5000)) for _ in frames]
    for sent, msg in zip(frames, got):
        h = msg.header
        assert h.t_device_s == sent.t_device_s and h.spacing_mm == (0.085, 0.085) and h.spacing_source == "plus_config"
        assert h.transforms == sent.transforms and "probe_to_tracker" in h.transforms
        np.testing.assert_array_equal(msg.arrays["image"], sent.image)


def test_oversized_frames_are_refused_from_the_header(tmp_path):
    path = tmp_path / "big.dcm"
    write_cine(path, n=2)  # 40 x 50 = 2000 pixels per frame
    with pytest.raises(ReadError) as exc:
        DicomCineSource(str(path), max_frame_pixels=1999)
    assert exc.value.reason == "too_large"
    mha = tmp_path / "big.mha"
    _write_mha(mha, 2, {})  # 8 x 6
    with pytest.raises(ReadError) as exc:
        MetaImageSequenceSource(str(mha), max_frame_pixels=47)
    assert exc.value.reason == "too_large"


# --- file timing: absent or unusable timing is paced at fps; device time keeps increasing ---------------


def _take(src, n):
    frames = []
    for f in src.source_frames():
        frames.append(f)
        if len(frames) == n:
            src.close()
    return frames


def test_a_metaimage_without_timestamps_is_timed_at_fps_and_loops_at_it(tmp_path):
    """An ITK-written stack (no PLUS Timestamp) used to go out with no time at all: 300 frames in
    0.15 s, a looped one at ~3000 frames/s; now ``index / fps`` as a DICOM file without timing."""
    path = tmp_path / "stack.mha"
    _write_mha(path, 4, {})
    src = MetaImageSequenceSource(str(path), fps=20.0, loop=True)
    frames = _take(src, 10)
    assert [f.t_device_s for f in frames] == pytest.approx(np.arange(10) / 20.0)
    assert src.health.errors == {} and src.health.counters["loops"] == 2


@pytest.mark.parametrize(("stamps", "k"), [
    ([5.0, 5.0, 5.0, 5.0], 1),  # one time for every frame
    ([100.0, 50.0, 10.0, 1.0], 1),  # running backwards
    ([10.0, 10.1, 10.2, 0.0, 0.1, 0.2], 3),  # starting again mid-file (two acquisitions in one file)
])  # fmt: skip
def test_plus_timestamps_that_do_not_increase_are_replaced_by_fps_timing(tmp_path, stamps, k):
    """From the first frame not after the one before, the file is timed at fps (said once, as a
    warning); a looped file keeps increasing instead of going back in time or spinning."""
    path = tmp_path / "seq.igs.mha"
    _write_mha(path, len(stamps), {i: {"Timestamp": f"{t}"} for i, t in enumerate(stamps)})
    src = MetaImageSequenceSource(str(path), fps=20.0, loop=True)
    t = np.array([f.t_device_s for f in _take(src, 3 * len(stamps))])
    assert t[:k] == pytest.approx(stamps[:k])  # the file's own while it increases
    assert np.diff(t[k - 1:len(stamps)]) == pytest.approx(0.05)  # then 1 / fps
    assert np.all(np.diff(t) > 0)  # across the passes too
    assert src.health.errors == {"invalid_frame_times": 1}
    [event] = [e for e in src.health.events if e.reason == "invalid_frame_times"]
    assert event.level == "warning" and f"frame {k} at" in event.message and "fps = 20" in event.message


@pytest.mark.parametrize(("tags", "times_s", "warned"), [
    ({"FrameTimeVector": [0.0] * 4}, [0.0, 0.1, 0.2, 0.3], True),  # accepted before: 4 frames at one instant
    ({"FrameTimeVector": [0.0, 20.0, 0.0, 20.0]}, [0.0, 0.1, 0.2, 0.3], True),
    ({"FrameTimeVector": [0.0] * 4, "FrameTime": 25.0}, [0.0, 0.025, 0.05, 0.075], False),  # the next tag serves
])  # fmt: skip
def test_a_frame_time_vector_with_frames_sharing_a_time_is_no_timing(tmp_path, tags, times_s, warned):
    path = _cine_with_tags(tmp_path / "cine.dcm", 4, tags)
    src = DicomCineSource(str(path), fps=10.0)
    frames = list(src.source_frames())
    assert [f.t_device_s for f in frames] == pytest.approx(times_s)
    assert src.health.errors == ({"invalid_frame_times": 1} if warned else {})
    if warned:
        [event] = [e for e in src.health.events if e.reason == "invalid_frame_times"]
        assert "FrameTimeVector" in event.message and "fps = 10" in event.message


# --- through a service: every frame taken ---------------------------------------------------------


def _service(sources, **over):
    from mmstream.config import load_config
    from mmstream.service import Service
    from test_graph import RANDOM_TCP

    return Service(load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, sources=sources, **over))


def _ingest(svc):
    st = svc.graph.status()["nodes"]["ingest"]
    return st["counters"].get("accepted", 0), st["rejected"]


def test_a_file_sent_as_fast_as_possible_loses_no_frame_to_the_rate_limit(tmp_path):
    """``realtime = false`` sent 1500 small frames at ~3000/s into ingest's 1000 frames/s limit: 195
    were refused (``rate_limited``) while the source showed 1500 sent. Now no faster than the limit."""
    from source_helpers import wait_for

    n = 1500
    path = tmp_path / "cine.dcm"
    write_cine(path, n=1, rows=64, cols=64)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = n
    ds.PixelData = (np.arange(n * 64 * 64) % 251).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    with _service([{"driver": "dicom", "stream_id": "cine", "options": {"path": str(path), "realtime": False}}]) as svc:
        wait_for(lambda: sum(_ingest(svc)[1].values()) + _ingest(svc)[0] >= n, 60, "every frame at ingest")
        accepted, rejected = _ingest(svc)
    assert accepted == n and rejected == {}


def test_a_looped_untimed_file_is_paced_at_fps_by_the_service(tmp_path):
    """A looped 3-frame stack without timestamps spun at ~3000 frames/s (a core busy, most frames
    rate-limited); at fps = 50, 20 frames take at least 19 / 50 s."""
    import time

    from source_helpers import wait_for

    path = tmp_path / "stack.mha"
    _write_mha(path, 3, {}, shape=(80, 64))
    sources = [{"driver": "mha", "stream_id": "stack", "fps": 50, "options": {"path": str(path), "loop": True}}]
    with _service(sources) as svc:
        t0 = time.monotonic()
        wait_for(lambda: _ingest(svc)[0] >= 20, 30, "20 frames")
        took = time.monotonic() - t0
        accepted, rejected = _ingest(svc)
    assert took >= 19 / 50 * 0.95 and rejected == {}


def test_frames_larger_than_the_service_takes_are_counted_by_the_source(tmp_path):
    """4100-row frames pass the driver's max_frame_pixels but not the service's max_frame_rows
    (4096): they were lost at ingest (too_large) with the source showing nothing; now the sender
    refuses them, counted under source_invalid_frames."""
    from source_helpers import wait_for

    path = tmp_path / "tall.dcm"
    write_cine(path, n=3, rows=4100, cols=20)
    with _service([{"driver": "dicom", "stream_id": "tall", "options": {"path": str(path), "realtime": False}}]) as svc:
        wait_for(lambda: svc.graph.status()["source_invalid_frames"].get("tall") == 3, 30, "3 frames refused")
        assert _ingest(svc) == (0, {})


def test_the_services_own_ingest_limits_bound_its_sources(tmp_path):
    """A service configured for 200 frames/s (burst 5) and 1000-row frames: its file source goes no
    faster, and a taller frame is refused by the source (counted), not lost at ingest."""
    from source_helpers import wait_for

    path = tmp_path / "cine.dcm"
    write_cine(path, n=25, rows=64, cols=64)
    tall = tmp_path / "tall.dcm"
    write_cine(tall, n=2, rows=1001, cols=20)
    sources = [{"driver": "dicom", "stream_id": "cine", "options": {"path": str(path), "realtime": False}},
               {"driver": "dicom", "stream_id": "tall", "options": {"path": str(tall), "realtime": False}}]
    with _service(sources, ingest={"max_fps_per_stream": 200, "burst_frames": 5, "max_frame_rows": 1000}) as svc:
        wait_for(lambda: _ingest(svc)[0] + sum(_ingest(svc)[1].values()) >= 25
                 and svc.graph.status()["source_invalid_frames"].get("tall") == 2, 30, "every frame")  # fmt: skip
        assert _ingest(svc) == (25, {})
