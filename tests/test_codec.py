"""The wire codec: round trips of every message type (bytes and real zmq frames), property tests,
and one test per rejection reason of :mod:`mmstream.codec` -- hostile input raises ``CodecError``
with the documented ``reason`` and never any other exception."""

import json
import math
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmstream.codec import Decoded, Limits, buffer_specs, decode, encode, topic_for
from mmstream.errors import CodecError
from mmstream.messages import (
    MESSAGE_TYPES,
    ClinicalContext,
    Control,
    CsaSummary,
    EchoSummary,
    BiopsyCandidate,
    Event,
    Frame,
    Fused,
    FusedValue,
    ImagingSettings,
    Metrics,
    QualitySummary,
    Reply,
    ThicknessSummary,
    Volume,
)
from mmstream.transport import make_socket

EYE4 = tuple(float(i % 5 == 0) for i in range(16))


# --------------------------------------------------------------------------- samples of every type


def sample_frame():
    image = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    header = Frame(
        stream_id="probe-1", session_id="probe-1-abc", seq=7, t_device_s=12.5, t_host_s=100.25,
        t_wall="2026-01-02T03:04:05.000006+00:00", spacing_mm=(0.1, 0.12), spacing_source="dicom_us_regions",
        imaging=ImagingSettings(depth_mm=40.0, gain_db=-3.0, frequency_mhz=12.0, preset="msk", probe="L12-5"),
        clinical=ClinicalContext(patient_id="P01", site="tibialis_anterior", side="left", plane="transverse"),
        transforms={"image_to_probe": EYE4}, annotations={"truth_nerve_area_mm2": 8.5}, stamps={"sent": 99.0},
        buffers=buffer_specs(image=image),
    )  # fmt: skip
    return header, (image,)


def sample_volume():
    voxels = np.linspace(-1.0, 1.0, 3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    header = Volume(
        volume_id="mri-1", modality="MR", spacing_mm=(3.0, 0.5, 0.5), origin_lps_mm=(-10.0, 20.0, 5.5),
        direction_lps=(1, 0, 0, 0, 1, 0, 0, 0, 1), series_uid="1.2.3", source="dicom", rescaled=True,
        buffers=buffer_specs(voxels=voxels),
    )  # fmt: skip
    return header, (voxels,)


def sample_metrics():
    hist = np.arange(256, dtype=np.int64)
    contour = np.array([[1.0, 2.0], [3.0, 4.5], [5.0, 1.0]], dtype=np.float32)
    header = Metrics(
        stream_id="probe-1", session_id="probe-1-abc", parent=("probe-1", 7), t_device_s=12.5, spacing_mm=(0.1, 0.12),
        echogenicity=EchoSummary(region="roi", mean=80.5, std=12.0, n_px=400),
        csa=CsaSummary(seed_rc=(10.0, 12.0), tracked=True, area_px=55.0, area_mm2=0.66, perimeter_px=30.0,
                       perimeter_mm=3.3, centroid_rc=(10.5, 12.5), confidence=0.9),
        thickness=ThicknessSummary(region_rc=(0, 0, 40, 60), thickness_px=20.0, thickness_mm=2.0, confidence=0.8),
        quality=QualitySummary(saturated_fraction=0.0, dark_fraction=0.1, thumb_mean_abs_diff=None, duplicate=False,
                               frozen=False, saturated=False, no_contact=False),
        annotations={"truth_nerve_area_mm2": 8.5}, stamps={"ingest": 1.0, "analyzed": 1.01},
        buffers=buffer_specs(histogram=hist, contour_rc=contour),
    )  # fmt: skip
    return header, (hist, contour)


def sample_event():
    return Event(node="ingest", level="warning", reason="rate_limited", message="over 30 frames/s",
                 stream_id="probe-1", seq=9, t_host_s=5.0), ()  # fmt: skip


def sample_control():
    return Control(command="set_roi", stream_id="probe-1", roi=(0, 0, 20, 30)), ()


def sample_reply():
    return Reply(ok=True, data={"stream_id": "probe-1", "nested": {"a": [1, 2.5, None, "x"]}}), ()


def sample_fused():
    return Fused(
        stream_id="probe-1", session_id="probe-1-abc", parent=("probe-1", 7), patient_id="PSEUDO-1",
        site="tibialis_anterior", side="left", captures=2, score=1.5, score_formula="max(z)",
        score_inputs=("fat_fraction",), flags=("stale_biomarkers",),
        values=(FusedValue(name="fat_fraction", source="stored", modality="MRI", value=0.2, unit="1",
                           acquired_on="2026-01-10", age_days=321.0, stale=True, z=1.5),),
        biopsy=(BiopsyCandidate(rank=1, site="tibialis_anterior", side="left", category="affected", score=1.5,
                                reason="moderately affected"),),
    ), ()  # fmt: skip


SAMPLES = {
    "frame": sample_frame, "volume": sample_volume, "metrics": sample_metrics,
    "event": sample_event, "control": sample_control, "reply": sample_reply, "fused": sample_fused,
}  # fmt: skip


def test_samples_cover_every_message_type():
    assert {m.model_fields["msg_type"].default for m in MESSAGE_TYPES} == set(SAMPLES)


def assert_same(decoded: Decoded, header, arrays):
    assert decoded.header == header
    assert type(decoded.header) is type(header)
    assert decoded.topic == topic_for(header)
    assert list(decoded.arrays) == [b.name for b in header.buffers]
    for spec, arr in zip(header.buffers, arrays):
        got = decoded.arrays[spec.name]
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert not got.flags.writeable
        with pytest.raises(ValueError):
            got.flat[0] = 0 if got.size else None


@pytest.mark.parametrize("kind", SAMPLES)
def test_round_trip_bytes(kind):
    header, arrays = SAMPLES[kind]()
    parts = encode(header, arrays)
    assert len(parts) == 2 + len(arrays)
    assert parts[0] == topic_for(header).encode()
    json.loads(bytes(parts[1]))  # the header is plain JSON
    assert_same(decode([bytes(p) for p in parts]), header, arrays)


@pytest.mark.parametrize("kind", SAMPLES)
def test_round_trip_memoryview_parts_is_zero_copy(kind):
    """Decoding the parts ``encode`` returns maps the arrays' own memory (nothing copied either way)."""
    header, arrays = SAMPLES[kind]()
    decoded = decode(encode(header, arrays))
    assert_same(decoded, header, arrays)
    for spec, arr in zip(header.buffers, arrays):
        assert np.shares_memory(decoded.arrays[spec.name], arr)


@pytest.fixture()
def pair():
    name = f"inproc://test-codec-{uuid.uuid4().hex[:8]}"
    a = make_socket("pair", name, bind=True)
    b = make_socket("pair", name, bind=False)
    yield a, b
    b.close()
    a.close()


@pytest.mark.parametrize("kind", SAMPLES)
def test_round_trip_over_zmq_frames(kind, pair):
    a, b = pair
    header, arrays = SAMPLES[kind]()
    a.send(encode(header, arrays), timeout_ms=2000)
    parts = b.recv(timeout_ms=2000)
    assert all(hasattr(p, "buffer") for p in parts)  # real zmq.Frame objects, not bytes
    decoded = decode(parts)
    assert_same(decoded, header, arrays)
    for spec, part in zip(header.buffers, parts[2:]):
        got = decoded.arrays[spec.name]
        if got.size:  # the array is a view of the received frame's memory, not a copy
            assert np.shares_memory(got, np.frombuffer(part.buffer, dtype=np.uint8))


def test_decoded_array_outlives_the_frame_reference(pair):
    """The array keeps the received buffer alive: dropping the parts must not invalidate it."""
    a, b = pair
    header, (image,) = sample_frame()
    a.send(encode(header, [image]), timeout_ms=2000)
    decoded = decode(b.recv(timeout_ms=2000))
    import gc

    gc.collect()
    np.testing.assert_array_equal(decoded.arrays["image"], image)


def test_a_volume_of_max_elements_8_byte_values_passes_the_socket_part_limit():
    """The receiving sockets' part limit counted one byte per element: ZeroMQ dropped a float64 volume the codec allows."""
    limits = Limits(max_elements=100_000)
    voxels = np.linspace(-1.0, 1.0, limits.max_elements).reshape(10, 100, 100)  # float64, 800 kB
    header = sample_volume()[0].model_copy(update={"buffers": buffer_specs(voxels=voxels)})
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True, max_msg_bytes=limits.max_part_bytes)
    push = make_socket("push", pull.last_endpoint, bind=False)
    try:
        push.send(encode(header, [voxels]), timeout_ms=2000)
        np.testing.assert_array_equal(decode(pull.recv(timeout_ms=5000), limits).arrays["voxels"], voxels)
    finally:
        push.close()
        pull.close()


def test_topic_may_extend_the_canonical_topic():
    header, arrays = sample_frame()
    parts = encode(header, arrays, topic=topic_for(header) + ".sub")
    assert decode(parts).topic == "frame.probe-1.sub"


def test_non_contiguous_and_fortran_arrays_are_sent_in_c_order():
    base = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    for arr in (np.asfortranarray(base), base[::2, ::3]):
        header = Frame(stream_id="s", session_id="x", seq=0, buffers=buffer_specs(image=arr))
        np.testing.assert_array_equal(decode(encode(header, [arr])).arrays["image"], arr)


# --------------------------------------------------------------------------- property tests

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def frames(draw):
    h = draw(st.integers(1, 64))
    w = draw(st.integers(1, 64))
    image = np.frombuffer(draw(st.binary(min_size=h * w, max_size=h * w)), dtype=np.uint8).reshape(h, w)
    pixel = st.floats(min_value=1e-6, max_value=100.0, allow_nan=False, allow_infinity=False)  # messages.PixelMm
    spacing = draw(st.none() | st.tuples(pixel, pixel))
    header = Frame(
        stream_id=draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z")),
        session_id=draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z")),
        seq=draw(st.integers(0, 2**63 - 1)),
        t_device_s=draw(st.none() | finite),
        t_host_s=draw(st.none() | finite),
        spacing_mm=spacing,
        spacing_source="unknown" if spacing is None else draw(st.sampled_from(["config", "igtl_matrix", "simulated"])),
        imaging=ImagingSettings(gain_db=draw(st.none() | finite), depth_mm=draw(st.none() | positive)),
        annotations=draw(st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z"), finite, max_size=4)),
        buffers=buffer_specs(image=image),
    )
    return header, image


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_property_frame_round_trip(sample):
    header, image = sample
    decoded = decode([bytes(p) for p in encode(header, [image])])
    assert decoded.header == header
    np.testing.assert_array_equal(decoded.arrays["image"], image)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_fuzz_arbitrary_bytes_raise_only_codec_error(parts):
    try:
        decode(parts)
    except CodecError as exc:
        assert exc.reason in REASONS
    # a random byte string that decodes is fine too (it must then be a valid message)


json_scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=10)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(SAMPLES)),
    key=st.text(max_size=12),
    value=json_values,
    nbuf=st.integers(0, 3),
    blob=st.binary(max_size=64),
)
def test_fuzz_mutated_valid_headers_raise_only_codec_error(kind, key, value, nbuf, blob):
    """Structure-aware fuzzing: a valid header with one field replaced or added by arbitrary JSON."""
    header, _ = SAMPLES[kind]()
    h = json.loads(header.model_dump_json())
    h[key or sorted(h)[len(blob) % len(h)]] = value
    try:
        decode([topic_for(header).encode(), json.dumps(h).encode(), *([blob] * nbuf)])
    except CodecError as exc:
        assert exc.reason in REASONS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["frame", "volume", "metrics"]),
    shape=st.lists(st.integers(0, 2**15) | st.sampled_from([0, 1, 4096, 4097, 2**15, 2**31, 2**64, 2**70]), max_size=4),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "float64", "int64"]),
    nbytes=st.integers(0, 256),
)
def test_fuzz_buffer_specs_raise_only_codec_error(kind, shape, dtype, nbytes):
    """Hostile shapes (huge, zero, too many dims) and buffers of any size. Products that overflow
    int64 have a test of their own below."""
    header, _ = SAMPLES[kind]()
    h = json.loads(header.model_dump_json())
    h["buffers"] = [{"name": "image" if kind == "frame" else "voxels", "dtype": dtype, "shape": shape}]
    try:
        decode([topic_for(header).encode(), json.dumps(h).encode(), bytes(nbytes)])
    except CodecError as exc:
        assert exc.reason in REASONS


# --------------------------------------------------------------------------- rejection table

REASONS = {
    "too_few_parts", "bad_topic", "header_too_large", "malformed_json", "unknown_msg_type", "bad_schema_version",
    "invalid_header", "buffer_count", "buffer_size", "too_large",
}  # fmt: skip


def test_reason_table_matches_the_codec_docstring():
    import mmstream.codec

    import re

    table = re.split(r"^=+ +=+$", mmstream.codec.__doc__, flags=re.M)[2]  # the rows between the 2nd and 3rd rule
    documented = set(re.findall(r"^``(\w+)``", table, flags=re.M))
    assert documented == REASONS


def frame_json(**changes) -> dict:
    header, _ = sample_frame()
    h = json.loads(header.model_dump_json())
    h.update(changes)
    return h


def frame_parts(h: dict | bytes | None = None, buffers=None, topic=b"frame.probe-1"):
    image = sample_frame()[1][0]
    raw = json.dumps(frame_json() if h is None else h).encode() if not isinstance(h, bytes) else h
    return [topic, raw, *([image.tobytes()] if buffers is None else buffers)]


def expect(reason, parts, limits=Limits()):
    with pytest.raises(CodecError) as info:
        decode(parts, limits)
    assert type(info.value) is CodecError
    assert info.value.reason == reason, str(info.value)
    assert str(info.value)  # a human-readable message for the event
    return info.value


def test_valid_reference_message_decodes():
    """The baseline every rejection case below changes in exactly one way."""
    header, _ = sample_frame()
    assert decode(frame_parts()).header == header


@pytest.mark.parametrize("parts", [[], [b"frame.probe-1"]], ids=["none", "topic-only"])
def test_too_few_parts(parts):
    expect("too_few_parts", parts)


@pytest.mark.parametrize(
    "topic",
    [b"\xff\xfeframe", b"frame.probe-1." + b"a" * 300, b"frame.other", b"frame", b"frame.probe-10", b"metrics.probe-1", b""],
    ids=["not-utf8", "too-long", "other-stream", "no-stream", "prefix-of-other", "other-type", "empty"],
)
def test_bad_topic(topic):
    expect("bad_topic", frame_parts(topic=topic))


def test_header_too_large():
    h = frame_json(annotations={f"k{i}": float(i) for i in range(30)})
    raw = json.dumps(h).encode() + b" " * 70000  # valid JSON, padded past the limit
    expect("header_too_large", frame_parts(raw))
    expect("header_too_large", frame_parts(json.dumps(h).encode()), Limits(max_header_bytes=100))


@pytest.mark.parametrize(
    "raw",
    [b'{"msg_type": "frame", "seq":', b"\xff\xfe\x00garbage", b"hello", b"", b'{"msg_type": "fr\xe9me"}', b"{" * 5000],
    ids=["truncated", "binary", "text", "empty", "latin1", "deep-nesting"],
)
def test_malformed_json(raw):
    expect("malformed_json", frame_parts(raw))


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"frame"', b"3", b"null"], ids=["array", "string", "number", "null"])
def test_json_that_is_not_an_object_is_malformed_json(raw):
    expect("malformed_json", frame_parts(raw))


def test_unknown_msg_type():
    h = frame_json()
    del h["msg_type"]
    expect("unknown_msg_type", frame_parts(h))
    for bad in ("nope", "Frame", 3, None, ["frame"]):
        exc = expect("unknown_msg_type", frame_parts(frame_json(msg_type=bad)))
        assert "known:" in str(exc)


@pytest.mark.parametrize("version", [0, 2, "1", 1.5, None, -1])
def test_bad_schema_version(version):
    expect("bad_schema_version", frame_parts(frame_json(schema_version=version)))


def _invalid_header_cases():
    image_spec = {"name": "image", "dtype": "uint8", "shape": [48, 64]}
    return {
        "nan-spacing": (b'"spacing_mm": [NaN, 0.1]', None),
        "infinity-spacing": (b'"spacing_mm": [Infinity, 0.1]', None),
        "negative-spacing": ({"spacing_mm": [-0.1, 0.1]}, None),
        "zero-spacing": ({"spacing_mm": [0.1, 0.0]}, None),
        "one-spacing-value": ({"spacing_mm": [0.1]}, None),
        "spacing-with-unknown-source": ({"spacing_source": "unknown"}, None),
        "source-without-spacing": ({"spacing_mm": None}, None),
        "bad-spacing-source": ({"spacing_source": "guess"}, None),
        "negative-seq": ({"seq": -1}, None),
        "fractional-seq": ({"seq": 1.5}, None),
        "extra-field": ({"extra_field": 1}, None),
        "extra-nested-field": ({"imaging": {"depth_mm": 40.0, "colour": "blue"}}, None),
        "stream-id-slash": ({"stream_id": "a/b"}, b"frame.a/b"),
        "stream-id-100-chars": ({"stream_id": "a" * 100}, ("frame." + "a" * 100).encode()),
        "stream-id-empty": ({"stream_id": ""}, b"frame"),
        "two-buffers": ({"buffers": [image_spec, {**image_spec, "name": "image2"}]}, None),
        "uint16-image": ({"buffers": [{**image_spec, "dtype": "uint16"}]}, None),
        "3d-image": ({"buffers": [{**image_spec, "shape": [1, 48, 64]}]}, None),
        "buffer-not-named-image": ({"buffers": [{**image_spec, "name": "pixels"}]}, None),
        "unknown-dtype": ({"buffers": [{**image_spec, "dtype": "object"}]}, None),
        "negative-dim": ({"buffers": [{**image_spec, "shape": [-48, 64]}]}, None),
        "seq-beyond-int64": ({"seq": 2**63}, None),
        "transform-15-values": ({"transforms": {"image_to_probe": [0.0] * 15}}, None),
        "transform-nan": (b'"transforms": {"image_to_probe": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', None),
        "t-device-nan": (b'"t_device_s": NaN', None),
        "bad-side": ({"clinical": {"side": "both"}}, None),
        "nine-buffers": ({"buffers": [image_spec] * 9}, None),
    }


_CASES = _invalid_header_cases()


@pytest.mark.parametrize("case", sorted(_CASES))
def test_invalid_header(case):
    change, topic = _CASES[case]
    if isinstance(change, bytes):  # JSON tokens Python's json would not write: splice them in as text
        h = frame_json()
        key = change.split(b":")[0].strip().strip(b'"').decode()
        h.pop(key, None)
        raw = json.dumps(h).encode()
        raw = raw[:-1] + b", " + change + b"}"
    else:
        raw = json.dumps(frame_json(**change)).encode()
    expect("invalid_header", frame_parts(raw, topic=topic or b"frame.probe-1"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Control(command="ping").model_dump() | {"command": "reboot"},
        lambda: Control(command="ping").model_dump() | {"command": "set_seed"},  # set_seed needs a stream_id
        lambda: Control(command="set_roi", stream_id="s", roi=(0, 0, 1, 1)).model_dump() | {"roi": [5, 0, 1, 1]},
        lambda: Control(command="ping").model_dump() | {"seed_rc": [float("nan"), 0]},
        lambda: Control(command="set_roi", stream_id="s", roi=(0, 0, 1, 1)).model_dump() | {"roi": [0, 0, 1, 2**40]},
        lambda: Control(command="set_roi", stream_id="s", roi=(0, 0, 1, 1)).model_dump() | {"roi": [5, 0, 5, 9]},
        lambda: Control(command="set_roi", stream_id="s", roi=(0, 0, 1, 1)).model_dump() | {"roi": [0, 7, 9, 7]},
    ],
    ids=["unknown-command", "missing-stream-id", "inverted-roi", "nan-seed", "roi-beyond-int32", "empty-roi-rows",
         "empty-roi-cols"],
)
def test_invalid_control(make):
    h = make()
    raw = json.dumps(h).encode()  # Python's json writes NaN as the bare token NaN
    topic = b"control" if h.get("stream_id") is None else f"control.{h['stream_id']}".encode()
    expect("invalid_header", [topic, raw])


@pytest.mark.parametrize(
    "buffers", [[], [b"a", b"b"], [b"a", b"b", b"c"]], ids=["none", "two", "three"]
)
def test_buffer_count(buffers):
    expect("buffer_count", frame_parts(buffers=buffers))


def test_buffer_count_for_a_message_without_buffers():
    header, _ = sample_event()
    expect("buffer_count", [*encode(header), b"surplus"])


@pytest.mark.parametrize("delta", [-1, 1, "empty", "double"])
def test_buffer_size(delta):
    img = sample_frame()[1][0].tobytes()
    buf = {"empty": b"", "double": img * 2}.get(delta) if isinstance(delta, str) else None
    if buf is None:
        buf = img[:-1] if delta == -1 else img + b"\x00"
    expect("buffer_size", frame_parts(buffers=[buf]))


def test_buffer_size_counts_bytes_not_elements():
    header, (voxels,) = sample_volume()
    parts = encode(header, [voxels])
    expect("buffer_size", [parts[0], parts[1], voxels.tobytes()[: voxels.size]])  # element count, not bytes


def test_too_large_claim_fails_fast_without_allocating():
    h = frame_json(buffers=[{"name": "image", "dtype": "uint8", "shape": [100000, 100000]}])
    parts = frame_parts(h, buffers=[b"\x00" * 16])
    t0 = time.perf_counter()
    expect("too_large", parts)
    assert time.perf_counter() - t0 < 0.05


@pytest.mark.parametrize(
    "shape", [[0, 10], [10, 0], [4097, 10], [10, 4097]], ids=["zero-rows", "zero-cols", "tall", "wide"]
)
def test_too_large_frame_shape(shape):
    h = frame_json(buffers=[{"name": "image", "dtype": "uint8", "shape": shape}])
    expect("too_large", frame_parts(h, buffers=[bytes(shape[0] * shape[1])]))


def test_a_header_and_a_frame_exactly_at_the_limits_decode():
    """Limits are inclusive: with >= for >, a header of exactly max_header_bytes or a frame of max_frame_shape was refused."""
    parts = frame_parts()  # a 48 x 64 frame
    n = len(parts[1])
    assert decode(parts, Limits(max_header_bytes=n, max_frame_shape=(48, 64))).header.seq == 7
    expect("header_too_large", parts, Limits(max_header_bytes=n - 1))
    expect("too_large", parts, Limits(max_frame_shape=(47, 64)))
    expect("too_large", parts, Limits(max_frame_shape=(48, 63)))


def test_the_frame_shape_limit_is_rows_then_cols():
    """A (rows, cols) limit read as (cols, rows) refused wide frames within it and let tall ones past it."""
    wide = frame_parts()  # 48 rows x 64 cols
    assert decode(wide, Limits(max_frame_shape=(50, 70))).arrays["image"].shape == (48, 64)
    expect("too_large", wide, Limits(max_frame_shape=(70, 50)))


def test_too_large_respects_configured_limits():
    expect("too_large", frame_parts(), Limits(max_frame_shape=(32, 32)))
    expect("too_large", frame_parts(), Limits(max_elements=100))
    header, (voxels,) = sample_volume()
    expect("too_large", encode(header, [voxels]), Limits(max_elements=10))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(
    "shape", [[2**32, 2**32], [2**31, 2**33], [2**63, 2], [10**30, 2], [2**70, 0], [0, 2**31]],
    ids=["wraps-to-0", "wraps-to-0-b", "dim-over-int64", "bigint", "huge-dim-times-zero", "dim-2-31"],
)
def test_too_large_shape_whose_product_overflows_int64(shape):
    h = frame_json(buffers=[{"name": "image", "dtype": "uint8", "shape": shape}])
    expect("too_large", frame_parts(h, buffers=[b""]))


def test_a_shape_beyond_numpys_limits_is_too_large():
    header, _ = SAMPLES["metrics"]()
    h = json.loads(header.model_dump_json())
    h["buffers"] = [{"name": "histogram", "dtype": "uint8", "shape": [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]}]
    with pytest.raises(CodecError) as e:  # no elements, every dimension allowed, yet numpy cannot make it
        decode([topic_for(header).encode(), json.dumps(h).encode(), b""])
    assert e.value.reason == "too_large"


def test_decode_does_not_mutate_or_keep_state():
    parts = frame_parts()
    a, b = decode(parts), decode(parts)
    assert a.header == b.header


# --------------------------------------------------------------------------- hidden corruption / coercion


def test_encode_big_endian_array_is_rejected_or_converted():
    voxels = np.arange(6, dtype=">f4").reshape(1, 2, 3)
    header = sample_volume()[0].model_copy(update={"buffers": buffer_specs(voxels=voxels)})
    try:
        parts = encode(header, [voxels])
    except CodecError as exc:
        assert exc.reason == "buffer_size"
        return
    np.testing.assert_array_equal(decode(parts).arrays["voxels"], voxels)


@pytest.mark.parametrize("field", ["area_px", "confidence"])
def test_non_finite_float_fails_at_the_sender(field):
    h = sample_metrics()[0].model_dump()
    h["csa"][field] = float("nan")
    arrays = sample_metrics()[1]
    try:
        parts = encode(Metrics(**h), arrays)
    except (ValueError, CodecError):  # pydantic ValidationError is a ValueError: refused when built or sent
        return
    decode(parts)  # otherwise the receiver must accept what was sent


def test_non_finite_optional_float_is_refused_when_built():
    """NaN never travels as JSON null: an optional float is refused like a required one."""
    h = sample_metrics()[0].model_dump()
    h["t_device_s"] = float("nan")
    with pytest.raises(ValueError):
        Metrics(**h)


@pytest.mark.parametrize(
    "spec", [[], [{"name": "voxels", "dtype": "float32", "shape": [4, 5]}], [{"name": "x", "dtype": "float32", "shape": [1, 1, 1]}],
             [{"name": "voxels", "dtype": "float32", "shape": [0, 5, 5]}], [{"name": "voxels", "dtype": "int16", "shape": [0, 0, 0]}]],
    ids=["no-buffer", "2d", "misnamed", "no-slice", "empty"],
)  # fmt: skip
def test_volume_needs_one_3d_voxels_buffer(spec):
    h = json.loads(sample_volume()[0].model_dump_json())
    h["buffers"] = spec
    n = [math.prod(s["shape"]) * np.dtype(s["dtype"]).itemsize for s in spec]
    expect("invalid_header", [b"volume.mri-1", json.dumps(h).encode(), *(bytes(k) for k in n)])


# --------------------------------------------------------------------------- encode errors


def test_encode_and_decode_an_empty_array():
    """A zero-size buffer (e.g. a polyline of no points) encodes; numpy's memoryview of an array
    with a zero in its shape cannot be cast to bytes, which once ended ingest's thread."""
    h = sample_metrics()[0]
    empty = np.empty((0, 2), np.float32)
    h = h.model_copy(update={"buffers": buffer_specs(superficial_rc=empty)})
    d = decode(encode(h, [empty]))
    assert d.arrays["superficial_rc"].shape == (0, 2)


def test_encode_wrong_number_of_arrays():
    header, (image,) = sample_frame()
    for arrays in ([], [image, image]):
        with pytest.raises(CodecError) as info:
            encode(header, arrays)
        assert info.value.reason == "buffer_count"
    with pytest.raises(CodecError):
        encode(sample_event()[0], [image])


@pytest.mark.parametrize(
    "bad",
    [
        lambda img: img.astype(np.uint16),
        lambda img: img.astype(np.int8),
        lambda img: img.T,
        lambda img: img[:-1],
        lambda img: img.reshape(1, *img.shape),
        lambda img: img.ravel(),
    ],
    ids=["uint16", "int8", "transposed", "one-row-short", "3d", "flat"],
)
def test_encode_array_not_matching_the_header(bad):
    header, (image,) = sample_frame()
    with pytest.raises(CodecError) as info:
        encode(header, [bad(image)])
    assert info.value.reason == "buffer_size"


def test_encode_metrics_array_order_matters():
    header, (hist, contour) = sample_metrics()
    with pytest.raises(CodecError):
        encode(header, [contour, hist])


def test_wire_summaries_hold_every_result_field_but_the_polylines():
    """The analyzer builds the wire summaries from the analysis results field by field
    (``model_dump``): a field added to one model and not the other must fail here, not in the
    service. The polylines travel as arrays beside the header."""
    from mmstream.analysis import CsaResult, QualityResult, ThicknessResult

    assert set(CsaResult.model_fields) - {"contour_rc"} == set(CsaSummary.model_fields)
    assert set(ThicknessResult.model_fields) - {"superficial_rc", "deep_rc"} == set(ThicknessSummary.model_fields)
    assert set(QualityResult.model_fields) == set(QualitySummary.model_fields)
