"""Replay driver: recorded headers kept, pacing modes, real sockets, record -> replay -> record,
and flat memory on a multi-gigabyte session file."""

import json
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from recorded_sessions import CLINICAL, GAP_SEQ, SPEC
from recorded_sessions import N_FRAMES as N
from recorded_sessions import session  # noqa: F401 (fixture)
from recorded_sessions import write_session, write_sparse_session
from test_graph import RANDOM_TCP, wait_for

import mmstream_drivers
from mmstream.codec import Decoded, buffer_specs, decode, topic_for
from mmstream.config import RecorderSection, load_config
from mmstream.errors import ConfigError, InputError, ReadError
from mmstream.messages import Frame
from mmstream.recording import layout as L
from mmstream.recording.reader import SessionReader
from mmstream.recording.recorder import Recorder
from mmstream.service import Service
from mmstream.source import FrameSender, pump
from mmstream.transport import make_socket
from mmstream_drivers.replay import Replayer, ReplaySource
from mmstream_drivers.sim import SimProbe

def test_replayed_frames_keep_every_recorded_field(session):
    with SessionReader(session) as r:
        recorded = {s: (r.stream(s).frame_headers(), r.stream(s).frames()) for s in r.streams}
    with Replayer(session, mode="fast") as rp:
        got = list(rp)
    assert len(got) == 2 * N
    t = [f.t_host_s for f in got]
    assert t == sorted(t)  # the two streams merged in recorded order
    for sid, (headers, images) in recorded.items():
        mine = [f.frame for f in got if f.stream_id == sid]
        assert [f.seq for f in mine] == [h.seq for h in headers] == [*range(GAP_SEQ), *range(GAP_SEQ + 1, N + 1)]
        for f, h, img in zip(mine, headers, images):
            assert (f.t_device_s, f.t_wall, f.spacing_mm, f.spacing_source) == (h.t_device_s, h.t_wall, h.spacing_mm, h.spacing_source)
            assert (f.imaging, f.clinical, f.annotations, f.transforms) == (h.imaging, h.clinical, h.annotations, h.transforms)
            np.testing.assert_array_equal(f.image, img)
    assert got[0].frame.clinical == CLINICAL


def test_realtime_keeps_the_recorded_spacing_scaled_by_speed(session):
    with Replayer(session, streams=["probe0"], mode="realtime", speed=4.0) as rp:
        t_out, t_rec = [], []
        for f in rp:
            t_out.append(time.monotonic())
            t_rec.append(f.t_host_s)
    due = (np.array(t_rec) - t_rec[0]) / 4.0
    late = np.array(t_out) - t_out[0] - due
    assert late.min() > -0.002  # never early
    assert np.median(late) < 0.02 and late[-1] < 0.1  # lateness does not accumulate
    assert t_out[-1] - t_out[0] == pytest.approx(due[-1], abs=0.1)


def test_step_mode_sends_one_frame_per_request(session):
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
    try:
        asked = []

        def advance():
            asked.append(1)
            return len(asked) <= 3  # three frames, then the user stops

        with Replayer(session, streams=["probe1"], mode="step") as rp:
            n = rp.send(pull.last_endpoint, advance=advance)
        assert n == 3 and len(asked) == 4
        got = [decode(pull.recv(timeout_ms=2000)).header for _ in range(3)]
        assert [h.seq for h in got] == [0, 1, 2] and {h.stream_id for h in got} == {"probe1"}
        with pytest.raises(InputError):
            Replayer(session, mode="step").send(pull.last_endpoint)
    finally:
        pull.close()


def test_send_keeps_seq_and_stream_with_a_new_session_id(session):
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
    try:
        with Replayer(session, mode="fast") as rp:
            assert rp.send(pull.last_endpoint) == 2 * N
        got = [decode(pull.recv(timeout_ms=2000)) for _ in range(2 * N)]
        by = {s: [m.header for m in got if m.header.stream_id == s] for s in ("probe0", "probe1")}
        assert [h.seq for h in by["probe0"]] == [*range(GAP_SEQ), *range(GAP_SEQ + 1, N + 1)]
        with SessionReader(session) as r:
            assert all(h.session_id != "probe0-s" for h in by["probe0"])  # a replay is a new session
            np.testing.assert_array_equal(got[-1].arrays["image"], r.stream(got[-1].header.stream_id).frames(N - 1, N)[0])
    finally:
        pull.close()


def test_parts_of_a_recording_replay_in_part_order(tmp_path):
    """A recording split into parts (a stream joined mid-way) replays as one: part order, seq kept."""
    first, second = tmp_path / "r1.part0.h5", tmp_path / "r1.part1.h5"
    write_session(first, 5, streams=("probe0",))
    write_session(second, 4, streams=("probe0", "probe1"), part=1, first_seq=5)
    with Replayer([second, first], mode="fast") as rp:  # given out of order
        assert rp.paths == [first, second] and rp.streams == ["probe0", "probe1"]
        got = [(f.stream_id, f.frame.seq) for f in rp]
    assert [s for sid, s in got if sid == "probe0"] == list(range(9))
    assert [s for sid, s in got if sid == "probe1"] == [5, 6, 7, 8]
    other = tmp_path / "other.h5"
    write_session(other, 2)
    with h5py.File(other, "r+") as f:
        f["session"].attrs["recording_id"] = "r2"
    with pytest.raises(InputError) as ei:
        Replayer([first, other])
    assert ei.value.reason == "mixed_recordings"


def test_parts_of_a_recording_merge_in_recorded_order(tmp_path):
    """A stream that waited for a new part has frames there older than the last ones the other
    streams wrote in the part before: replay merges the parts by recorded time (it replayed part
    after part: a step back in time and a late burst), opening a part only when its first frame is due."""
    parts = [tmp_path / f"r1.part{k}.h5" for k in range(3)]
    write_session(parts[0], 10, streams=("probe0",))  # probe0 seq 0..9: t_host 100.00 .. 100.45
    write_session(parts[1], 5, streams=("probe1",), part=1, first_seq=5)  # probe1 seq 5..9: t_host 100.25 .. 100.45
    write_session(parts[2], 3, streams=("probe0",), part=2, first_seq=10)  # probe0 seq 10..12: after both
    with Replayer(parts, mode="fast") as rp:
        got = [(f.t_host_s, f.stream_id, f.frame.seq) for f in rp]
    assert [t for t, *_ in got] == sorted(t for t, *_ in got)  # never a step back
    assert [s for _, sid, s in got if sid == "probe0"] == list(range(13))
    assert [s for _, sid, s in got if sid == "probe1"] == [5, 6, 7, 8, 9]
    with Replayer(parts, ["probe1"], mode="fast") as rp:  # a stream of one part only: the others are not read
        assert [f.frame.seq for f in rp] == [5, 6, 7, 8, 9]


def test_a_fast_replay_keeps_under_the_services_rate_limit(tmp_path):
    """``--mode fast`` sends no stream faster than the service's per-stream ingest limit (by
    default the default configuration's), which refused (lost) the frames beyond it."""
    path = tmp_path / "small.h5"
    write_sparse_session(path, 300, shape=(64, 64))
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False})
    with Service(cfg) as svc:
        with Replayer(path, mode="fast") as rp:
            assert rp.send(svc.graph.endpoints["ingest"]) == 300
        ingest = lambda: svc.graph.status()["nodes"]["ingest"]  # noqa: E731
        wait_for(lambda: ingest()["counters"].get("accepted", 0) + sum(ingest()["rejected"].values()) >= 300,
                 what="the 300 frames at ingest")  # fmt: skip
        assert ingest()["counters"]["accepted"] == 300 and not ingest()["rejected"]
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False},
                      ingest={"max_fps_per_stream": 400.0, "burst_frames": 5})  # fmt: skip
    with Service(cfg) as svc:  # a service configured lower: the caller passes its limit
        with Replayer(path, mode="fast") as rp:
            t0 = time.monotonic()
            assert rp.send(svc.graph.endpoints["ingest"], max_fps=300.0) == 300
            assert time.monotonic() - t0 >= 299 / 300.0 * 0.95
        wait_for(lambda: ingest()["counters"].get("accepted", 0) + sum(ingest()["rejected"].values()) >= 300,
                 what="the 300 frames at ingest")  # fmt: skip
        assert ingest()["counters"]["accepted"] == 300 and not ingest()["rejected"]
    with pytest.raises(InputError), Replayer(path, mode="fast") as rp:
        rp.send("tcp://127.0.0.1:1", max_fps=0.0)


def test_damaged_headers_are_a_read_error(session, tmp_path, capsys):
    from mmstream.cli import main

    bad = tmp_path / "bad.h5"
    bad.write_bytes(session.read_bytes())
    with h5py.File(bad, "r+") as f:
        heap = f["streams/probe0/json"]
        heap[:] = np.frombuffer(b"{" * len(heap), np.uint8)
    with Replayer(bad, mode="fast") as rp, pytest.raises(ReadError) as ei:
        list(rp)
    assert ei.value.reason == "damaged"
    assert main(["replay", str(bad), "--mode", "fast", "--to", "tcp://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err.startswith(f"mmstream replay: error: {bad}: damaged: ")
    missing = tmp_path / "none.h5"
    assert main(["replay", str(session), str(missing), "--to", "tcp://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == f"mmstream replay: error: {missing}: not_found: no such file\n"


def test_bad_arguments_and_files(session, tmp_path):
    with pytest.raises(InputError, match="mode"):
        Replayer(session, mode="backwards")
    for speed in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InputError, match="speed"):
            Replayer(session, speed=speed)
    with pytest.raises(InputError) as ei:
        Replayer(session, streams=["probe9"])
    assert ei.value.reason == "unknown_stream"
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(ReadError):
        Replayer(tmp_path / "x.h5")
    with pytest.raises(ReadError) as ei:
        Replayer(tmp_path / "none.h5")
    assert ei.value.reason == "not_found"
    with pytest.raises(ConfigError, match="choose one"):
        ReplaySource(path=str(session))  # two streams: which one?
    with pytest.raises(ConfigError, match="step"):
        ReplaySource(path=str(session), stream="probe0", mode="step")


def test_replay_cli_sends_the_file(session, capsys):
    from mmstream.cli import main

    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
    try:
        assert main(["replay", str(session), "--to", pull.last_endpoint, "--mode", "fast", "--stream", "probe0"]) == 0
        assert f"{N} frames sent" in capsys.readouterr().err
        assert [decode(pull.recv(timeout_ms=2000)).header.seq for _ in range(N)][-1] == N
        assert main(["replay", str(session), "--to", pull.last_endpoint, "--stream", "nope"]) == 1
        assert "unknown_stream" in capsys.readouterr().err
    finally:
        pull.close()


def test_replay_cli_without_a_receiver_says_so_in_one_line(tmp_path, capsys):
    """No service: one line after the send timeout (5 s), not "10 frames sent" (frames queued to
    nobody and lost)."""
    from mmstream.cli import main

    path = tmp_path / "short.h5"
    write_session(path, n_frames=10)
    to = f"ipc://{tmp_path}/nobody"
    assert main(["replay", str(path), "--to", to, "--mode", "fast"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mmstream replay: error: {path}: no_receiver:") and "service running" in line


def test_replay_cli_to_a_curve_secured_endpoint(session, tmp_path, capsys):
    from mmstream.cli import main
    from mmstream.transport import Curve, make_keys

    server_pub, server_sec = make_keys(tmp_path / "server", "server")
    client_pub, client_sec = make_keys(tmp_path / "clients", "client")
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True,
                       curve=Curve(secret_key_file=server_sec, allowed_clients_dir=tmp_path / "clients"))  # fmt: skip
    try:
        argv = ["replay", str(session), "--to", pull.last_endpoint, "--mode", "fast", "--stream", "probe1"]
        assert main([*argv, "--client-secret-key", str(client_sec), "--server-key", str(server_pub)]) == 0
        assert [decode(pull.recv(timeout_ms=3000)).header.seq for _ in range(N)][-1] == N
        assert main([*argv, "--server-key", str(server_pub)]) == 2
        assert "go together" in capsys.readouterr().err
    finally:
        pull.close()


# ---- record -> replay -> record -----------------------------------------------------------------


def test_a_recorded_source_restart_replays_as_a_new_session(tmp_path):
    """seq from 0 again in a recorded stream (its source restarted): the replay opens a new session
    there, so the service accepts every frame."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess", expected_streams=("a",))
    rec.start_recording()
    for session_id in ("src-1", "src-2"):
        for seq in range(5):
            img = np.full((20, 30), seq, np.uint8)
            h = Frame(stream_id="a", session_id=session_id, seq=seq, t_host_s=time.monotonic(), buffers=buffer_specs(image=img))
            rec.process("frames", Decoded(topic_for(h), h, {"image": img}))
    (path,) = rec.stop_recording()["files"]
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
    try:
        with Replayer(path, mode="fast") as rp:
            assert rp.send(pull.last_endpoint) == 10
        got = [decode(pull.recv(timeout_ms=2000)).header for _ in range(10)]
    finally:
        pull.close()
    assert [h.seq for h in got] == [*range(5), *range(5)]
    assert len({h.session_id for h in got[:5]}) == 1 and len({h.session_id for h in got[5:]}) == 1
    assert got[0].session_id != got[5].session_id


def _recording_service(directory, sources=()):
    seed = SimProbe(SPEC, seed=5).frame(0).truth.nerve_center_rc
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, streams={"probe0": {"seed_rc": seed}},
                      analyzer={"every_frame": True},  # identical metrics need every frame analysed
                      recorder={"enabled": True, "directory": str(directory), "flush_interval_s": 0.1, "fsync": False},
                      sources=list(sources))  # fmt: skip
    return Service(cfg)


def _record(directory, n, feed) -> tuple[str, dict]:
    """(the session file, the sources' health in the status) of a service recording ``n`` frames."""
    directory.mkdir()
    svc = _recording_service(directory, feed if isinstance(feed, list) else ())
    with svc:
        if callable(feed):
            feed(svc.graph.endpoints["ingest"])
        wait_for(lambda: svc.recorder.recording_status()["frames"] >= n, 30, "frames recorded")
        wait_for(lambda: (svc.recorder.recording_status()["committed"] or {}).get("metrics", {}).get("probe0", 0) >= n,
                 30, "metrics recorded")  # fmt: skip
        status = svc.graph.status()
        assert status["nodes"]["analyzer-0"]["queue_drops"] == {"frames": 0}
    (path,) = directory.glob("*.h5")
    return str(path), status.get("sources", {})


_TIMING = {"t_recorded_s", "json_offset", "json_n_bytes", *(f"stamp_{s}" for s in L.STAMP_NAMES)}


def _content(path):
    """Everything a recording holds about frames and metrics, less host timing and session ids."""
    with SessionReader(path) as r:
        st = r.stream("probe0")
        idx, table = st.index(), st.metrics_table()
        heads = [h.model_dump(exclude={"t_host_s", "stamps", "session_id"}) for h in st.frame_headers()]
        metrics = [(h.model_dump(exclude={"stamps", "session_id"}), {k: v.tolist() for k, v in a.items()})
                   for h, a in st.metrics_messages()]  # fmt: skip
        cols = {k: idx[k] for k in idx.dtype.names if k not in _TIMING | {"t_host_s"}}
        mcols = {k: table[k] for k in table.dtype.names if k not in _TIMING}
        return st.frames(), cols, heads, mcols, metrics


def test_record_replay_record_gives_identical_frames_and_metrics(tmp_path):
    n = 30
    probe = SimProbe(SPEC, fps=25.0, seed=5)

    def feed(endpoint):
        with FrameSender(endpoint, "probe0", clinical=CLINICAL) as sender:
            pump(probe.source_frames(n), sender, realtime=True)

    first, _ = _record(tmp_path / "a", n, feed)
    # the replay runs as a configured source of the second service (the `replay` entry point)
    assert mmstream_drivers.load("replay") is ReplaySource
    second, sources = _record(tmp_path / "b", n, [{"driver": "replay", "stream_id": "probe0", "options": {"path": first}}])
    assert sources["probe0"]["counters"]["frames"] == n  # the replay source's health, as every driver's
    a, b = _content(first), _content(second)
    assert a[0].shape == (n, *SPEC.shape)
    np.testing.assert_array_equal(a[0], b[0])  # pixels
    np.testing.assert_equal(a[1], b[1])  # index: seq, t_device_s, t_wall, spacing, settings, gaps (NaN == NaN)
    assert a[2] == b[2]  # full frame headers: clinical context, annotations, transforms, imaging
    np.testing.assert_equal(a[3], b[3])  # every metric column
    assert a[4] == b[4]  # metrics headers and arrays (histogram, contour, boundary lines)
    assert a[3]["has_csa"].all() and np.isfinite(a[3]["thickness_mm"]).all()


def test_a_fast_replay_from_its_own_process_delivers_every_frame(tmp_path):
    """`mmstream replay` sends faster than a slow service takes the frames (50 ms each here): the
    frames still queued when it has sent the last one reach the service before the command ends
    (it used to exit with them undelivered, up to 64 per stream, and crash in libzmq's teardown)."""
    path = tmp_path / "big.h5"
    write_sparse_session(path, 100, shape=(512, 512))
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True, hwm=4)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mmstream.cli", "replay", str(path), "--to", pull.last_endpoint,
                                 "--mode", "fast"], stderr=subprocess.PIPE, text=True)  # fmt: skip
        seqs = []
        while len(seqs) < 100:
            parts = pull.recv(timeout_ms=10000)  # a slow service: 50 ms per frame
            seqs.append(decode(parts).header.seq)
            time.sleep(0.05)
        assert proc.wait(timeout=30) == 0 and "100 frames sent" in proc.stderr.read()
        assert seqs == sorted(seqs) and len(set(seqs)) == 100
    finally:
        pull.close()


def test_a_replay_that_fails_returns_at_once_and_inproc_endpoints_work(tmp_path):
    """A service that stops taking frames: the send times out (5 s) and what is queued is dropped
    at once, not after the 60 s given to a replay that finished; an inproc endpoint (same process)
    gets every frame."""
    from mmstream.transport import TransportTimeout

    path = tmp_path / "big.h5"
    write_sparse_session(path, 100, shape=(512, 512))
    stuck = make_socket("pull", "tcp://127.0.0.1:*", bind=True, hwm=1)  # never reads
    try:
        t0 = time.monotonic()
        with Replayer(path, mode="fast") as rp, pytest.raises(TransportTimeout):
            rp.send(stuck.last_endpoint)
        assert time.monotonic() - t0 < 30
    finally:
        stuck.close()
    small = tmp_path / "small.h5"
    write_session(small, n_frames=5)
    pull = make_socket("pull", f"inproc://replay-{tmp_path.name}", bind=True)
    try:
        with Replayer(small, mode="fast") as rp:
            assert rp.send(pull.last_endpoint) == 5
        assert [decode(pull.recv(timeout_ms=2000)).header.seq for _ in range(5)] == list(range(5))
    finally:
        pull.close()


# ---- memory on a large file ----------------------------------------------------------------------


# peak RSS from VmHWM: getrusage's ru_maxrss survives exec on Linux and would report the parent's peak
_MEASURE = """
import gc, sys
from mmstream_drivers.replay import Replayer
def hwm():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
def mark(f):
    if f.frame.seq in (150, n_frames - 1):
        gc.collect()
        marks.append((hwm(), len(gc.get_objects())))
path, endpoint, n_frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
marks = []
with Replayer(path, mode="fast") as rp:
    n = rp.send(endpoint, on_frame=mark)
print(n, marks[0][0], hwm(), marks[1][1] - marks[0][1], flush=True)
"""


def _replay_peak_rss(path, n_frames, timeout_s=120):
    pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True, hwm=8)
    received = []

    def drain():
        while not done.is_set():
            try:
                pull.recv(timeout_ms=100)
                received.append(1)
            except Exception:
                pass

    done = threading.Event()
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), pull.last_endpoint, str(n_frames)], capture_output=True,
                             text=True, timeout=timeout_s)  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_for(lambda: len(received) >= int(out.stdout.split()[0]), 30, "all frames received")
    finally:
        done.set()
        t.join(2)
        pull.close()
    return tuple(map(int, out.stdout.split()))  # frames, peak RSS after 150 frames, at the end, objects grown


def test_replaying_a_multi_gigabyte_file_keeps_memory_flat(tmp_path):
    shape = (512, 512)
    small, large = tmp_path / "small.h5", tmp_path / "large.h5"
    write_sparse_session(small, 200, shape)
    write_sparse_session(large, 12_000, shape)  # 12000 x 512 x 512 = 3.1 GB of frames
    with h5py.File(large, "r") as f:
        assert f["streams/big/frames"].nbytes > 3e9
    assert os.path.getsize(large) < 100e6  # sparse: unallocated chunks
    n_small, _, rss_small, _ = _replay_peak_rss(small, 200)
    n_large, rss_at_150, rss_large, objects_grown = _replay_peak_rss(large, 12_000)
    assert (n_small, n_large) == (200, 12_000)
    mb = {"small_mb": rss_small / 2**20, "large_after_150_frames_mb": rss_at_150 / 2**20, "large_mb": rss_large / 2**20}
    print(json.dumps({**mb, "python_objects_grown": objects_grown}))
    # nothing is kept per frame: no Python objects pile up, and the peak RSS grows by no more than
    # HDF5's metadata cache (bounded: 32 MB by default) while 11,850 more frames (3.1 GB) go through
    assert objects_grown < 200, objects_grown
    assert rss_large - rss_at_150 < 40 * 2**20, mb
    assert rss_large - rss_small < 48 * 2**20, mb
