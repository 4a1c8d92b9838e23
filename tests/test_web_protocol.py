"""The web view's pieces without sockets: command parsing against hostile input, frame packets,
overlays built from metrics messages, three-image captures, the [web] config section."""

import json
import struct

import cv2
import numpy as np
import pytest

from mmstream.codec import Decoded, buffer_specs
from mmstream.config import load_config
from mmstream.errors import ConfigError
from mmstream.messages import ClinicalContext, CsaSummary, EchoSummary, Event, Frame, Metrics, Volume
from mmstream.nodes.analyzer import StreamSettings
from mmstream.web.captures import CaptureBook
from mmstream.web.live import LiveView, overlay
from mmstream.web.protocol import FRAME_MAGIC, WebInputError, parse_command

MAX = 4096


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"cmd": "capture"}', "binary_message"),
        ("x" * (MAX + 1), "too_large"),
        ("{not json", "malformed_json"),
        ("", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('"capture"', "malformed_json"),
        ("[" * 5000 + "]" * 5000, "too_large"),
        ("[" * 2000 + "]" * 2000, "malformed_json"),  # nested beyond the JSON parser's recursion limit
        ('{"cmd": "rm -rf"}', "unknown_command"),
        ('{"no_cmd": 1}', "unknown_command"),
        ('{"cmd": ["capture"]}', "unknown_command"),
        ('{"cmd": "capture", "extra": 1}', "invalid_command"),
        ('{"cmd": "set_seed", "seed_rc": ["100", 20]}', "invalid_command"),
        ('{"cmd": "set_seed", "seed_rc": [NaN, 20]}', "invalid_command"),
        ('{"cmd": "set_seed", "seed_rc": [Infinity, 20]}', "invalid_command"),
        ('{"cmd": "set_seed", "seed_rc": [-1, 20]}', "invalid_command"),
        ('{"cmd": "set_seed", "seed_rc": [1, 2, 3]}', "invalid_command"),
        ('{"cmd": "set_seed"}', "invalid_command"),
        ('{"cmd": "set_line", "line": "middle", "at_rc": [100, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": ["deep"], "at_rc": [100, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "DEEP", "at_rc": [100, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [1, 2, 3]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [1]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [NaN, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [20, -Infinity]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": ["100", 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": "100,20"}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [1e300, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [100, 16385]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [-0.5, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": {"row": 1, "col": 2}}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep", "at_rc": [100, 20], "stream_id": "other"}', "invalid_command"),
        ('{"cmd": "set_line", "at_rc": [100, 20]}', "invalid_command"),
        ('{"cmd": "set_line", "line": "deep"}', "invalid_command"),
        ('{"cmd": "set_line", "line": null, "at_rc": null}', "invalid_command"),
        ('{"cmd": "set_line", "line": "both", "at_rc": [100, 20]}', "invalid_command"),  # both: release only
        ('{"cmd": "set_roi", "roi": [0, 0, 10.5, 10]}', "invalid_command"),
        ('{"cmd": "set_roi", "roi": [0, 0, 1e9, 10]}', "invalid_command"),
        ('{"cmd": "set_roi", "roi": "0,0,10,10"}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"side": "up"}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"age_years": "40"}}', "invalid_command"),  # the nested model is strict too
        ('{"cmd": "set_context", "clinical": {"age_years": true}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"age_years": "1e1"}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"age_years": [40]}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"patient_id": 123}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"site": 5}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"sex": 1}}', "invalid_command"),
        ('{"cmd": "set_context", "clinical": {"patient_id": "' + "p" * 65 + '"}}', "invalid_command"),
        ('{"cmd": "select_stream", "stream_id": "../../etc"}', "invalid_command"),
        ('{"cmd": "painted", "stream_id": "s", "seq": -1}', "invalid_command"),
        ('{"cmd": "painted", "stream_id": "s", "seq": 1, "latency_ms": 1e12}', "invalid_command"),
        ('{"cmd": "hello", "token": 12345}', "invalid_command"),
        ('{"cmd": "hello", "token": "' + "t" * 300 + '"}', "invalid_command"),
        ('{"cmd": "capture", "id": "7"}', "invalid_command"),
        ('{"cmd": "clock", "t_page_ms": true}', "invalid_command"),
    ],
)
def test_hostile_commands_are_refused_with_a_reason(raw, reason):
    with pytest.raises(WebInputError) as exc:
        parse_command(raw, MAX)
    assert exc.value.reason == reason


def test_valid_commands_parse_to_typed_models():
    seed = parse_command('{"cmd": "set_seed", "seed_rc": [290, 200.5], "id": 3}', MAX)
    assert seed.seed_rc == (290.0, 200.5) and seed.id == 3
    assert parse_command('{"cmd": "set_seed", "seed_rc": null}', MAX).seed_rc is None
    line = parse_command('{"cmd": "set_line", "line": "deep", "at_rc": [310.5, 200], "id": 4}', MAX)
    assert (line.cmd, line.line, line.at_rc, line.id) == ("set_line", "deep", (310.5, 200.0), 4)
    both = parse_command('{"cmd": "set_line", "line": "both", "at_rc": null}', MAX)
    assert (both.line, both.at_rc) == ("both", None)
    cleared = parse_command('{"cmd": "set_line", "line": "superficial", "at_rc": null}', MAX)
    assert cleared.line == "superficial" and cleared.at_rc is None
    assert parse_command('{"cmd": "set_roi", "roi": [1, 2, 30, 40]}', MAX).roi == (1, 2, 30, 40)
    ctx = parse_command('{"cmd": "set_context", "clinical": {"patient_id": "P-01", "site": "tibialis_anterior", "side": "left"}}', MAX)
    assert ctx.clinical.side == "left"
    raw = '{"cmd": "set_context", "clinical": {"site": "M. Tibialis (ant.)", "age_years": 40, "sex": "female"}}'
    ctx = parse_command(raw, MAX)
    assert (ctx.clinical.site, ctx.clinical.age_years, ctx.clinical.sex) == ("m_tibialis_ant", 40.0, "female")
    assert parse_command('{"cmd": "set_context", "clinical": {"age_years": 40.5}}', MAX).clinical.age_years == 40.5
    assert parse_command('{"cmd": "record_start"}', MAX).cmd == "record_start"


def test_paint_reports_are_matched_to_the_frames_sent_once():
    """The paint window: at most WINDOW unreported frames until ACK_TIMEOUT_S, then a new window;
    each frame sent is accepted once; a tab hidden for longer than SENT_MEMORY frames reports its
    queued paints when shown again without one refused."""
    from mmstream.web.paint import SENT_MEMORY, PaintWindow

    WINDOW, ACK_TIMEOUT_S = 2, 1.0
    pw = PaintWindow(WINDOW, ACK_TIMEOUT_S)
    for seq in range(WINDOW):
        assert pw.may_send(0.0)
        pw.sent(("s", seq), 0.0)
    assert not pw.may_send(0.5) and pw.may_send(ACK_TIMEOUT_S)
    assert pw.report(("s", 0)) == "window" and pw.may_send(0.5)
    assert pw.report(("s", 0)) == "unknown"  # reported already
    assert pw.report(("s", 99)) == "unknown" and pw.report(("other", 1)) == "unknown"  # never sent
    pw.sent(("s", 5), 0.5)
    pw.sent(("s", 6), ACK_TIMEOUT_S + 0.5)  # the ack timeout: a new window; 1 and 5 stay reportable
    assert pw.window == {("s", 6)} and pw.report(("s", 5)) == "late" and pw.report(("s", 1)) == "late"
    pw.restart()  # another stream shown: its frames' reports still match
    assert pw.report(("s", 6)) == "late" and pw.window == set()
    hidden = PaintWindow(WINDOW, ACK_TIMEOUT_S)  # a hidden tab: one frame per ack timeout, none reported
    for seq in range(SENT_MEMORY + 10):
        hidden.sent(("s", seq), seq * ACK_TIMEOUT_S)
    answers = [hidden.report(("s", seq)) for seq in range(SENT_MEMORY + 10)]  # shown again: all of them
    assert answers.count("forgotten") == 10 and "unknown" not in answers and answers[-1] == "window"


def test_frame_packet_layout_and_lazy_encoding():
    settings = StreamSettings()
    live = LiveView(settings, jpeg_quality=90)
    woken = []
    live.on_change = woken.append
    img = (np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)

    def frame(seq):
        h = Frame(stream_id="s1", session_id="sess", seq=seq, buffers=buffer_specs(image=img), stamps={"sent": 10.0 + seq})
        return Decoded("frame.s1", h, {"image": img})

    live.process("frames", frame(0))
    live.process("frames", frame(3))  # frames 1 and 2 skipped (latest-wins upstream)
    fv = live.frame("s1")
    assert fv.seq == 3 and fv.shape == (48, 64) and woken == ["s1", "s1"]
    packet = fv.packet()
    assert fv.packet() is packet  # encoded once, for every page
    assert packet[:4] == FRAME_MAGIC
    (n,) = struct.unpack("<I", packet[4:8])
    meta = json.loads(packet[8 : 8 + n])
    assert meta == {"stream_id": "s1", "seq": 3, "t_frame_s": 13.0, "shape": [48, 64], "spacing_mm": None}
    decoded = cv2.imdecode(np.frombuffer(packet[8 + n :], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded.shape == img.shape and np.abs(decoded.astype(int) - img).mean() < 3
    assert live.status()["counters"]["frames_skipped"] == 2
    assert live.streams() == ["s1"]
    vox = np.zeros((2, 3, 4), np.float32)  # ingest forwards volumes on the same tap: not a frame to show
    vol = Volume(volume_id="v1", modality="MR", spacing_mm=(1, 1, 1), origin_lps_mm=(0, 0, 0),
                 direction_lps=(1, 0, 0, 0, 1, 0, 0, 0, 1), buffers=buffer_specs(voxels=vox))  # fmt: skip
    assert live.process("frames", Decoded("volume.v1", vol, {"voxels": vox})) == []
    assert live.streams() == ["s1"] and "internal_error" not in live.status()["counters"]


def test_idle_streams_are_forgotten_as_ingest_forgets_them(monkeypatch):
    import mmstream.web.live as L

    clock = [1000.0]
    monkeypatch.setattr(L.time, "monotonic", lambda: clock[0])
    live = LiveView(StreamSettings(), idle_s=60.0)
    img = np.zeros((16, 16), np.uint8)

    def frame(sid, seq):
        h = Frame(stream_id=sid, session_id="s", seq=seq, buffers=buffer_specs(image=img))
        live.process("frames", Decoded(f"frame.{sid}", h, {"image": img}))

    frame("a", 0)
    frame("b", 0)
    clock[0] += 30.0
    live.tick(clock[0])
    frame("b", 1)
    assert live.streams() == ["a", "b"]
    clock[0] += 31.0
    live.tick(clock[0])
    assert live.streams() == ["b"] and live.frame("a") is None and live.counters["streams_forgotten"] == 1


def test_overlay_carries_contour_lines_roi_and_units():
    settings = StreamSettings()
    settings.update("s1", roi=(10, 20, 200, 300))
    contour = np.array([[100.04, 50.0], [110.0, 60.0], [100.0, 70.0]], np.float32)
    deep = np.stack([np.full(600, 220.0), np.arange(600.0)], axis=1).astype(np.float32)
    csa = CsaSummary(seed_rc=(105, 60), tracked=False, area_px=120.0, area_mm2=None, perimeter_px=40.0,
                     perimeter_mm=None, centroid_rc=(103, 60), confidence=0.9)  # fmt: skip
    h = Metrics(stream_id="s1", session_id="sess", parent=("s1", 7), csa=csa,
                stamps={"sent": 1.0, "published": 1.004}, buffers=buffer_specs(contour_rc=contour, deep_rc=deep))  # fmt: skip
    ov = overlay(h, {"contour_rc": contour, "deep_rc": deep}, settings)
    assert ov["seq"] == 7 and ov["roi"] == (10, 20, 200, 300)
    assert ov["contour_rc"][0] == [100.0, 50.0]
    assert len(ov["deep_rc"]) <= 256 and ov["deep_rc"][0] == [220.0, 0.0]
    assert ov["csa"]["area_mm2"] is None and ov["csa"]["area_px"] == 120.0  # spacing unknown: px only
    assert ov["service_latency_ms"] == pytest.approx(4.0)
    json.dumps(ov, allow_nan=False)


def test_three_image_captures_mirror_the_service_protocol():
    """Without a fusion node the frame after a ``capture`` control event is taken; with one, the
    frame its ``captured`` event names. A fourth capture starts a new set of three."""
    settings = StreamSettings()
    settings.update("s1", clinical=ClinicalContext(patient_id="P-01", site="tibialis_anterior", side="left"))

    def metrics(seq, echo):
        h = Metrics(stream_id="s1", session_id="sess", parent=("s1", seq), clinical=settings.get("s1").clinical,
                    echogenicity=EchoSummary(region="roi", mean=echo, std=1.0, n_px=100, calibrated_mean=1.25 * echo))  # fmt: skip
        return Decoded("metrics.s1", h, {})

    def event(node, reason, seq=None):
        return Decoded("event.s1", Event(node=node, level="info", reason=reason, message=reason, stream_id="s1", seq=seq,
                                         t_host_s=0.0))  # fmt: skip

    key = ("P-01", "tibialis_anterior", "left")
    late = LiveView(settings)  # metrics analysed before the command, delivered after it: not the capture
    late.process("bus", Decoded("event.s1", Event(node="control", level="info", reason="capture", message="c",
                                                  stream_id="s1", t_host_s=100.0)))  # fmt: skip
    stale = metrics(5, 40.0).header.model_copy(update={"stamps": {"analysis_start": 99.0}})
    fresh = metrics(6, 41.0).header.model_copy(update={"stamps": {"analysis_start": 100.5}})
    for h in (stale, fresh):
        late.process("bus", Decoded("metrics.s1", h, {}))
    assert [c["seq"] for c in late.captures.summary(key)["captures"]] == [6]
    alone = LiveView(settings)
    alone.process("bus", metrics(0, 10.0))  # no capture asked: not taken
    for i, echo in enumerate((60.0, 63.0, 66.0, 90.0)):
        alone.process("bus", event("control", "capture"))
        alone.process("bus", metrics(i + 1, echo))
        alone.process("bus", metrics(i + 100, 0.0))  # later frames are not captures
    summary = alone.captures.summary(key)
    assert [c["echo_mean"] for c in summary["captures"]] == [90.0] and not summary["complete"]  # a new set

    fused = LiveView(settings, fusion_attached=True)
    for seq, echo in enumerate((60.0, 63.0, 66.0)):
        fused.process("bus", metrics(seq, echo))
    fused.process("bus", event("control", "capture"))  # the fusion node decides, not this event
    assert fused.captures.summary(key)["captures"] == []
    for seq in (0, 1, 2):
        fused.process("bus", event("fusion", "captured", seq))
    summary = fused.captures.summary(key)
    assert summary["complete"] and summary["mean"]["echo_mean"] == pytest.approx(63.0)
    assert summary["mean"]["echo_calibrated"] == pytest.approx(1.25 * 63.0)  # what the fusion node keeps
    assert summary["mean"]["csa_mm2"] is None
    assert fused.note("s1")["reason"] == "captured"
    assert CaptureBook().summary(("P-01", "tibialis_anterior", "right"))["captures"] == []
    # a restarted source numbers its frames from 0 again: a ``captured`` seq never names an old-session frame
    restarted = LiveView(settings, fusion_attached=True)
    for seq, echo in enumerate((60.0, 63.0, 66.0)):
        restarted.process("bus", metrics(seq, echo))
    new = metrics(0, 99.0).header.model_copy(update={"session_id": "sess2"})
    restarted.process("bus", Decoded("metrics.s1", new, {}))
    restarted.process("bus", event("fusion", "captured", 1))
    assert [c["echo_mean"] for c in restarted.captures.summary(key)["captures"]] == [99.0]


def test_the_capture_table_restarts_a_set_when_the_calibration_changes_as_the_fusion_does():
    """Capture 1 uncalibrated, 2-4 calibrated: the fusion node restarts its set at capture 2 and keeps
    the mean of 2-4; the table shows the same set, not a 'complete' 1-3."""
    book, key = CaptureBook(), ("P-01", "soleus", "left")
    raw = {"echo_mean": 70.0, "echo_calibrated": None}
    book.add(key, raw)
    for echo in (80.0, 90.0):
        book.add(key, {"echo_mean": echo / 1.25, "echo_calibrated": echo})
    s = book.summary(key)
    assert len(s["captures"]) == 2 and not s["complete"]
    book.add(key, {"echo_mean": 56.0, "echo_calibrated": 70.0})
    s = book.summary(key)
    assert s["complete"] and s["mean"]["echo_calibrated"] == pytest.approx(80.0)


def test_web_config_section():
    cfg = load_config(None, web={"port": 0})
    assert cfg.web.host == "127.0.0.1" and cfg.web.token is None
    with pytest.raises(ConfigError, match="beyond loopback"):
        load_config(None, web={"host": "0.0.0.0"})  # every host: tests/test_config_loopback.py
    for token in ("short", "t" * 10, "t" * 15, " " + "t" * 15 + " "):  # surrounding blanks do not count
        with pytest.raises(ConfigError, match="16 characters"):
            load_config(None, web={"host": "0.0.0.0", "token": token})
    assert load_config(None, web={"host": "0.0.0.0", "token": "t" * 16}).web.token.get_secret_value() == "t" * 16
    cfg = load_config(None, web={"host": "0.0.0.0", "token": "s" * 24})
    assert "s" * 24 not in cfg.model_dump_json()  # the token never appears in dumps or logs
