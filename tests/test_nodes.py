"""Nodes called directly through ``process()``: no sockets, no threads."""

import numpy as np
import pytest

from mmstream.codec import Decoded, buffer_specs, decode, encode
from mmstream.errors import CodecError
from mmstream.messages import ClinicalContext, Control, Event, Frame, Metrics, Reply, Volume
from mmstream.nodes import Analyzer, ControlNode, Ingest, IngestLimits, Publisher, StreamConfig, StreamSettings
from mmstream.nodes.base import Port, PortQueue


def frame_msg(seq, image, stream="s1", session="sess1", **kw) -> Decoded:
    h = Frame(stream_id=stream, session_id=session, seq=seq, buffers=buffer_specs(image=image), **kw)
    return decode(encode(h, [image]))


@pytest.fixture(scope="module")
def sim_frames():
    from mmstream_drivers.sim import SimProbe

    probe = SimProbe(seed=11)
    return [probe.frame(i) for i in range(6)]


# -- ports -------------------------------------------------------------------------------------
def test_latest_policy_keeps_newest_per_stream_and_counts():
    q = PortQueue(Port("frames", capacity=1, policy="latest"))
    img = np.zeros((4, 4), np.uint8)
    for seq in range(3):
        q.put(frame_msg(seq, img, stream="a"))
    q.put(frame_msg(0, img, stream="b"))
    assert q.dropped == 2 and len(q) == 2
    got = [q.get().header for _ in range(2)]
    assert {(h.stream_id, h.seq) for h in got} == {("a", 2), ("b", 0)}
    assert q.get() is None


def test_fifo_drops_newest_and_block_reports_full():
    img = np.zeros((4, 4), np.uint8)
    fifo = PortQueue(Port("x", capacity=2, policy="fifo"))
    for seq in range(3):
        fifo.put(frame_msg(seq, img))
    assert fifo.dropped == 1 and [fifo.get().header.seq for _ in range(2)] == [0, 1]
    block = PortQueue(Port("y", capacity=2, policy="block"))
    block.put(frame_msg(0, img))
    assert not block.full()
    block.put(frame_msg(1, img))
    assert block.full() and block.dropped == 0


# -- ingest ------------------------------------------------------------------------------------
def test_ingest_stamps_and_forwards():
    ing = Ingest()
    img = np.full((64, 16), 7, np.uint8)
    out, tap = ing.process("in", frame_msg(0, img, stamps={"sent": 1.0}))
    assert tap.port == "accepted" and tap.header is out.header  # the same frame for the recorder tap
    assert out.port == "frames" and out.header.t_host_s is not None and out.header.t_wall.endswith("+00:00")
    assert out.header.stamps["sent"] == 1.0 and "ingest" in out.header.stamps
    assert out.arrays[0] is not None and int(out.arrays[0][0, 0]) == 7


def test_ingest_rejects_repeated_and_backward_seq_but_not_new_session():
    ing = Ingest()
    img = np.zeros((64, 16), np.uint8)
    assert ing.process("in", frame_msg(5, img))[0].port == "frames"
    for seq in (5, 3):
        (ev,) = ing.process("in", frame_msg(seq, img))
        assert ev.port == "events" and ev.header.reason == "seq_not_increasing" and ev.header.seq == seq
    # a restarted driver: new session id, seq starts again at 0
    assert ing.process("in", frame_msg(0, img, session="sess2"))[0].port == "frames"
    assert ing.rejected["seq_not_increasing"] == 2
    # a gap is counted, not rejected
    assert ing.process("in", frame_msg(4, img, session="sess2"))[0].port == "frames"
    assert ing.counters["seq_gap_frames"] == 3 and ing.status()["streams"]["s1"]["seq_gap_frames"] == 3  # and per stream


def test_ingest_rate_limit_is_per_stream():
    ing = Ingest(IngestLimits(max_fps=1.0, burst=3))
    img = np.zeros((64, 16), np.uint8)
    ports = [ing.process("in", frame_msg(i, img, stream="flood"))[0].port for i in range(10)]
    assert ports[:3] == ["frames"] * 3 and set(ports[3:]) == {"events"}
    assert ing.rejected["rate_limited"] == 7
    assert ing.process("in", frame_msg(0, img, stream="calm"))[0].port == "frames"
    # a new session per frame does not refill the bucket
    ports = [ing.process("in", frame_msg(0, img, stream="flood", session=f"s{i}"))[0].port for i in range(5)]
    assert set(ports) == {"events"} and ing.rejected["rate_limited"] == 12


def test_ingest_keeps_a_bounded_number_of_streams_forgetting_idle_ones(monkeypatch):
    """The idle stream makes room, not the one seen first: else a stream still sending is dropped for a newcomer."""
    import mmstream.nodes.ingest as I

    clock = [100.0]
    monkeypatch.setattr(I.time, "monotonic", lambda: clock[0])
    ing = Ingest(IngestLimits(max_streams=3, idle_s=60.0))
    img = np.zeros((64, 16), np.uint8)
    for k in range(3):
        assert ing.process("in", frame_msg(0, img, stream=f"p{k}"))[0].port == "frames"
    (ev,) = ing.process("in", frame_msg(0, img, stream="p3"))
    assert ev.header.reason == "too_many_streams" and ing.rejected["too_many_streams"] == 1
    clock[0] += 30.0
    ing.process("in", frame_msg(1, img, stream="p0"))  # the first stream seen keeps sending
    ing.process("in", frame_msg(1, img, stream="p2"))
    clock[0] += 31.0  # p1 idle for 61 s: forgotten for the new stream
    assert ing.process("in", frame_msg(0, img, stream="p3"))[0].port == "frames"
    assert ing.counters["streams_forgotten"] == 1 and sorted(ing.status()["streams"]) == ["p0", "p2", "p3"]


def test_ingest_refuses_frames_too_small_to_analyse():
    """Under 64 x 16 nothing could be measured: refused at the door (counted, announced), without
    taking a stream's place or its seq."""
    ing = Ingest(IngestLimits(max_streams=1))
    for shape in ((63, 16), (64, 15), (1, 1)):
        (ev,) = ing.process("in", frame_msg(0, np.zeros(shape, np.uint8), stream="tiny"))
        assert ev.header.reason == "frame_too_small" and "64x16" in ev.header.message
    assert ing.rejected["frame_too_small"] == 3 and ing.status()["streams"] == {}
    assert ing.process("in", frame_msg(0, np.zeros((64, 16), np.uint8), stream="tiny"))[0].port == "frames"


def test_telemetry_keeps_a_bounded_number_of_streams():
    from mmstream.nodes.base import Telemetry

    t = Telemetry(max_streams=3)
    for k in range(5):
        t.add(f"s{k}", float(k), 0.01)
    t.add("s2", 10.0, 0.01)
    t.add("s9", 11.0, 0.01)  # forgets s3, seen longest ago now
    assert sorted(t.summary()) == ["s2", "s4", "s9"] and t.summary()["s2"]["frames"] == 2


def test_telemetry_fps_is_the_current_rate():
    """The frame rate is the frames of the last FPS_WINDOW_S seconds over that time: after a pause
    it is the new rate once a window has passed, not the average since the first frame; a stopped
    stream has none; a burst of two frames is not its instantaneous rate (it read 50-5305 fps)."""
    from mmstream.nodes.base import FPS_MIN_SPAN_S, FPS_WINDOW_S, Telemetry

    t = Telemetry()
    for k in range(60):  # 2 s at 30 fps, a pause of 6 s, then 5 s at 10 fps
        t.add("s", k / 30.0, None)
    assert t.summary(now=59 / 30.0)["s"]["fps"] == pytest.approx(59 / (59 / 30.0))  # since the first frame
    for k in range(51):
        t.add("s", 8.0 + k / 10.0, None)
        if k == 20:  # 21 frames of the last 5 s: the window holds 3 s of the pause
            assert t.summary(now=10.0)["s"]["fps"] == pytest.approx(21 / FPS_WINDOW_S)
    s = t.summary(now=13.0)["s"]
    assert s["frames"] == 111 and s["fps"] == pytest.approx(10.0) and s["idle_s"] == pytest.approx(0.0)
    s = t.summary(now=13.0 + FPS_WINDOW_S + 0.1)["s"]
    assert s["fps"] is None and s["idle_s"] == pytest.approx(FPS_WINDOW_S + 0.1)
    slow = Telemetry()
    for k in range(3):  # one frame every 6 s: its rate, not nothing
        slow.add("s", 6.0 * k, None)
    assert slow.summary(now=12.5)["s"]["fps"] == pytest.approx(1 / 6.0)
    pairs = Telemetry()
    for k in range(4):  # two frames 20 ms apart every 7 s
        pairs.add("p", 7.0 * k, None)
        pairs.add("p", 7.0 * k + 0.02, None)
    assert pairs.summary(now=21.03)["p"]["fps"] == pytest.approx(2 / FPS_WINDOW_S)
    assert pairs.summary(now=21.02 + FPS_WINDOW_S - 0.01)["p"]["fps"] == pytest.approx(1 / FPS_WINDOW_S)  # one of the two left
    new = Telemetry()
    new.add("n", 0.0, None)
    new.add("n", 0.02, None)
    assert new.summary(now=0.03)["n"]["fps"] is None  # too early to say
    assert new.summary(now=FPS_MIN_SPAN_S)["n"]["fps"] == pytest.approx(1 / FPS_MIN_SPAN_S)
    single = Telemetry()
    single.add("one", 0.0, None)
    assert single.summary(now=2.0)["one"]["fps"] is None
    fast = Telemetry()  # 1000 fps: the window holds more frames than the telemetry keeps
    for k in range(6000):
        fast.add("f", k / 1000.0, None)
    assert fast.summary(now=5.999)["f"]["fps"] == pytest.approx(1000.0, rel=1e-3)


def test_latest_queue_forgets_streams_without_waiting_messages():
    q = PortQueue(Port("frames", capacity=1, policy="latest"))
    img = np.zeros((4, 4), np.uint8)
    for k in range(1000):
        q.put(frame_msg(0, img, stream=f"s{k}"))
        assert q.get().header.stream_id == f"s{k}"
    assert len(q) == 0 and q.get() is None and not q._by_key  # nothing left per stream
    for k in (0, 1, 0):  # round robin: s1 is not starved by s0
        q.put(frame_msg(k, img, stream=f"s{k % 2}"))
    assert [q.get().header.stream_id for _ in range(2)] == ["s0", "s1"]


def test_ingest_forwards_volumes_to_accepted_only_and_refuses_other_types():
    vox = np.zeros((2, 3, 4), np.float32)
    vol = Volume(volume_id="v1", modality="MR", spacing_mm=(1, 1, 1), origin_lps_mm=(0, 0, 0),
                 direction_lps=(1, 0, 0, 0, 1, 0, 0, 0, 1), buffers=buffer_specs(voxels=vox))  # fmt: skip
    ing = Ingest()
    (out,) = ing.process("in", decode(encode(vol, [vox])))
    assert out.port == "accepted" and out.header == vol and out.arrays[0].shape == (2, 3, 4)
    assert ing.counters["volumes_accepted"] == 1
    ping = Control(command="ping")
    (ev,) = ing.process("in", decode(encode(ping)))
    assert ev.header.reason == "unexpected_msg_type"


# -- analyzer ----------------------------------------------------------------------------------
def test_analyzer_seeds_tracks_and_clears(sim_frames):
    settings = StreamSettings()
    an = Analyzer(settings)
    f0 = sim_frames[0]
    spacing = dict(spacing_mm=(0.1, 0.1), spacing_source="simulated")
    (m0,) = an.process("frames", frame_msg(0, f0.image, **spacing))
    assert isinstance(m0.header, Metrics) and m0.header.csa is None and m0.header.thickness is not None
    settings.update("s1", seed_rc=f0.truth.nerve_center_rc)
    (m1,) = an.process("frames", frame_msg(1, sim_frames[1].image, **spacing))
    assert m1.header.csa is not None and not m1.header.csa.tracked
    assert m1.header.parent == ("s1", 1)
    assert m1.header.csa.area_mm2 == pytest.approx(f0.truth.nerve_area_mm2, rel=0.2)
    names = [b.name for b in m1.header.buffers]
    assert names == ["histogram", "contour_rc", "superficial_rc", "deep_rc"]
    assert m1.arrays[1].dtype == np.float32 and m1.arrays[1].shape[1] == 2
    (m2,) = an.process("frames", frame_msg(2, sim_frames[2].image, **spacing))
    assert m2.header.csa.tracked
    settings.update("s1", seed_rc=None)
    (m3,) = an.process("frames", frame_msg(3, sim_frames[3].image, **spacing))
    assert m3.header.csa is None


def test_analyzer_bad_seed_becomes_event_then_recovers(sim_frames):
    settings = StreamSettings()
    an = Analyzer(settings)
    settings.update("s1", seed_rc=(5000.0, 5.0))
    ev, m = an.process("frames", frame_msg(0, sim_frames[0].image))  # the seed refused, the frame measured
    assert isinstance(ev.header, Event) and ev.header.level == "warning" and ev.header.stream_id == "s1"
    assert ev.header.message.startswith("seed refused") and an.rejected[ev.header.reason] == 1
    assert isinstance(m.header, Metrics) and m.header.csa is None and m.header.thickness is not None
    (m,) = an.process("frames", frame_msg(1, sim_frames[1].image))
    assert isinstance(m.header, Metrics) and m.header.csa is None


@pytest.mark.parametrize(("grey", "flag"), [(0, "no_contact"), (29, "featureless")])
def test_analyzer_probe_lifted_measures_nothing_and_resumes_tracking(sim_frames, grey, flag):
    """Frames without probe contact (or featureless: a grabber's "no signal" screen): no
    measurement, no lost hold; a release during the lift applies, a tap waits for the next frame
    with contact; tracking resumes from the last frame with contact; a new frame size during the
    lift ends the hold with a warning."""
    settings = StreamSettings()
    an = Analyzer(settings)
    f = sim_frames
    c = float(f[0].image.shape[1] // 2)
    settings.update("s1", seed_rc=f[0].truth.nerve_center_rc, deep_at_rc=(float(f[0].truth.deep_row[int(c)]), c),
                    superficial_at_rc=(float(f[0].truth.superficial_row[int(c)]), c))  # fmt: skip
    (m,) = an.process("frames", frame_msg(0, f[0].image))
    assert m.header.csa is not None and m.header.thickness.deep_at_rc[1] == c
    lifted = np.full_like(f[0].image, grey)
    (m,) = an.process("frames", frame_msg(1, lifted))
    h = m.header
    assert h.echogenicity is None and h.csa is None and h.thickness is None and getattr(h.quality, flag)
    assert [b.name for b in h.buffers] == []
    settings.update("s1", superficial_at_rc=None)  # a release while lifted applies to the carried lines
    (m,) = an.process("frames", frame_msg(2, lifted))
    (m,) = an.process("frames", frame_msg(3, f[1].image))
    h = m.header
    assert h.csa is not None and h.csa.tracked
    assert h.thickness.tracked and h.thickness.deep_at_rc[1] == c and h.thickness.superficial_at_rc is None
    assert h.thickness.thickness_px == pytest.approx(f[1].truth.thickness_px, abs=4.0)
    # a tap while lifted waits (no warning) and applies to the next frame with contact
    seed = f[2].truth.nerve_center_rc
    settings.update("s1", seed_rc=seed, superficial_at_rc=(float(f[2].truth.superficial_row[int(c)]), c - 50))
    outs = an.process("frames", frame_msg(4, lifted)) + an.process("frames", frame_msg(5, lifted))
    assert [o.port for o in outs] == ["metrics", "metrics"]
    (m,) = an.process("frames", frame_msg(6, f[2].image))
    h = m.header
    assert not h.csa.tracked and h.csa.seed_rc == pytest.approx(seed) and h.thickness.superficial_at_rc[1] == c - 50
    assert an.counters.get("line_hold_lost", 0) == 0 and not an.rejected
    # a new frame size while lifted: the hold ends, and a warning says so
    *evs, m = an.process("frames", frame_msg(7, np.full((400, 500), grey, np.uint8)))
    assert [e.header.reason for e in evs] == ["line_hold_lost"] * 2 + ["csa_lost"] and an.counters["line_hold_lost"] == 2
    assert getattr(m.header.quality, flag)


def test_analyzer_new_session_starts_afresh_from_the_settings(sim_frames):
    """A restarted source (new session_id): nothing tracked from the old session; the stream's seed
    applies anew to its first frame it can analyse, line clicks do not; an info event, no lost-hold
    warning. Another stream keeps tracking."""
    settings = StreamSettings()
    an = Analyzer(settings)
    f = sim_frames
    c = float(f[0].image.shape[1] // 2)
    settings.update("s1", seed_rc=f[0].truth.nerve_center_rc, deep_at_rc=(float(f[0].truth.deep_row[int(c)]), c))
    settings.update("s2", seed_rc=f[0].truth.nerve_center_rc)
    for seq in (0, 1):
        an.process("frames", frame_msg(seq, f[seq].image))
        (other,) = an.process("frames", frame_msg(seq, f[seq].image, stream="s2"))
    (m,) = an.process("frames", frame_msg(2, f[2].image))
    assert m.header.csa.tracked and m.header.thickness.tracked and m.header.thickness.deep_at_rc[1] == c
    # the new session's first frame cannot be analysed: the seed waits for the next one
    ev, rej = an.process("frames", frame_msg(0, np.full((8, 8), 100, np.uint8), session="sess2"))
    assert ev.header.level == "info" and ev.header.reason == "session_restart" and "tap again" in ev.header.message
    assert rej.header.reason == "invalid_input" and an.counters["session_restarts"] == 1
    (m,) = an.process("frames", frame_msg(1, f[3].image, session="sess2"))
    h = m.header
    assert h.session_id == "sess2" and not h.csa.tracked and h.csa.seed_rc == pytest.approx(f[0].truth.nerve_center_rc)
    assert not h.thickness.tracked and h.thickness.deep_at_rc is None  # a tap on the old image does not carry over
    assert "line_hold_lost" not in an.counters
    (m,) = an.process("frames", frame_msg(2, f[4].image, session="sess2"))  # the same session goes on tracking
    assert m.header.csa.tracked and m.header.thickness.tracked
    (other,) = an.process("frames", frame_msg(2, f[2].image, stream="s2"))
    assert other.header.csa.tracked and an.counters["session_restarts"] == 1


def test_analyzer_failed_frame_ends_holds_with_a_warning(sim_frames):
    settings = StreamSettings()
    an = Analyzer(settings)
    f = sim_frames
    c = float(f[0].image.shape[1] // 2)
    settings.update("s1", deep_at_rc=(float(f[0].truth.deep_row[int(c)]), c))
    (m,) = an.process("frames", frame_msg(0, f[0].image))
    assert m.header.thickness.deep_at_rc[1] == c
    rej, lost = an.process("frames", frame_msg(1, np.full((8, 8), 100, np.uint8)))  # the refusal, then the warning
    assert rej.header.reason == "invalid_input" and rej.header.message.startswith("analysis failed")
    assert lost.header.reason == "line_hold_lost" and "deep line" in lost.header.message
    assert an.counters["line_hold_lost"] == 1 and an.rejected["invalid_input"] == 1
    (m,) = an.process("frames", frame_msg(2, f[1].image))  # found afresh, nothing held
    assert not m.header.thickness.tracked and m.header.thickness.deep_at_rc is None


def test_analyzer_failed_frame_ending_the_csa_tracking_says_so(sim_frames):
    """An ROI that does not fit stops the analysis; the contour's tracking ends with it, and a
    warning says so (before, the CSA vanished silently once the ROI was cleared)."""
    settings = StreamSettings()
    an = Analyzer(settings)
    f = sim_frames
    settings.update("s1", seed_rc=f[0].truth.nerve_center_rc)
    (m,) = an.process("frames", frame_msg(0, f[0].image))
    (m,) = an.process("frames", frame_msg(1, f[1].image))
    assert m.header.csa.tracked
    settings.update("s1", roi=(0, 0, 5000, 400))
    rej, lost = an.process("frames", frame_msg(2, f[2].image))
    assert rej.header.reason == "bad_roi" and lost.header.reason == "csa_lost" and lost.header.level == "warning"
    assert "tap the structure again" in lost.header.message and an.counters["csa_lost"] == 1
    assert an.process("frames", frame_msg(3, f[3].image)) == []  # repeated: counted, not announced again
    assert an.counters["csa_lost"] == 1 and an.rejected["bad_roi"] == 2
    settings.update("s1", roi=None)
    (m,) = an.process("frames", frame_msg(4, f[4].image))
    assert m.header.csa is None and an.counters["csa_lost"] == 1
    # a new frame size ends the tracking too: the same warning
    settings.update("s1", seed_rc=f[5].truth.nerve_center_rc)
    (m,) = an.process("frames", frame_msg(5, f[5].image))
    assert m.header.csa is not None
    lost, m = an.process("frames", frame_msg(6, np.ascontiguousarray(f[0].image[:, :-40])))
    assert lost.header.reason == "csa_lost" and m.header.csa is None and an.counters["csa_lost"] == 2
    (m,) = an.process("frames", frame_msg(7, np.ascontiguousarray(f[1].image[:, :-40])))  # said once
    assert an.counters["csa_lost"] == 2


def test_analyzer_survives_an_unforeseen_failure_and_starts_the_stream_afresh(sim_frames, monkeypatch):
    import mmstream.nodes.analyzer as A

    settings = StreamSettings()
    an = Analyzer(settings)
    f = sim_frames
    settings.update("s1", seed_rc=f[0].truth.nerve_center_rc)
    (m,) = an.process("frames", frame_msg(0, f[0].image))
    assert m.header.csa is not None
    real = A.analyze_frame
    monkeypatch.setattr(A, "analyze_frame", lambda *a, **k: 1 / 0)  # a bug somewhere in the analysis
    (ev,) = an.process("frames", frame_msg(1, f[1].image))
    assert ev.header.level == "error" and ev.header.reason == "internal_error" and an.counters["internal_error"] == 1
    monkeypatch.setattr(A, "analyze_frame", real)
    (m,) = an.process("frames", frame_msg(2, f[2].image))  # measured again, nothing tracked from before the failure
    assert m.header.csa is None and m.header.thickness is not None and not m.header.thickness.tracked


def test_analyzer_refuses_only_the_failing_tap(sim_frames):
    """A seed and a line click in the same frame: the one that fails is refused, the other applies."""
    f = sim_frames
    c = float(f[0].image.shape[1] // 2)
    deep = (float(f[0].truth.deep_row[int(c)]), c)
    for good, bad, refused in (({"seed_rc": f[0].truth.nerve_center_rc}, {"superficial_at_rc": (5000.0, 10.0)}, "line click"),
                               ({"deep_at_rc": deep}, {"seed_rc": (5000.0, 5.0)}, "seed")):  # fmt: skip
        settings = StreamSettings()
        an = Analyzer(settings)
        settings.update("s1", **good, **bad)
        ev, m = an.process("frames", frame_msg(0, f[0].image))
        assert ev.header.message.startswith(f"{refused} refused:")
        h = m.header
        assert (h.csa is not None) == ("seed_rc" in good) and (h.thickness.deep_at_rc is not None) == ("deep_at_rc" in good)


def test_analyzer_line_clicks_hold_release_and_refuse():
    from mmstream.analysis import analyze_frame
    from mmstream_drivers.sim import SimProbe

    probe = SimProbe(seed=11)
    f = [probe.frame(i) for i in range(10)]
    settings = StreamSettings()
    an = Analyzer(settings)
    c = float(f[0].image.shape[1] // 2)
    row = lambda fr, name: float(getattr(fr.truth, name)[int(c)])  # noqa: E731
    settings.update("s1", seed_rc=f[0].truth.nerve_center_rc, deep_at_rc=(row(f[0], "deep_row") + 1.0, c))
    (m,) = an.process("frames", frame_msg(0, f[0].image))
    t = m.header.thickness
    assert not t.tracked and t.superficial_at_rc is None and t.deep_at_rc[1] == c
    assert t.deep_at_rc[0] == pytest.approx(row(f[0], "deep_row"), abs=3.0)
    (m,) = an.process("frames", frame_msg(1, f[1].image))
    assert m.header.thickness.tracked and m.header.thickness.deep_at_rc[1] == c  # held while tracked
    # a click on the other line: the deep one stays held where it is now
    settings.update("s1", superficial_at_rc=(row(f[2], "superficial_row"), c - 40))
    (m,) = an.process("frames", frame_msg(2, f[2].image))
    t = m.header.thickness
    assert not t.tracked and t.superficial_at_rc[1] == c - 40 and t.deep_at_rc[1] == c
    assert t.thickness_px == pytest.approx(f[2].truth.thickness_px, abs=3.0)
    # released one by one: held no more; both released: found afresh
    settings.update("s1", deep_at_rc=None)
    (m,) = an.process("frames", frame_msg(3, f[3].image))
    assert m.header.thickness.deep_at_rc is None and m.header.thickness.superficial_at_rc[1] == c - 40
    settings.update("s1", superficial_at_rc=None)
    (m,) = an.process("frames", frame_msg(4, f[4].image))
    fresh = analyze_frame(f[4].image, metrics=["thickness"]).thickness
    assert m.header.thickness.thickness_px == fresh.thickness_px and not m.header.thickness.tracked
    # a click the kernel refuses (outside the ROI): a warning, and the frame without it; the CSA
    # is still tracked and a later good click works
    settings.update("s1", roi=(40, 0, 400, 512), deep_at_rc=(10.0, c))
    ev, m = an.process("frames", frame_msg(5, f[5].image))
    assert isinstance(ev.header, Event) and ev.header.level == "warning" and "line click refused" in ev.header.message
    assert m.header.csa is not None and m.header.csa.tracked and m.header.thickness.deep_at_rc is None
    settings.update("s1", deep_at_rc=(row(f[6], "deep_row"), c))
    (m,) = an.process("frames", frame_msg(6, f[6].image))
    assert m.header.thickness.deep_at_rc[1] == c and m.header.csa.tracked
    # a new frame size ends the hold: a warning says so
    small = np.ascontiguousarray(f[6].image[:400])
    settings.update("s1", roi=None)
    ev, lost, m = an.process("frames", frame_msg(7, small))  # the CSA contour cannot follow either
    assert ev.header.reason == "line_hold_lost" and "deep line" in ev.header.message and lost.header.reason == "csa_lost"
    assert m.header.thickness.deep_at_rc is None and an.counters["line_hold_lost"] == 1
    # a click while thickness is not measured waits for it
    settings.update("s1", metrics=("echogenicity",), deep_at_rc=(row(f[7], "deep_row"), c - 80))
    (m,) = an.process("frames", frame_msg(8, f[7].image))
    assert m.header.thickness is None
    settings.update("s1", metrics=("thickness",))
    (m,) = an.process("frames", frame_msg(9, f[8].image))
    assert m.header.thickness.deep_at_rc[1] == c - 80 and not m.header.thickness.tracked


@pytest.mark.parametrize("spacing_mm", [(1e200, 1e200), (1e-30, 1e-30)])
def test_analyzer_takes_an_implausible_spacing_as_unknown(sim_frames, spacing_mm):
    an = Analyzer(StreamSettings())
    (m,) = an.process("frames", frame_msg(0, sim_frames[0].image, spacing_mm=spacing_mm, spacing_source="config"))
    t = m.header.thickness
    assert t.thickness_px > 0 and t.thickness_mm is None and an.counters["spacing_refused"] == 1


def test_analyzer_metric_selection_and_context(sim_frames):
    settings = StreamSettings()
    settings.update("s1", metrics=("echogenicity",), clinical=ClinicalContext(site="tibialis_anterior", side="left"))
    (m,) = Analyzer(settings).process("frames", frame_msg(0, sim_frames[0].image))
    assert m.header.thickness is None and m.header.quality is None and m.header.echogenicity.region == "frame"
    assert m.header.clinical.site == "tibialis_anterior"
    assert [b.name for b in m.header.buffers] == ["histogram"]


# -- control -----------------------------------------------------------------------------------
def control_msg(**kw) -> Decoded:
    return decode(encode(Control(**kw)))


def test_control_commands_update_settings():
    settings = StreamSettings()
    ctl = ControlNode(settings, status=lambda: {"ok": 1})
    (rep, ev) = ctl.process("requests", control_msg(command="set_seed", stream_id="p", seed_rc=(1.0, 2.0)))
    assert isinstance(rep.header, Reply) and rep.header.ok and rep.header.data["seed_version"] == 1
    assert ev.header.reason == "set_seed"
    ctl.process("requests", control_msg(command="set_roi", stream_id="p", roi=(1, 2, 30, 40)))
    ctl.process("requests", control_msg(command="set_metrics", stream_id="p", metrics=("csa",)))
    (rep, _) = ctl.process("requests", control_msg(command="set_line", stream_id="p", line="deep", at_rc=(9.0, 3.0)))
    assert rep.header.ok and rep.header.data["lines_version"] == 1 and rep.header.data["seed_version"] == 1
    ctl.process("requests", control_msg(command="set_line", stream_id="p", line="superficial", at_rc=(2.0, 3.0)))
    cfg = settings.get("p")
    assert cfg.seed_rc == (1.0, 2.0) and cfg.roi == (1, 2, 30, 40) and cfg.metrics == ("csa",)
    assert (cfg.superficial_at_rc, cfg.deep_at_rc, cfg.lines_version) == ((2.0, 3.0), (9.0, 3.0), 2)
    ctl.process("requests", control_msg(command="set_line", stream_id="p", line="deep", at_rc=None))
    cfg = settings.get("p")
    assert (cfg.superficial_at_rc, cfg.deep_at_rc, cfg.line_versions) == ((2.0, 3.0), None, (1, 2))
    ctl.process("requests", control_msg(command="set_line", stream_id="p", line="both", at_rc=None))
    cfg = settings.get("p")
    assert (cfg.superficial_at_rc, cfg.deep_at_rc, cfg.line_versions) == (None, None, (2, 3))
    (rep,) = ctl.process("requests", control_msg(command="status"))
    assert rep.header.data == {"ok": 1}


def test_capture_without_a_fusion_node_is_refused():
    """Nothing would take the frame: refused, not answered ok with nothing captured; counted and
    announced as every refusal is."""
    ctl = ControlNode(StreamSettings(), status=dict)
    rep, ev = ctl.process("requests", control_msg(command="capture", stream_id="p"))
    assert not rep.header.ok and rep.header.reason == "unsupported_command" and "no live view" in rep.header.message
    assert (ev.header.reason, ev.header.stream_id) == ("unsupported_command", "p") and ctl.rejected["unsupported_command"] == 1
    ctl.captures = True  # what attaching a fusion node or the live view does
    rep, ev = ctl.process("requests", control_msg(command="capture", stream_id="p"))
    assert rep.header.ok and ev.header.reason == "capture"


def test_control_answers_even_when_a_handler_or_the_status_fails():
    """A bug behind a command must not leave the REQ client without its reply (REP would wedge)."""
    ctl = ControlNode(StreamSettings(), status=lambda: 1 / 0)
    ctl.handlers["record_stop"] = lambda _req: open("/nonexistent/dir/file.h5", "w")
    for command in ("record_stop", "status"):
        rep, ev = ctl.process("requests", control_msg(command=command))
        assert not rep.header.ok and rep.header.reason == "internal_error" and rep.header.message
        assert ev.header.level == "error" and ev.header.reason == "internal_error"
    assert ctl.counters["internal_error"] == 2
    (rep,) = ctl.process("requests", control_msg(command="ping"))
    assert rep.header.ok


def test_settings_for_invented_streams_are_bounded():
    """A client inventing stream names cannot grow the settings without end: beyond the bound a
    new stream's settings are refused (typed, counted, replied), known streams still change."""
    settings = StreamSettings(initial={"configured": StreamConfig()}, max_streams=2)
    ctl = ControlNode(settings, status=dict)
    for sid in ("a", "b", "configured"):
        (rep, _) = ctl.process("requests", control_msg(command="set_seed", stream_id=sid, seed_rc=(1.0, 2.0)))
        assert rep.header.ok
    rep, ev = ctl.process("requests", control_msg(command="set_seed", stream_id="c", seed_rc=(1.0, 2.0)))
    assert not rep.header.ok and rep.header.reason == "too_many_streams" and "restart the service" in rep.header.message
    assert ev.header.reason == "too_many_streams" and ctl.rejected["too_many_streams"] == 1
    assert set(settings.snapshot()) == {"configured", "a", "b"} and settings.get("c") == StreamConfig()
    (rep, _) = ctl.process("requests", control_msg(command="set_roi", stream_id="a", roi=(1, 2, 30, 40)))
    assert rep.header.ok and settings.get("a").roi == (1, 2, 30, 40)


def test_a_failure_that_lasts_is_announced_once_and_counted_every_frame(sim_frames):
    """An ROI larger than the frames: every frame fails (no metrics), one warning while it lasts (it
    used to be one per frame, 30 a second), each frame counted; announced again after a good frame,
    with a new tap, and in a restarted session."""
    settings = StreamSettings()
    an = Analyzer(settings)
    img = sim_frames[0].image
    big = (0, 0, img.shape[0] + 50, img.shape[1])
    settings.update("s1", roi=big)
    outs = [an.process("frames", frame_msg(i, img)) for i in range(5)]
    assert [len(o) for o in outs] == [1, 0, 0, 0, 0] and outs[0][0].header.reason == "bad_roi"
    assert an.rejected["bad_roi"] == 5
    settings.update("s1", seed_rc=(50.0, 50.0))  # a new tap meanwhile gets its answer
    (ev,) = an.process("frames", frame_msg(5, img))
    assert ev.header.reason == "bad_roi" and an.rejected["bad_roi"] == 6
    assert an.process("frames", frame_msg(6, img)) == []
    settings.update("s1", roi=None)
    (m,) = an.process("frames", frame_msg(7, img))
    assert m.port == "metrics"
    settings.update("s1", roi=big)
    ev, lost = an.process("frames", frame_msg(8, img))  # the seed of frame 5 was tracked since frame 7
    assert ev.header.reason == "bad_roi" and an.rejected["bad_roi"] == 8 and lost.header.reason == "csa_lost"
    evs = an.process("frames", frame_msg(0, img, session="sess2"))  # a restarted source
    assert [e.header.reason for e in evs] == ["session_restart", "bad_roi"]


def test_analyzer_forgets_the_stream_seen_longest_ago_beyond_its_bound(sim_frames):
    """The tracking state of at most ``max_streams`` streams is kept; a forgotten stream that
    comes back starts as a new one (its seed applies anew), the others keep tracking."""
    settings = StreamSettings()
    an = Analyzer(settings, max_streams=2)
    f = sim_frames
    for sid in ("s1", "s2", "s3"):
        settings.update(sid, seed_rc=f[0].truth.nerve_center_rc)
    for seq, sid in enumerate(("s1", "s2", "s1", "s3")):  # s3 arrives: s2, seen longest ago, is forgotten
        (m,) = an.process("frames", frame_msg(seq, f[seq].image, stream=sid))
        assert m.header.csa.tracked == (seq == 2)
    assert an.counters["streams_forgotten"] == 1
    (m,) = an.process("frames", frame_msg(4, f[4].image, stream="s2"))  # back: the seed applies anew; s1 goes
    assert not m.header.csa.tracked and an.counters["streams_forgotten"] == 2
    (m,) = an.process("frames", frame_msg(5, f[5].image, stream="s3"))
    assert m.header.csa.tracked
    (m,) = an.process("frames", frame_msg(6, f[5].image, stream="s1"))
    assert not m.header.csa.tracked and an.counters["streams_forgotten"] == 3


def test_control_answers_undecodable_requests():
    ctl = ControlNode(StreamSettings(), status=dict)
    rep, ev = ctl.on_decode_error(CodecError("bad", reason="malformed_json"))
    assert isinstance(rep.header, Reply) and not rep.header.ok and rep.header.reason == "malformed_json"
    assert ctl.rejected["malformed_json"] == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"command": "set_seed"},  # no stream
        {"command": "set_metrics", "stream_id": "p", "metrics": ()},
        {"command": "set_roi", "stream_id": "p", "roi": (10, 10, 5, 20)},
        {"command": "set_context", "stream_id": "p"},
        {"command": "set_line", "stream_id": "p", "at_rc": (1.0, 2.0)},  # which line?
        {"command": "set_line", "stream_id": "p", "line": "middle", "at_rc": (1.0, 2.0)},
        {"command": "set_line", "stream_id": "p", "line": "deep", "at_rc": (float("nan"), 2.0)},
        {"command": "set_line", "stream_id": "p", "line": "deep", "at_rc": (1.0, 2.0, 3.0)},
        {"command": "set_line", "stream_id": "p", "line": "both", "at_rc": (1.0, 2.0)},  # both: release only
        {"command": "set_line", "line": "deep", "at_rc": (1.0, 2.0)},  # no stream
        {"command": "reboot"},
    ],
)
def test_invalid_control_requests_are_refused_by_the_model(kw):
    with pytest.raises(ValueError):
        Control(**kw)


# -- publisher ---------------------------------------------------------------------------------
def test_publisher_stamps_and_measures_latency(sim_frames):
    an = Analyzer(StreamSettings())
    pub = Publisher()
    for i in range(3):
        (m,) = an.process("frames", frame_msg(i, sim_frames[i].image, stamps={"sent": 0.0, "ingest": 0.0}))
        out, bus = pub.process("metrics", decode(encode(m.header, m.arrays)))
        assert "published" in out.header.stamps and (out.port, bus.port) == ("out", "bus")
    st = pub.status()
    assert st["streams"]["s1"]["frames"] == 3 and st["streams"]["s1"]["latency_p50_ms"] > 0
    ev_out, _ = pub.process("events", decode(encode(Event(node="x", level="info", reason="r", message="m", t_host_s=1.0))))
    assert ev_out.header.msg_type == "event" and pub.counters["events"] == 1
