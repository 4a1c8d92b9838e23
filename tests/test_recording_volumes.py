"""Volumes in session files (layout 5), messages the recorder does not record, and files whose
committed rows cannot all be read (a cut copy cleared with h5clear)."""

import shutil
import subprocess
import time

import h5py
import numpy as np
import pytest
from recorded_sessions import SPEC, frame_header, write_session
from test_graph import RANDOM_TCP, request, wait_for

from mmstream.codec import Decoded
from mmstream.config import RecorderSection, load_config
from mmstream.errors import ReadError
from mmstream.messages import Event, Reply
from mmstream.recording import inspect, report
from mmstream.recording import layout as L
from mmstream.recording.reader import SessionReader
from mmstream.recording.recorder import Recorder
from mmstream.service import Service
from mmstream.volumes.model import LoadedVolume
from mmstream.volumes.outlet import Outlet
from mmstream_drivers.sim import SimProbe

PSEUDONYM = "STUDY-PSEUDO-77"


def volume(seed=0, shape=(5, 12, 9), dtype=np.int16):
    voxels = np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)
    return LoadedVolume(voxels, (3.0, 0.8, 0.7), (-10.0, 5.0, 2.5), np.eye(3), modality="MR", source="nifti:ras2lps",
                        series_uid="1.2.3.4.5", patient_id=PSEUDONYM)  # fmt: skip


def test_service_records_each_volume_content_once_and_tools_list_it(tmp_path):
    """A volume sent to a recording service lands in /volumes with its voxels, geometry and header;
    the same volume again is counted, not written; changed voxels under the same id are version 2;
    nothing lands in /fused; inspect and report list the volumes without the patient context."""
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, sources=[{"driver": "sim", "stream_id": "p1", "fps": 30}],
                      recorder={"enabled": True, "directory": str(tmp_path)})  # fmt: skip
    v1, v2 = volume(0), volume(1)
    with Service(cfg) as svc:
        wait_for(lambda: svc.recorder.recording_status()["frames"] >= 5, what="recorded frames")
        out = Outlet(svc.graph.endpoints["ingest"]).start()
        try:
            for v in (v1, v1, v2):
                out.volume(v, "mr-test")
            wait_for(lambda: svc.recorder.status()["counters"].get("volumes_duplicate") == 1
                     and svc.recorder.recording_status()["committed"]["volumes"] == 2, what="volumes committed")  # fmt: skip
        finally:
            out.stop()
        files = request(svc.graph.endpoints["control"], command="record_stop").data["files"]
    with SessionReader(files[0]) as r:
        assert r.summary()["n_volumes"] == 2 and r.fused() == []
        t = r.volume_table()
        assert t["volume_id"].tolist() == [b"mr-test"] * 2 and t["version"].tolist() == [1, 2]
        assert t["dtype"].tolist() == [b"<i2"] * 2 and (t["shape_k"][0], t["shape_j"][0], t["shape_i"][0]) == (5, 12, 9)
        assert (t["spacing_k_mm"][0], t["origin_l_mm"][0]) == (3.0, -10.0) and t["voxels_offset"][1] % L.VOXEL_CHUNK_BYTES == 0
        assert np.array_equal(r.voxels(0), v1.voxels) and np.array_equal(r.voxels(1), v2.voxels)
        h = r.volumes()[0]
        assert h.volume_id == "mr-test" and h.series_uid == "1.2.3.4.5" and h.clinical.patient_id == PSEUDONYM
        assert r.stream("p1").n_frames >= 5
    text = inspect.format_summary(inspect.summarize(files[0]))
    assert "volume mr-test v1: MR 5x12x9 (k, j, i) int16  spacing 3 x 0.8 x 0.7 mm" in text and "mr-test v2" in text
    page = report.build_report(files[0], tmp_path / "r.html").read_text()
    assert "mr-test v2 MR 5x12x9 voxels" in page
    assert PSEUDONYM not in text + page and "1.2.3.4.5" not in text + page


def _recording(tmp_path) -> Recorder:
    """A recorder whose file is open (one frame of stream probe0 recorded)."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0), "s1")
    rec.start_recording()
    src = SimProbe(SPEC).frame(0).to_source()
    rec.process("frames", Decoded("frame.probe0", frame_header("probe0", src, 0, time.monotonic()), {"image": src.image}))
    rec.tick(time.monotonic())
    return rec


def test_messages_the_recorder_does_not_record_are_counted_not_filed_as_fused(tmp_path):
    """A message on the bus that is neither metrics, event nor fused (here a reply) is counted
    (it was recorded as a /fused row)."""
    rec = _recording(tmp_path)
    rec.process("bus", Decoded("reply", Reply(ok=True)))
    files = rec.stop_recording()["files"]
    assert rec.status()["counters"]["unrecorded_reply"] == 1
    with SessionReader(files[0]) as r:
        assert r.fused() == [] and r.summary()["n_fused"] == 0 and r.stream("probe0").n_frames == 1


def test_volumes_are_committed_like_the_other_tables_and_checked_when_read(tmp_path):
    """A volume not yet flushed is not counted in a file whose writer died (its row and voxels may
    be in the file); changed voxel bytes are refused as damaged, not returned."""
    path = tmp_path / "s.h5"
    w = write_session(path, n_frames=3, close=False)
    h1, a1 = volume(0).to_message("mr-a")
    h2, a2 = volume(1, shape=(2, 700, 800), dtype=np.float32).to_message("mr-b")  # 4.5 MB: several chunks
    w.add_volume(h1, a1)
    w.flush()
    w.add_volume(h2, a2)
    w.volumes.table.commit(w.volumes.write_voxels)  # rows and voxels written, the commit record not: a kill here
    w.file.flush()
    with SessionReader(path) as r:
        assert len(r.volume_table()) == 1 and r.committed("volumes") == 1 and np.array_equal(r.voxels(0), a1)
        with pytest.raises(ReadError) as e:
            r.voxels(1)
        assert e.value.reason == "no_volume"
    w.close()
    with SessionReader(path) as r:
        assert np.array_equal(r.voxels(1), a2) and r.volumes()[1].buffers[0].shape == (2, 700, 800)
    with h5py.File(path, "r+") as f:
        f["volumes/voxels"][L.VOXEL_CHUNK_BYTES + 5] ^= 0xFF
    with SessionReader(path) as r, pytest.raises(ReadError) as e:
        r.voxels(1)
    assert e.value.reason == "damaged" and "SHA-256" in str(e.value)


def test_a_layout_4_file_without_volumes_still_reads_and_inspects(tmp_path):
    path = tmp_path / "v4.h5"
    write_session(path, n_frames=4)
    with h5py.File(path, "r+") as f:  # as layout 4 wrote it: no /volumes, no n_volumes
        f["session"].attrs["layout_version"] = 4
        del f["volumes"]
        old = f["session/summary"][...]
        names = [n for n in old.dtype.names if n != "n_volumes"]
        new = np.zeros(1, np.dtype([(n, old.dtype[n]) for n in names]))
        for n in names:
            new[n] = old[n]
        del f["session/summary"]
        f["session"].create_dataset("summary", data=new)
    with SessionReader(path) as r:
        assert r.volumes() == [] and len(r.volume_table()) == 0 and r.committed("volumes") == 0
        assert r.stream("probe0").n_frames == 4
    s = inspect.summarize(path)
    assert s["volumes"] == [] and s["layout_version"] == 4 and "volume " not in inspect.format_summary(s)


@pytest.mark.skipif(shutil.which("h5clear") is None, reason="h5clear (Debian hdf5-tools) not installed")
def test_a_cut_copy_cleared_with_h5clear_says_committed_rows_are_missing(tmp_path):
    """A copy cut in half (partial download) is refused as truncated without promising that h5clear
    recovers it; after h5clear, inspect and report say how many committed rows cannot be read
    (they said "0 frames", as if none had been recorded)."""
    path = tmp_path / "s.h5"
    w = write_session(path, n_frames=60, close=False)
    cut = tmp_path / "cut.h5"
    shutil.copy(path, cut)
    w.close()
    with open(cut, "r+b") as fh:
        fh.truncate(cut.stat().st_size // 2)
    with pytest.raises(ReadError) as e:
        SessionReader(cut)
    assert e.value.reason == "truncated" and "cut or incomplete copy" in str(e.value) and "lost" in str(e.value)
    subprocess.run(["h5clear", "-s", "--increment=0", str(cut)], check=True, capture_output=True)
    s = inspect.summarize(cut)
    st = s["streams"]["probe0"]
    assert st["frames_committed"] == 60 and st["frames"] < 60
    text = inspect.format_summary(s)
    assert f"WARNING: stream probe0: 60 frames committed, {st['frames']} readable (file damaged" in text
    page = report.build_report(cut, tmp_path / "r.html").read_text()
    assert f"60 frames committed, {st['frames']} readable" in page
    with SessionReader(cut) as r:  # every frame reported reads, with its header
        sr = r.stream("probe0")
        assert sr.committed_frames == 60 and len(list(sr.iter_frame_messages())) == sr.n_frames
    assert inspect.summarize(path)["streams"]["probe0"]["frames_committed"] == 60  # the original: all readable
    assert "WARNING" not in inspect.format_summary(inspect.summarize(path))


def test_a_volume_held_while_armed_is_written_when_the_file_opens(tmp_path):
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0), "s1")
    rec.start_recording()
    h, a = volume(2).to_message("ct-1")
    rec.process("frames", Decoded("volume.ct-1", h, {"voxels": a}))  # before any frame: held
    src = SimProbe(SPEC).frame(0).to_source()
    rec.process("frames", Decoded("frame.probe0", frame_header("probe0", src, 0, time.monotonic()), {"image": src.image}))
    rec.tick(time.monotonic())
    files = rec.stop_recording()["files"]
    with SessionReader(files[0]) as r:
        assert [v.volume_id for v in r.volumes()] == ["ct-1"] and np.array_equal(r.voxels(0), a)


def _frame_msg(seq: int, stream: str = "probe0") -> Decoded:
    src = SimProbe(SPEC).frame(seq).to_source()
    return Decoded(f"frame.{stream}", frame_header(stream, src, seq, time.monotonic()), {"image": src.image})


def test_volumes_before_any_frame_open_the_file_and_later_frames_go_to_the_next_part(tmp_path):
    """A volume starts the discover clock like a frame: discover_s after it the file opens with no
    stream (the volume was held, unrecorded, for ever: no file, nothing counted); a probe that
    starts later records in part 2."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=0.5), "s1", expected_streams=("probe0",))
    rec.start_recording()
    h, a = volume(3).to_message("ct-1")
    rec.process("frames", Decoded("volume.ct-1", h, {"voxels": a}))
    assert rec.recording_status()["state"] == "armed"  # waits for probe0 up to discover_s
    rec.tick(time.monotonic() + 1.0)
    st = rec.recording_status()
    assert st["state"] == "recording" and len(st["files"]) == 1
    rec.process("frames", _frame_msg(0))
    files = rec.stop_recording()["files"]
    assert len(files) == 2 and rec.status()["counters"]["volumes"] == 1
    with SessionReader(files[0]) as r:
        assert r.streams == [] and np.array_equal(r.voxels(0), a) and r.summary()["closed"]
    with SessionReader(files[1]) as r:
        assert r.streams == ["probe0"] and r.stream("probe0").n_frames == 1 and r.volumes() == []


def test_stop_while_armed_writes_held_volumes_and_counts_what_it_cannot_write(tmp_path):
    """record_stop before discover_s ran out writes the held volume (it answered 'no file
    written'); events held with no frame or volume are counted, not silently gone."""
    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=10), "s1", expected_streams=("probe0",))
    rec.start_recording()
    h, a = volume(4).to_message("ct-2")
    rec.process("frames", Decoded("volume.ct-2", h, {"voxels": a}))
    files = rec.stop_recording()["files"]
    with SessionReader(files[0]) as r:
        assert [v.volume_id for v in r.volumes()] == ["ct-2"] and np.array_equal(r.voxels(0), a)
    rec.start_recording()
    rec.process("bus", Decoded("event.x", Event(node="ingest", level="info", reason="x", message="m", t_host_s=1.0)))
    st = rec.stop_recording()
    assert st["files"] == [] and rec.status()["counters"]["held_not_written"] == 1


def test_a_service_receiving_only_volumes_records_them(tmp_path):
    """A recording service without a probe (volumes from a DICOM SCP or watch folder): the volume
    is in the file record_stop names."""
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, recorder={"enabled": True, "directory": str(tmp_path)})
    v = volume(5)
    with Service(cfg) as svc:
        out = Outlet(svc.graph.endpoints["ingest"]).start()
        try:
            out.volume(v, "ct-svc")
            wait_for(lambda: (svc.recorder.recording_status()["committed"] or {}).get("volumes") == 1, what="volume committed")
        finally:
            out.stop()
        files = request(svc.graph.endpoints["control"], command="record_stop").data["files"]
    with SessionReader(files[0]) as r:
        assert r.streams == [] and np.array_equal(r.voxels(0), v.voxels)


@pytest.mark.skipif(shutil.which("h5clear") is None, reason="h5clear (Debian hdf5-tools) not installed")
def test_a_cut_copy_of_a_closed_file_says_how_many_committed_rows_can_be_read(tmp_path):
    """A partial download of a finished session, cleared with h5clear: its summary says closed, so
    its rows were not checked and inspect/report failed 'damaged' (incorrect metadata checksum) at
    30-97 % cuts. Now each table counts the rows that read, the warning names what was lost, and
    every row reported reads. (A volume's row is written after its voxels, at the end of the file.)"""
    path = tmp_path / "closed.h5"
    w = write_session(path, n_frames=60, close=False)
    h, a = volume(6, shape=(20, 256, 256)).to_message("mr-1")  # 2.6 MB: most of the file
    w.add_volume(h, a)
    w.close()
    for frac in (0.1, 0.3, 0.6, 0.97):
        cut = tmp_path / f"cut{frac}.h5"
        shutil.copy(path, cut)
        with open(cut, "r+b") as fh:
            fh.truncate(int(cut.stat().st_size * frac))
        subprocess.run(["h5clear", "-s", "--increment=0", str(cut)], check=True, capture_output=True)
        s = inspect.summarize(cut)
        st = s["streams"]["probe0"]
        assert s["closed"] and (st["frames_committed"], st["metrics_committed"], s["volumes_committed"]) == (60, 60, 1)
        lost = inspect.damage(s)
        assert (st["frames"] < 60) == any("frames committed" in x for x in lost) and len(s["volumes"]) == 0
        assert "1 volume committed, 0 readable (file damaged)" in lost
        if frac >= 0.3:
            assert st["frames"] == 60
        assert "1 volume committed, 0 readable" in report.build_report(cut, tmp_path / "r.html").read_text()
        with SessionReader(cut) as r:
            sr = r.stream("probe0")
            assert len(list(sr.iter_frame_messages())) == sr.n_frames and len(sr.metrics_messages()) == sr.n_metrics


def test_volume_reads_that_hdf5_cannot_do_are_a_read_error(tmp_path, monkeypatch):
    """A table chunk before the last one is junk (here one row per chunk): volume_table(), volumes()
    and voxels() give ReadError 'damaged', not h5py's OSError."""
    monkeypatch.setattr(L, "TABLE_CHUNK_ROWS", 1)
    path = tmp_path / "s.h5"
    w = write_session(path, n_frames=2, close=False)
    for i in range(2):
        w.add_volume(*volume(i).to_message(f"mr-{i}"))
    w.close()
    with h5py.File(path, "r") as f:
        off = f["volumes/table"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\xa5" * 64)
    with SessionReader(path) as r:
        for read in (r.volume_table, r.volumes, lambda: r.voxels(0)):
            with pytest.raises(ReadError) as e:
                read()
            assert e.value.reason == "damaged" and "cannot read the volume" in str(e.value)


def _file_with_volumes(tmp_path, n: int):
    """A closed session file: 3 frames of probe0 and ``n`` volumes (mr-0, mr-1, ...)."""
    path = tmp_path / "s.h5"
    w = write_session(path, n_frames=3, close=False)
    for seed in range(n):
        w.add_volume(*volume(seed).to_message(f"mr-{seed}"))
    w.close()
    return path


def _replace(f, name: str, data) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _set_row(f, table, i, **fields):
    row = f[table][i]
    for k, v in fields.items():
        row[k] = v
    f[table][i] = row


def _heap_header(f, i, text: bytes):
    """Point volume row ``i`` at ``text`` appended to the JSON heap."""
    heap = f["volumes/json"]
    n = heap.shape[0]
    heap.resize((n + len(text),))
    heap[n:] = np.frombuffer(text, np.uint8)
    _set_row(f, "volumes/table", i, json_offset=n, json_n_bytes=len(text))


HOSTILE = {  # crafted copies of a good file: each must be a one-line ReadError, never a traceback or GBs of memory
    "unknown dtype": lambda f: _set_row(f, "volumes/table", 0, dtype=b"zz"),
    "negative volume count": lambda f: _set_row(f, "session/summary", 0, n_volumes=-5),
    "negative frame count": lambda f: _set_row(f, "streams/probe0/summary", 0, n_frames=-3),
    "empty session summary": lambda f: _replace(f, "session/summary", f["session/summary"][:0]),
    "table of plain bytes": lambda f: _replace(f, "volumes/table", np.zeros(8, np.uint8)),
    "voxels as a group": lambda f: (f.__delitem__("volumes/voxels"), f.create_group("volumes/voxels")),
    "summary without n_volumes": lambda f: _replace(f, "session/summary", np.zeros(1, [
        ("closed", "?"), ("n_frames", "<i8"), ("n_events", "<i8"), ("n_fused", "<i8"), ("n_biomarkers", "<i8")])),
    "negative shape": lambda f: _set_row(f, "volumes/table", 1, shape_k=-1),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_crafted_session_file_is_a_one_line_error(tmp_path, case):
    path = _file_with_volumes(tmp_path, 2)
    with h5py.File(path, "r+") as f:
        HOSTILE[case](f)
    with pytest.raises(ReadError) as e:
        with inspect.open_session(path) as r:
            inspect.summarize(path)
            [r.voxels(i) for i in range(len(r.volume_table()))]
    assert e.value.reason == "damaged", str(e.value)
    proc = subprocess.run([shutil.which("mmstream"), "inspect", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "damaged" in proc.stderr, proc.stderr


def test_a_huge_recorded_header_is_not_read(tmp_path):
    """A row pointing at a 64 MiB header (a real one is about 0.4 kB; a crafted 8.6 MB file asked
    for 1 GB and took inspect to 2.4 GB of memory): refused as damaged without reading it."""
    path = _file_with_volumes(tmp_path, 2)
    with h5py.File(path, "r+") as f:
        _heap_header(f, 1, b'{"x": "' + b"x" * (64 << 20) + b'"}')
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", shutil.which("mmstream"), "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "damaged" in proc.stderr and "a recorded header of 67108873 bytes" in proc.stderr
    assert int(proc.stderr.split()[-1]) < 400_000  # max RSS, kB


def test_inspect_json_stays_strict_json_with_a_non_finite_spacing(tmp_path):
    import json

    path = _file_with_volumes(tmp_path, 1)
    with h5py.File(path, "r+") as f:
        _set_row(f, "volumes/table", 0, spacing_k_mm=np.nan)
    proc = subprocess.run([shutil.which("mmstream"), "inspect", "--json", str(path)], capture_output=True, text=True, timeout=120)
    summary = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert summary["volumes"][0]["spacing_mm"][0] is None
