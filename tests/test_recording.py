"""Session recording: layout, writer/reader round trip, SWMR follow, the recorder node in a running
service (record_start/stop, status, parts), hostile files and control requests."""

import json
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_graph import RANDOM_TCP, request, wait_for

from mmstream.analysis import analyze_frame
from mmstream.codec import Decoded, buffer_specs, topic_for
from mmstream.config import RecorderSection, load_config
from mmstream.errors import InputError, ReadError, RecordingError
from mmstream.messages import Event, Frame, Fused
from mmstream.nodes.analyzer import metrics_message
from mmstream.recording import layout as L
from mmstream.recording.reader import SessionReader
from mmstream.recording.recorder import Recorder
from mmstream.recording.writer import SessionWriter
from mmstream.service import Service
from mmstream_drivers.sim import SceneSpec, SimProbe

SPEC = SceneSpec(shape=(80, 96), spacing_mm=(0.5, 0.4))


def frame(sid, seq, image, **kw):
    return Frame(stream_id=sid, session_id="src-1", seq=seq, t_device_s=seq / 30, t_host_s=10.0 + seq / 30,
                 spacing_mm=(0.5, 0.4), spacing_source="config", buffers=buffer_specs(image=image), **kw)  # fmt: skip


def metrics_of(h, image, previous=None, seed=None):
    res = analyze_frame(image, h.spacing_mm, seed=seed, previous=previous)
    mh, arrays = metrics_message(h, res, {"ingest": h.t_host_s, "analyzed": h.t_host_s + 0.001})
    return res, mh, dict(zip([b.name for b in mh.buffers], arrays))


def test_round_trip_keeps_headers_pixels_metrics_drops_and_units(tmp_path):
    probe = SimProbe(SPEC, seed=1)
    path = tmp_path / "s.h5"
    w = SessionWriter(path, {"session_id": "s", "config_json": "{}"}, {"p1": SPEC.shape}, "gzip", fsync=True)
    sent, prev = [], None
    seqs = [0, 1, 2, 5, 6, 7, 9]  # gaps of 2 and 1 frames
    for seq in seqs:
        img = probe.frame(seq).image
        h = frame("p1", seq, img, annotations={"truth_x": 1.5})
        w.add_frame(h, img)
        prev, mh, arrays = metrics_of(h, img, prev, seed=(40.0, 48.0) if seq == 0 else None)
        w.add_metrics(mh, arrays)
        sent.append((h, img, mh, arrays))
    w.add_event(Event(node="ingest", level="warning", reason="rate_limited", message="x", t_host_s=1.0))
    w.add_biomarkers(json.dumps({"patient": "P1", "fat_fraction": 0.2}))
    w.close()
    assert {k: w.committed[k] for k in ("events", "fused", "biomarkers")} == {"events": 1, "fused": 0, "biomarkers": 1}

    with SessionReader(path) as r:
        s = r.stream("p1")
        assert (s.n_frames, s.n_metrics, s.dropped_frames) == (7, 7, 3)
        assert s.summary() == {"n_frames": 7, "n_metrics": 7, "dropped_frames": 3, "first_seq": 0, "last_seq": 9}
        summ = r.summary()
        assert summ["closed"] and summ["stop_wall"] and summ["rejected_messages"] == 1 and summ["n_events"] == 1
        assert list(s.index()["seq"]) == seqs and list(s.index()["gap_before"]) == [0, 0, 0, 2, 0, 0, 1]
        blocks = list(s.iter_frames(chunk=3))
        assert [len(b[1]) for b in blocks] == [3, 3, 1]
        for (h, img, mh, arrays), (h2, img2), (mh2, arrays2) in zip(sent, s.iter_frame_messages(chunk=2), s.metrics_messages()):
            assert h2 == h and np.array_equal(img2, img)
            assert mh2 == mh and arrays2.keys() == arrays.keys()
            for k in arrays:
                assert np.array_equal(arrays2[k], arrays[k]) and arrays2[k].dtype == arrays[k].dtype
        t = s.metrics_table()
        assert np.allclose(t["csa_area_mm2"], [m.csa.area_mm2 for _, _, m, _ in sent])
        assert np.allclose(t["thickness_mm"], [m.thickness.thickness_mm for _, _, m, _ in sent])
        assert np.allclose(t["stamp_analyzed"] - t["stamp_ingest"], 0.001)
        assert np.isnan(t["stamp_published"]).all() and not t["truncated"].any()
        assert r.events()[0].reason == "rate_limited" and r.biomarkers() == [{"patient": "P1", "fat_fraction": 0.2}]
        units = json.loads(s.group["index"].attrs["units"])
        assert units["t_host_s"] == "s" and units["spacing_row_mm"] == "mm"
        assert json.loads(s.group["metrics/table"].attrs["units"])["csa_area_mm2"] == "mm^2"
    out = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)  # Debian hdf5-tools
    assert out.returncode == 0 and 'DATASET "frames"' in out.stdout


@pytest.mark.parametrize("damage", ["short_array", "short_heap", "short_pixels", "corrupt_text"])
def test_rows_whose_data_did_not_reach_the_disk_are_not_counted(tmp_path, damage):
    """A writer killed mid-flush may leave a table longer than the data its rows point to (an array
    dataset, the JSON heap, the pixels). In row-checking mode (SWMR: live or crashed files) the
    counts stop at the last row whose data can all be read. Data that is there but corrupt is an
    error, not a shorter count."""
    from mmstream.recording.stream_reader import StreamReader

    path = tmp_path / "s.h5"
    _six_frames(path).close()
    with h5py.File(path, "r+") as f:
        g = next(iter(f["streams"].values()))
        if damage == "short_array":
            g["metrics/histogram"].resize(4, axis=0)
        elif damage == "short_heap":
            row = g["metrics/table"][3]
            g["metrics/json"].resize(int(row["json_offset"]) + int(row["json_n_bytes"]) - 1, axis=0)
        elif damage == "short_pixels":
            g["frames"].resize(2, axis=0)
        else:
            row = g["metrics/table"][5]
            g["metrics/json"][int(row["json_offset"])] = 0xFF  # not UTF-8
    with h5py.File(path, "r") as f:
        s = StreamReader(next(iter(f["streams"].values())))
        if damage == "corrupt_text":
            with pytest.raises(UnicodeDecodeError):
                s.n_metrics
            return
        assert (s.n_frames, s.n_metrics) == {"short_array": (6, 4), "short_heap": (6, 3), "short_pixels": (2, 6)}[damage]


def _six_frames(path, flushes=(6,)):
    """A closed one-stream file of six frames with their metrics, flushed after each count in ``flushes``."""
    probe = SimProbe(SPEC, seed=1)
    w = SessionWriter(path, {"session_id": "s", "config_json": "{}"}, {"p1": SPEC.shape}, "none", fsync=False)
    prev = None
    for seq in range(6):
        img = probe.frame(seq).image
        h = frame("p1", seq, img)
        w.add_frame(h, img)
        prev, mh, arrays = metrics_of(h, img, prev, seed=(40.0, 48.0) if seq == 0 else None)
        w.add_metrics(mh, arrays)
        w.add_event(Event(node="ingest", level="info", reason="tick", message=str(seq), t_host_s=float(seq)))
        if seq + 1 in flushes:
            w.flush()
    return w


def test_a_new_file_is_made_durable_with_its_directory_entry(tmp_path, monkeypatch):
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    w = SessionWriter(tmp_path / "s.h5", {"session_id": "s", "config_json": "{}"}, {"p1": (8, 8)}, fsync=True)
    w.close()
    assert str(tmp_path) in synced and str(tmp_path / "s.h5") in synced


def test_rows_past_the_commit_counts_are_not_counted_in_a_file_not_closed_cleanly(tmp_path):
    """A flush cut short can leave tables longer than the summaries' counts, their extra rows
    complete-looking or zero (HDF5 wrote the new extent, not the rows): such rows are not counted,
    in layout 2. A layout 1 file (no commit counts) is still read, by the readable prefix."""
    path = tmp_path / "s.h5"
    w = _six_frames(path, flushes=(4, 6))
    w.close()
    with h5py.File(path, "r+") as f:  # as a writer that failed inside the second flush left it
        g = f["streams/p1"]
        g["summary"][0] = (4, 4, 0, 0, 3)
        summ = f["session/summary"][0]
        summ["closed"], summ["stop_wall"], summ["n_events"] = False, b"", 4
        f["session/summary"][0] = summ
        g["index"][5] = np.zeros((), g["index"].dtype)  # a zero row: seq 0, no header
    with SessionReader(path) as r:
        s = r.stream("p1")
        assert (s.n_frames, s.n_metrics, len(r.events())) == (4, 4, 4)
        assert s.index()["seq"].tolist() == [0, 1, 2, 3] and len(r.event_table(2)) == 2
    with h5py.File(path, "r+") as f:
        f["session"].attrs["layout_version"] = 1
    with SessionReader(path) as r:
        assert (r.stream("p1").n_frames, r.stream("p1").n_metrics, len(r.events())) == (6, 6, 6)


def test_a_flush_with_nothing_to_commit_writes_nothing(tmp_path):
    path = tmp_path / "s.h5"
    w = _six_frames(path)
    flushed = w.file["session/summary"][0]["t_wall_flushed"]
    time.sleep(0.002)  # a later wall clock would show in t_wall_flushed
    assert w.flush() == w.committed and w.file["session/summary"][0]["t_wall_flushed"] == flushed
    w.close()
    with SessionReader(path) as r:
        assert r.summary()["closed"] and r.stream("p1").n_frames == 6


def test_absent_metrics_are_nan_and_long_contours_are_cut_and_flagged(tmp_path):
    w = SessionWriter(tmp_path / "s.h5", {}, {"p1": (64, 40)}, fsync=False)
    img = np.zeros((64, 40), np.uint8)
    h = frame("p1", 0, img)
    w.add_frame(h, img)
    _, mh, arrays = metrics_of(h, img)
    long_contour = np.arange(2 * (L.CONTOUR_MAX_POINTS + 5), dtype=np.float32).reshape(-1, 2)
    w.add_metrics(mh, {**arrays, "contour_rc": long_contour})
    with pytest.raises(InputError):
        w.add_metrics(mh.model_copy(update={"stream_id": "other"}), {})
    with pytest.raises(InputError):
        w.add_frame(frame("p1", 1, np.zeros((65, 40), np.uint8)), np.zeros((65, 40), np.uint8))
    w.close()
    with SessionReader(tmp_path / "s.h5") as r:
        row = r.stream("p1").metrics_table()[0]
        assert not row["has_csa"] and np.isnan(row["csa_area_mm2"]) and row["truncated"]
        assert row["contour_n"] == L.CONTOUR_MAX_POINTS


def test_reader_follows_a_file_being_written(tmp_path):
    path = tmp_path / "live.h5"
    w = SessionWriter(path, {}, {"p1": (16, 16)}, fsync=False)
    r = SessionReader(path)
    assert r.stream("p1").n_frames == 0 and not r.summary()["closed"]
    for batch in range(3):
        for i in range(5):
            seq = batch * 5 + i
            w.add_frame(frame("p1", seq, np.full((16, 16), seq, np.uint8)), np.full((16, 16), seq, np.uint8))
        w.flush()
        r.refresh()
        s = r.stream("p1")
        assert s.n_frames == 5 * (batch + 1)
        assert [int(f[0, 0]) for _, fr in s.iter_frames(chunk=4) for f in fr] == list(range(5 * (batch + 1)))
    w.add_frame(frame("p1", 15, np.zeros((16, 16), np.uint8)), np.zeros((16, 16), np.uint8))
    r.refresh()
    assert r.stream("p1").n_frames == 15  # pixels written, index row not flushed: not yet committed
    w.close()
    r.refresh()
    assert r.stream("p1").n_frames == 16 and r.summary()["closed"]
    r.close()


@pytest.mark.parametrize("content", [b"", b"not hdf5 at all" * 100])
def test_reader_refuses_files_that_are_not_sessions(tmp_path, content):
    p = tmp_path / "bad.h5"
    p.write_bytes(content)
    with pytest.raises(ReadError) as e:
        SessionReader(p)
    assert e.value.reason == "unreadable"


def test_reader_refuses_foreign_hdf5_and_other_layout_versions(tmp_path):
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ReadError) as e:
        SessionReader(tmp_path / "foreign.h5")
    assert e.value.reason == "not_a_session"
    SessionWriter(tmp_path / "v.h5", {}, {}, fsync=False).close()
    with h5py.File(tmp_path / "v.h5", "r+") as f:
        f["session"].attrs["layout_version"] = 99
    with pytest.raises(ReadError) as e:
        SessionReader(tmp_path / "v.h5")
    assert e.value.reason == "layout_version"
    with pytest.raises(ReadError):
        SessionReader(tmp_path / "missing.h5")


def test_schema_file_describes_the_layout():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "schemas" / "session-layout.json").read_text()
    d = json.loads(text)
    assert d["layout_version"] == L.LAYOUT_VERSION
    assert [c["name"] for c in d["streams/<stream_id>"]["index"]["columns"]] == list(L.dtype_of(L.FRAME_INDEX).names)


def decoded(h, *arrays):
    return Decoded(topic_for(h), h, {b.name: a for b, a in zip(h.buffers, arrays)})


def test_recorder_node_waits_for_configured_streams_then_rolls_parts(tmp_path):
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=5.0), "sess-1", expected_streams=("a", "b"))
    img_a, img_b = np.full((20, 30), 1, np.uint8), np.full((24, 30), 2, np.uint8)
    assert rec.process("frames", decoded(frame("a", 0, img_a), img_a)) == []  # not recording: ignored
    rec.start_recording()
    rec.process("frames", decoded(frame("a", 1, img_a), img_a))
    assert rec.recording_status()["state"] == "armed"  # b not seen yet: held
    rec.process("frames", decoded(frame("b", 0, img_b), img_b))
    st = rec.recording_status()
    assert st["state"] == "recording" and st["path"].endswith(".h5")
    rec.process("bus", decoded(Event(node="ingest", level="warning", reason="x", message="m", t_host_s=1.0)))
    fused = Fused(stream_id="a", session_id="src-1", parent=("a", 1), site="tibialis_anterior")
    rec.process("bus", decoded(fused))
    img_a2 = np.full((40, 30), 3, np.uint8)  # depth changed: new shape, next part once discover_s passed
    out = rec.process("frames", decoded(frame("a", 2, img_a2), img_a2))
    assert rec.recording_status()["waiting"] == 1 and "recording_new_part" not in [o.header.reason for o in out]
    out = rec.tick(time.monotonic() + 5.0)
    assert any(o.header.reason == "recording_new_part" for o in out) and rec.recording_status()["waiting"] == 0
    rec.process("frames", decoded(frame("c", 0, img_b), img_b))  # a new stream: third part (written on stop)
    st = rec.stop_recording()
    assert st["state"] == "idle" and len(st["files"]) == 3 and st["files"][1].endswith(".part2.h5")
    with SessionReader(st["files"][0]) as r:
        assert sorted(r.streams) == ["a", "b"] and r.stream("a").n_frames == 1 and r.stream("b").n_frames == 1
        assert r.events()[0].reason == "x" and r.fused()[0] == fused
        assert r.attrs["part"] == 1 and r.attrs["session_id"] == "sess-1" and r.attrs["software_version"]
    with SessionReader(st["files"][1]) as r:
        assert r.stream("a").shape == (40, 30) and r.attrs["previous_part"] == st["files"][0]
    with SessionReader(st["files"][2]) as r:
        assert sorted(r.streams) == ["a", "b", "c"] and r.stream("c").n_frames == 1
    assert rec.recording_status()["frames"] == 4


def test_recorder_stops_when_the_frame_shape_keeps_changing(tmp_path):
    """Two sources on one stream id alternate shapes: each frame would open a file part. Beyond
    ``max_parts`` the recording stops (error event, status); the parts written stay readable and
    a new recording can start."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0, max_parts=3), "sess")
    rec.start_recording()
    out = []
    for seq in range(6):
        img = np.full((20 + 4 * (seq % 2), 30), seq, np.uint8)
        out += rec.process("frames", decoded(frame("a", seq, img), img))
    st = rec.recording_status()
    assert st["state"] == "failed" and st["last_error"]["reason"] == "too_many_parts" and len(st["files"]) == 3
    assert "recording_too_many_parts" in [o.header.reason for o in out] and rec.counters["error_too_many_parts"] == 1
    for k, path in enumerate(st["files"]):
        with SessionReader(path) as r:
            assert r.stream("a").index()["seq"].tolist() == [k] and r.attrs["part"] == k + 1
    assert len(list(tmp_path.glob("*.h5"))) == 3
    rec.start_recording()
    assert rec.recording_status()["state"] == "armed"


def test_a_stream_whose_shape_keeps_changing_stops_being_recorded_and_the_others_go_on(tmp_path):
    """One stream with a new frame shape on every frame used to open a part per frame and, at
    ``max_parts``, end the recording of every stream (too_many_parts). It now stops being recorded
    after ``max_stream_parts_per_minute`` new parts (event, counters, status); the steady stream
    is recorded whole."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0, max_parts=10, max_stream_parts_per_minute=3),
                   "sess")  # fmt: skip
    rec.start_recording()
    out = []
    steady = np.full((20, 30), 1, np.uint8)
    for seq in range(30):
        flip = np.full((20, 16 + seq), 2, np.uint8)
        out += rec.process("frames", decoded(frame("a", seq, steady), steady))
        out += rec.process("frames", decoded(frame("e", seq, flip), flip))
    st = rec.stop_recording()
    reasons = [o.header.reason for o in out]
    assert st["last_error"] is None and st["not_recorded"] == ["e"] and len(st["files"]) == 4  # a; a, e; then 2 for e
    assert reasons.count("stream_not_recorded") == 1 and "recording_too_many_parts" not in reasons
    assert rec.counters["streams_not_recorded"] == 1 and rec.counters["frames_not_recorded"] == 30 - 3
    a_seqs, e_seqs = [], []
    for path in st["files"]:
        with SessionReader(path) as r:
            a_seqs += r.stream("a").index()["seq"].tolist()
            e_seqs += r.stream("e").index()["seq"].tolist() if "e" in r.streams else []
    assert a_seqs == list(range(30)) and e_seqs == [0, 1, 2]


def test_a_probe_whose_depth_is_stepped_is_recorded_whole(tmp_path):
    """13 depth steps within seconds (a person turning the knob) were over the old limit of 12 new
    parts a minute: the probe was not recorded for the rest of the recording. The default allows it."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess")
    rec.start_recording()
    out, seq = [], 0
    for depth in range(14):  # the first depth, then 13 steps
        img = np.full((20 + 2 * depth, 30), depth, np.uint8)
        for _ in range(5):
            out += rec.process("frames", decoded(frame("a", seq, img), img))
            seq += 1
    st = rec.stop_recording()
    assert st["not_recorded"] == [] and "stream_not_recorded" not in [o.header.reason for o in out]
    assert len(st["files"]) == 14 and st["frames"] == 70 and "frames_not_recorded" not in rec.counters


def test_a_stream_over_the_part_limit_is_recorded_again_once_its_shape_is_steady(tmp_path, monkeypatch):
    """The limit is a rolling window: a stream refused for changing shape too often (while it keeps
    changing it stays refused) is recorded again, announced, once it needed fewer new parts than
    ``max_stream_parts_per_minute`` in the last window (it used to stay out for good)."""
    from mmstream.recording import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "PART_RATE_WINDOW_S", 0.5)
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0, max_stream_parts_per_minute=3), "sess")
    rec.start_recording()
    out, seq = [], 0

    def send(img):
        nonlocal seq
        out.extend(rec.process("frames", decoded(frame("a", seq, img), img)))
        seq += 1

    for k in range(5):  # parts 1 (the first), then 3 new: allowed; the 4th new one: refused
        send(np.full((20 + 2 * k, 30), k, np.uint8))
    assert rec.recording_status()["not_recorded"] == ["a"] and len(rec.recording_status()["files"]) == 4
    t_end = time.monotonic() + 0.7
    while time.monotonic() < t_end:  # still changing on every frame: stays refused past the window
        send(np.full((20 + 2 * (seq % 2), 30), seq, np.uint8))
        time.sleep(0.01)
    assert rec.recording_status()["not_recorded"] == ["a"]
    assert "stream_recorded_again" not in [o.header.reason for o in out]
    steady = np.full((60, 30), 9, np.uint8)
    first_steady = seq
    wait_for(lambda: send(steady) or not rec.recording_status()["not_recorded"], timeout_s=5.0, what="recorded again")
    for _ in range(3):
        send(steady)
    st = rec.stop_recording()
    assert [o.header.reason for o in out].count("stream_recorded_again") == 1
    assert rec.counters["streams_recorded_again"] == 1
    with SessionReader(st["files"][-1]) as r:
        seqs = r.stream("a").index()["seq"].tolist()
    assert seqs[-4:] == list(range(seq - 4, seq)) and seqs[0] >= first_steady and r.stream("a").shape == (60, 30)


def test_a_frame_waiting_for_a_new_part_waits_no_longer_than_flush_interval(tmp_path):
    """What waits for the next part is in memory only: with ``discover_s`` 5 s a SIGKILL lost the
    seconds of a stream whose depth had just changed. It waits at most ``flush_interval_s``, and the
    new part is flushed as it opens: on disk within about ``flush_interval_s``, as promised."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=5.0, flush_interval_s=0.25), "sess",
                   expected_streams=("a",))  # fmt: skip
    rec.start_recording()
    img, deeper = np.full((20, 30), 1, np.uint8), np.full((40, 30), 2, np.uint8)
    rec.process("frames", decoded(frame("a", 0, img), img))
    t0 = time.monotonic()
    rec.process("frames", decoded(frame("a", 1, deeper), deeper))  # depth changed: waits for the next part

    def on_disk():
        rec.tick(time.monotonic())
        files = rec.recording_status()["files"]
        if len(files) < 2:
            return False
        with SessionReader(files[1]) as r:  # the part still open for writing (SWMR read)
            return r.stream("a").committed_frames == 1

    wait_for(on_disk, timeout_s=3.0, what="the waiting frame on disk")
    assert time.monotonic() - t0 < 0.25 + 0.5
    rec.stop_recording()


def test_streams_that_start_together_share_one_new_part(tmp_path):
    """A frame of a new stream waits ``discover_s`` for others before the next part opens (with its
    metrics): 30 new streams make one part, not 30 (an unknown-stream flood made the recorder open
    a part per stream, 20 s in which the metrics of the service piled up)."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.5), "sess", expected_streams=("a",))
    rec.start_recording()
    img = SimProbe(SPEC, seed=1).frame(0).image
    rec.process("frames", decoded(frame("a", 0, img), img))
    t0 = time.monotonic()
    for k in range(30):
        h = frame(f"new{k}", 0, img)
        rec.process("frames", decoded(h, img))
        _, mh, arrays = metrics_of(h, img)
        rec.process("bus", decoded(mh, *arrays.values()))
    rec.process("frames", decoded(frame("a", 1, img), img))  # the others go on in the current part
    assert rec.recording_status()["waiting"] == 60 and len(rec.recording_status()["files"]) == 1
    assert rec.tick(t0 + 0.1) == []  # within discover_s: still waiting
    out = rec.tick(t0 + 0.6)
    assert [o.header.reason for o in out] == ["recording_new_part", "recording_started"]
    st = rec.stop_recording()
    assert len(st["files"]) == 2 and st["frames"] == 32 and "unknown_stream" not in rec.counters
    with SessionReader(st["files"][0]) as r:
        assert r.stream("a").n_frames == 2
    with SessionReader(st["files"][1]) as r:
        assert len(r.streams) == 31 and all(r.stream(f"new{k}").n_metrics == 1 for k in range(30))


def test_an_unforeseen_error_creating_the_file_ends_the_recording_once(tmp_path, monkeypatch):
    """Any error while a file part is created (here the compressor's module failing to import)
    ends the recording with an event; it used to escape, leave a damaged part and retry with a new
    part for every frame (1000 damaged files in 4 s, then 'two sources on one stream?')."""
    from mmstream.recording import layout

    def broken(compression):
        raise ImportError("No module named 'hdf5plugin'")

    monkeypatch.setattr(layout, "frame_filters", broken)
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess")
    rec.start_recording()
    out = []
    img = np.zeros((20, 30), np.uint8)
    for seq in range(5):
        out += rec.process("frames", decoded(frame("a", seq, img), img))
    st = rec.recording_status()
    assert st["state"] == "failed" and "ImportError: No module named 'hdf5plugin'" in st["last_error"]["message"]
    assert [o.header.reason for o in out].count(f"recording_{st['last_error']['reason']}") == 1
    assert list(tmp_path.iterdir()) == []  # no damaged part left behind
    assert rec.counters["not_recording"] == 4


def test_an_unforeseen_error_creating_a_later_part_ends_the_recording_once(tmp_path, monkeypatch):
    """The same for the next part (a new stream): it escaped every frame's processing and the
    recording ended later with a wrong cause."""
    from mmstream.recording import layout

    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess")
    rec.start_recording()
    img = np.zeros((20, 30), np.uint8)
    rec.process("frames", decoded(frame("a", 0, img), img))
    monkeypatch.setattr(layout, "frame_filters", lambda compression: (_ for _ in ()).throw(ImportError("gone")))
    out = []
    for seq in range(1, 4):
        out += rec.process("frames", decoded(frame("b", seq, img), img))  # a new stream: the next part
    st = rec.recording_status()
    assert st["state"] == "failed" and "ImportError: gone" in st["last_error"]["message"] and st["frames"] == 1
    assert len(st["files"]) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [Path(st["files"][0]).name]
    with SessionReader(st["files"][0]) as r:
        assert r.stream("a").n_frames == 1


def test_blosc_frames_are_read_in_a_fresh_process(tmp_path):
    """The readers register the blosc filter themselves (only the writer imported hdf5plugin: a
    clean blosc recording read as '10 frames committed, 0 readable (file damaged)'); without the
    package the file is refused as missing_plugin, not called damaged."""
    import sys

    pytest.importorskip("hdf5plugin", reason="the blosc extra is not installed")
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0, compression="blosc-lz4"), "sess")
    rec.start_recording()
    img = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    for seq in range(10):
        rec.process("frames", decoded(frame("a", seq, img), img))
    (path,) = rec.stop_recording()["files"]
    read = "import sys, json; from mmstream.recording.inspect import summarize; print(json.dumps(summarize(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", read, path], capture_output=True, text=True, timeout=120)
    summary = json.loads(out.stdout)
    assert summary["streams"]["a"]["frames"] == 10 and summary["streams"]["a"]["frames_committed"] == 10, out.stderr
    blocked = ("import sys; sys.modules['hdf5plugin'] = None; from mmstream.cli import main; "
               "sys.exit(main(['inspect', sys.argv[1]]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", blocked, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "missing_plugin" in out.stderr and "mmstream[blosc]" in out.stderr, out.stderr


def test_recorder_refuses_missing_directory_and_reports_it(tmp_path):
    rec = Recorder(RecorderSection(directory=tmp_path / "nope"), "s")
    with pytest.raises(RecordingError) as e:
        rec.start_recording()
    assert e.value.reason == "no_directory"
    st = rec.recording_status()
    assert st["state"] == "idle" and st["last_error"]["reason"] == "no_directory"
    assert [o.header.reason for o in rec.tick(time.monotonic())] == ["recording_no_directory"]
    (tmp_path / "afile").write_text("x")
    rec2 = Recorder(RecorderSection(directory=tmp_path / "afile"), "s")
    with pytest.raises(RecordingError):
        rec2.start_recording()


def test_recorder_keeps_every_held_frame_when_the_shape_changes_while_armed(tmp_path):
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=5.0), "sess", expected_streams=("a", "b"))
    rec.start_recording()
    shapes = [(20, 30)] * 5 + [(40, 30)] * 5  # the depth changes while the recording waits for b
    for seq, shape in enumerate(shapes):
        img = np.full(shape, seq, np.uint8)
        rec.process("frames", decoded(frame("a", seq, img), img))
    img_b = np.full((10, 10), 1, np.uint8)
    rec.process("frames", decoded(frame("b", 0, img_b), img_b))
    st = rec.stop_recording()
    assert len(st["files"]) == 2 and st["frames"] == 11 and "new_stream_or_shape" not in rec.counters
    for path, shape, seqs in zip(st["files"], ((20, 30), (40, 30)), (range(5), range(5, 10))):
        with SessionReader(path) as r:
            a = r.stream("a")
            assert a.shape == shape and a.index()["seq"].tolist() == list(seqs) and r.summary()["lost_frames"] == 0


def test_recorder_waits_for_the_configured_streams_from_the_first_frame(tmp_path):
    """``discover_s`` counts from the first frame, not from arming: sources that connect late after
    an armed start still land in one file; a configured stream that never comes is waited for
    ``discover_s``, then left out."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.2), "sess", expected_streams=("a", "b"))
    rec.start_recording()
    time.sleep(0.3)  # the sources are still connecting (a real wait: the timer under test)
    img = np.full((20, 30), 1, np.uint8)
    rec.process("frames", decoded(frame("a", 0, img), img))
    assert rec.recording_status()["state"] == "armed"
    rec.process("frames", decoded(frame("b", 0, img), img))
    st = rec.stop_recording()
    assert len(st["files"]) == 1 and st["frames"] == 2
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.2), "sess-2", expected_streams=("a", "b"))
    rec.start_recording()
    rec.process("frames", decoded(frame("a", 1, img), img))
    assert rec.tick(time.monotonic()) == [] and rec.recording_status()["state"] == "armed"
    time.sleep(0.3)
    assert [o.header.reason for o in rec.tick(time.monotonic())] == ["recording_started"]
    with SessionReader(rec.stop_recording()["files"][0]) as r:
        assert r.streams == ["a"]


def test_a_new_recording_holds_the_streams_sending_now_with_their_shapes_now(tmp_path):
    """A long-running service: a stream gone since the last recording gets no empty group in the
    next one (every file used to carry every stream ever seen), and a depth changed between
    recordings does not open a second part at once."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess")
    small, deep = np.full((20, 30), 1, np.uint8), np.full((40, 30), 2, np.uint8)
    rec.start_recording()
    for seq, sid in enumerate(("a", "gone")):
        rec.process("frames", decoded(frame(sid, seq, small), small))
    first = rec.stop_recording()["files"]
    rec.process("frames", decoded(frame("a", 5, deep), deep))  # not recording: the operator changes depth
    rec.start_recording()
    for seq in (6, 7):
        rec.process("frames", decoded(frame("a", seq, deep), deep))
    st = rec.stop_recording()
    assert len(st["files"]) == 1 and st["frames"] == 2
    with SessionReader(first[-1]) as r:
        assert sorted(r.streams) == ["a", "gone"]
    with SessionReader(st["files"][0]) as r:
        assert r.streams == ["a"] and r.stream("a").shape == (40, 30) and r.stream("a").n_frames == 2


def test_recorder_holds_a_bounded_number_of_messages_before_the_first_frame(tmp_path, monkeypatch):
    import mmstream.recording.recorder as R

    monkeypatch.setattr(R, "HELD_MAX", 10)
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess", expected_streams=("a",))
    rec.start_recording()
    for k in range(25):  # e.g. rejection events of a client spamming bad frames
        rec.process("bus", decoded(Event(node="ingest", level="warning", reason=f"r{k}", message="m", t_host_s=1.0)))
    assert rec.counters["held_dropped"] == 15
    seen = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess-2", expected_streams=("a",))
    img0 = np.full((20, 30), 1, np.uint8)
    seen.process("frames", decoded(frame("a", 0, img0), img0))  # a frame before recording: its shape is known
    seen.start_recording()
    for k in range(25):  # still bounded while no frame of this recording has come
        seen.process("bus", decoded(Event(node="ingest", level="warning", reason=f"r{k}", message="m", t_host_s=1.0)))
    assert seen.counters["held_dropped"] == 15 and seen.recording_status()["state"] == "armed"
    img = np.full((20, 30), 1, np.uint8)
    rec.process("frames", decoded(frame("a", 0, img), img))
    with SessionReader(rec.stop_recording()["files"][0]) as r:
        assert [e.reason for e in r.events()][:10] == [f"r{k}" for k in range(15, 25)]  # the newest kept


def test_recorder_counts_drops_across_parts_but_not_across_a_source_restart(tmp_path):
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess", expected_streams=("a",))
    rec.start_recording()
    small, big = np.zeros((20, 30), np.uint8), np.zeros((40, 30), np.uint8)
    for seq in (0, 1, 2, 5):  # 2 dropped
        rec.process("frames", decoded(frame("a", seq, small), small))
    for seq in (20, 21):  # 14 dropped, then a new shape: the next part
        rec.process("frames", decoded(frame("a", seq, big), big))
    rec.tick(time.monotonic() + 10)
    assert rec.recording_status()["dropped_frames"] == 16
    for seq in (0, 1):  # the source restarted: a new session numbers from 0, nothing dropped
        h = frame("a", seq, big).model_copy(update={"session_id": "src-2"})
        rec.process("frames", decoded(h, big))
    st = rec.stop_recording()
    assert st["dropped_frames"] == 16
    with SessionReader(st["files"][1]) as r:
        assert r.stream("a").index()["gap_before"].tolist() == [14, 0, 0, 0] and r.summary()["dropped_frames"] == 14


def test_record_stop_while_armed_in_a_vanished_directory_fails_cleanly(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    rec = Recorder(RecorderSection(directory=d, discover_s=5.0), "sess", expected_streams=("a", "b"))
    rec.start_recording()
    img = np.full((20, 30), 1, np.uint8)
    rec.process("frames", decoded(frame("a", 0, img), img))
    d.rmdir()
    st = rec.stop_recording()  # no exception: the control endpoint must answer
    assert st["state"] == "failed" and st["last_error"]["reason"] == "no_directory"


def test_service_records_on_command_and_reports_state(tmp_path):
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, recorder={"directory": str(tmp_path)},
                      sources=[{"driver": "sim", "stream_id": "p1", "fps": 40}],
                      streams={"p1": {"clinical": {"site": "vastus_lateralis", "side": "right"}}})  # fmt: skip
    with Service(cfg) as svc:
        ep = svc.graph.endpoints["control"]
        wait_for(lambda: svc.graph.ingest.status()["streams"].get("p1", {}).get("accepted", 0) > 3, what="frames")
        assert request(ep, command="status").data["recording"]["state"] == "idle"
        files = []
        for _ in range(2):  # each start is a new file
            rep = request(ep, command="record_start")
            assert rep.ok and rep.data["recording"]
            wait_for(lambda: request(ep, command="status").data["recording"]["frames"] >= 10, what="recorded frames")
            st = request(ep, command="status").data["recording"]
            assert st["state"] == "recording" and st["path"].startswith(str(tmp_path))
            rep = request(ep, command="record_stop")
            assert rep.ok and rep.data["state"] == "idle"
            files += rep.data["files"]
        assert len(set(files)) == 2
    for p in files:
        with SessionReader(p) as r:
            s = r.stream("p1")
            seq = s.index()["seq"]
            assert s.n_frames >= 10 and np.all(np.diff(seq) == 1 + s.index()["gap_before"][1:])
            m_seq = set(s.metrics_table()["seq"].tolist())  # metrics of frames just before the start are kept
            assert s.n_metrics > 0 and all(q in set(seq.tolist()) or q < seq[0] for q in m_seq)
            assert r.summary()["closed"] and json.loads(r.file["session"].attrs["config_json"])["recorder"]
            assert "recording_started" in [e.reason for e in r.events()]
    # the context set on the service is the metrics' (the frames hold the source's, none): the report shows it
    from mmstream.recording.report import build_report

    page = build_report(files[0], tmp_path / "r.html").read_text()
    assert "vastus_lateralis / right" in page


def test_record_commands_without_recorder_and_enabled_recorder_with_bad_directory(tmp_path):
    from mmstream.graph import Graph

    g = Graph(load_config(None, endpoints=RANDOM_TCP)).start()
    try:
        rep = request(g.endpoints["control"], command="record_start")
        assert not rep.ok and rep.reason == "unsupported_command"
    finally:
        g.stop()
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False},
                      recorder={"enabled": True, "directory": str(tmp_path / "missing")})  # fmt: skip
    with Service(cfg) as svc:
        st = request(svc.graph.endpoints["control"], command="status").data["recording"]
        assert st["state"] == "idle" and st["last_error"]["reason"] == "no_directory"
        rep = request(svc.graph.endpoints["control"], command="record_start")
        assert not rep.ok and rep.reason == "no_directory" and "does not exist" in rep.message


def test_demo_records_with_record_option(tmp_path):
    import shutil
    import sys

    cfg = tmp_path / "demo.toml"
    cfg.write_text('[endpoints]\ningest = "tcp://127.0.0.1:*"\nmetrics = "tcp://127.0.0.1:*"\n'
                   'control = "tcp://127.0.0.1:*"\n[web]\nenabled = false\n')  # fmt: skip
    exe = shutil.which("mmstream") or sys.exit("mmstream not installed")
    out = subprocess.run([exe, "demo", "--config", str(cfg), "--duration", "3", "--record", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.glob("*.h5")
    assert f"recorded ['{path}']" in out.stdout
    with SessionReader(path) as r:
        assert r.summary()["closed"] and r.stream("sim").n_frames > 10 and r.stream("sim").n_metrics > 0
    missing = subprocess.run([exe, "demo", "--config", str(cfg), "--duration", "1", "--record", str(tmp_path / "no")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 1 and missing.stdout == ""  # refused before it runs unrecorded
    assert missing.stderr.startswith(f"mmstream demo: error: recording directory {tmp_path / 'no'} does not exist")


def test_an_unknown_stream_flood_opens_one_part_and_costs_a_recorded_stream_nothing(tmp_path, sim_probe):
    """A peer sends 3000 frames, each of a new stream id, while a probe streams: ingest accepts 63
    (``max_streams``), refuses the rest (an event each). The recorder used to open a part per
    accepted stream (63 parts, ~20 s stuck) while the events filled its tap, and lost half the
    probe's metrics unseen; now the new streams share a part, nothing is lost, and what the
    recorder's taps could not queue would be counted (``tap_drops``)."""
    from mmstream.source import FrameSender
    from mmstream.transport import make_socket

    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, analyzer={"every_frame": True},
                      recorder={"enabled": True, "directory": str(tmp_path), "fsync": False})  # fmt: skip
    n_probe, n_flood = 60, 3000
    with Service(cfg) as svc:
        ep = svc.graph.endpoints
        status = lambda: svc.graph.status()["nodes"]  # noqa: E731
        with FrameSender(ep["ingest"], "probe") as probe, make_socket("push", ep["ingest"], bind=False, hwm=n_flood) as peer:
            probe.send(sim_probe.frame(0).to_source())
            wait_for(lambda: svc.recorder.recording_status()["frames"] >= 1, 15, "the probe recorded")
            img = np.zeros((64, 64), np.uint8)
            for k in range(n_flood):
                peer.send(encode_frame(f"s{k}", img), timeout_ms=5000)
            for i in range(1, n_probe):
                probe.send(sim_probe.frame(i).to_source())
            wait_for(lambda: status()["ingest"]["rejected"].get("too_many_streams", 0) == n_flood - 63, 60, "the flood")
            wait_for(lambda: svc.graph.publisher.telemetry.frames["probe"] == n_probe, 60, "the probe's metrics")
            published = status()["publisher"]["counters"]["metrics"]
            wait_for(lambda: svc.recorder.counters["metrics"] == published, 30, "every metrics message recorded")
        st = request(ep["control"], command="record_stop").data
    assert st["tap_drops"] == {"frames": 0, "metrics": 0, "events": 0} and st["last_error"] is None
    assert len(st["files"]) <= 16  # the 63 new streams share parts, one per wait for a new part (63 parts before)
    frames = metrics = 0
    for path in st["files"]:
        with SessionReader(path) as r:
            frames += r.stream("probe").n_frames
            metrics += r.stream("probe").n_metrics
    assert (frames, metrics) == (n_probe, n_probe)


def encode_frame(stream_id, image):
    from mmstream.codec import encode

    return encode(Frame(stream_id=stream_id, session_id=stream_id, seq=0, buffers=buffer_specs(image=image)), [image])
