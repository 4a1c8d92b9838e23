"""OpenIGTLink source and metrics output against real pyigtl peers over loopback TCP."""

import json
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pyigtl
import pytest

from mmstream.codec import decode, encode
from mmstream.config import load_config
from mmstream.errors import ProtocolError
from mmstream.privacy import file_tag
from mmstream.messages import CsaSummary, EchoSummary, Event, Metrics
from mmstream.service import Service
from mmstream.transport import make_socket
from mmstream_drivers.igtl import IgtlSource
from mmstream_drivers.igtl.output import IgtlMetricsOutput
from mmstream_drivers.igtl.wire import parse_header
from source_helpers import Running, wait_for

pytestmark = pytest.mark.timeout(60)


def image_message(k=0, rows=24, cols=32, spacing=(0.2, 0.3), ras=False, **kw):
    """IMAGE of one slice; grey level 5 k; i (columns) along +x, j (rows) along -z (a vertical plane)."""
    ijk = np.array([[spacing[1], 0, 0, 10.0], [0, 0, 1.0, 20.0], [0, -spacing[0], 0, 30.0], [0, 0, 0, 1]])
    img = np.full((1, rows, cols), 5 * k, np.uint8)
    img[0, :, 0] = 255
    return pyigtl.ImageMessage(img, ijk_to_world_matrix=ijk, world_coordinate_system="ras" if ras else "lps",
                               device_name="Image_Reference", **kw)  # fmt: skip


@pytest.fixture()
def server():
    srv = pyigtl.OpenIGTLinkServer(port=0, local_server=True)
    yield srv
    srv.stop()


class RawPeer:
    """A TCP server that sends whatever bytes the test gives each accepted connection, then closes
    its side (or, for a ``Stall(bytes)``, keeps the connection open and silent)."""

    def __init__(self, payloads):
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.port = self.listen.getsockname()[1]
        self.payloads = list(payloads)
        self.connections = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while self.payloads:
            try:
                conn, _ = self.listen.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:  # the client may drop us as soon as it has seen enough garbage
                    payload = self.payloads.pop(0)
                    conn.sendall(payload)
                    if self.payloads and not isinstance(payload, Stall):
                        conn.shutdown(socket.SHUT_WR)  # the next payload goes to the next connection
                    conn.recv(1)  # wait for the client to drop us
                except OSError:
                    pass

    def close(self):
        self.listen.close()


class Stall(bytes):
    """Bytes after which the peer goes silent without closing."""


def test_images_from_a_pyigtl_server_keep_spacing_orientation_time_and_metadata(server):
    src = IgtlSource(port=server.server_address[1])
    with Running(src) as run:
        for k in range(3):
            msg = image_message(k, timestamp=1_700_000_000.25 + k / 20)
            msg.header_version = 2
            msg.metadata = {"Depth": "40", "Probe": "L14-5", "ProbeToTrackerTransform": " ".join(["1", "0", "0", "5",
                            "0", "1", "0", "6", "0", "0", "1", "7", "0", "0", "0", "1"])}  # fmt: skip
            server.send_message(msg, wait=False)
            run.wait_frames(k + 1)
    f = run.frames
    assert [int(x.image[3, 5]) for x in f] == [0, 5, 10] and f[0].image.shape == (24, 32)
    assert f[0].spacing_mm == (0.2, 0.3) and f[0].spacing_source == "igtl_matrix"
    assert [x.t_device_s for x in f] == pytest.approx([1_700_000_000.25, 1_700_000_000.30, 1_700_000_000.35], abs=1e-6)
    m = np.reshape(f[0].transforms["ijk_to_lps"], (4, 4))
    np.testing.assert_allclose(m[:3, 0], [0.3, 0, 0], atol=1e-6)  # i = column direction
    np.testing.assert_allclose(m[:3, 1], [0, 0, -0.2], atol=1e-6)  # j = row direction
    np.testing.assert_allclose(m[:3, 3], [10, 20, 30], atol=1e-4)  # origin = pixel (0, 0)
    assert f[0].metadata == {"igtl_device": "Image_Reference", "igtl.Probe": "L14-5"}
    assert f[0].annotations == {"igtl.Depth": 40.0}
    assert f[0].transforms["probe_to_tracker"][3] == 5.0
    assert src.health.counters["frames"] == 3 and src.health.counters["connections"] == 1


def test_ras_images_are_converted_to_lps_and_unit_spacing_is_unknown(server):
    src = IgtlSource(port=server.server_address[1])
    with Running(src) as run:
        server.send_message(image_message(ras=True), wait=False)
        server.send_message(image_message(spacing=(1.0, 1.0)), wait=False)
        run.wait_frames(2)
    m = np.reshape(run.frames[0].transforms["ijk_to_lps"], (4, 4))
    np.testing.assert_allclose(m[:3, 0], [-0.3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(m[:3, 3], [-10, -20, 30], atol=1e-4)
    assert run.frames[1].spacing_mm is None and src.health.counters["spacing_placeholder"] == 1


@pytest.mark.filterwarnings("ignore:overflow encountered in dot:RuntimeWarning")  # the test peer's pyigtl packing 1e37
@pytest.mark.parametrize("spacing_mm", [150.0, 1e37])
def test_a_matrix_spacing_the_analysis_refuses_is_sent_on_as_unknown(server, spacing_mm):
    """150 mm or 1e37 mm per pixel (valid float32 on the wire) is beyond the analysis's bounds: the
    frame goes with its spacing unknown (counted and announced), never with that spacing."""
    src = IgtlSource(port=server.server_address[1])
    seen = []
    src.health.sink = seen.append
    with Running(src) as run:
        server.send_message(image_message(1, spacing=(spacing_mm, spacing_mm)), wait=False)
        server.send_message(image_message(2), wait=False)
        bad, good = run.wait_frames(2)
    assert bad.spacing_mm is None and bad.spacing_source == "unknown" and "ijk_to_lps" in bad.transforms
    assert good.spacing_mm == (0.2, 0.3)
    assert src.health.errors["spacing_invalid"] == 1 and [e.reason for e in seen] == ["spacing_invalid"]


def test_an_image_with_fields_up_to_the_frame_limits_still_goes(server):
    """The driver's own ``igtl_device`` and ``ijk_to_lps`` count against the frame's limits: a peer
    filling all 32 metadata fields loses one of them (counted), not the frame."""
    src = IgtlSource(port=server.server_address[1])
    full = image_message(2)
    full.header_version = 2
    full.metadata = {f"Note{i:02d}": "x" for i in range(32)}
    with Running(src) as run:
        server.send_message(full, wait=False)
        server.send_message(pyigtl.TransformMessage(np.eye(4), device_name="X"), wait=False)
        for k in range(3):
            server.send_message(image_message(k), wait=False)
        frames = run.wait_frames(4)
    assert len(frames[0].metadata) == 32 and frames[0].metadata["igtl_device"] == "Image_Reference"
    assert src.health.counters["fields_dropped"] == 1 and "ijk_to_lps" in frames[0].transforms


def test_non_image_and_unusable_images_are_skipped_and_the_connection_stays(server):
    src = IgtlSource(port=server.server_address[1], device="Image_Reference")
    with Running(src) as run:
        server.send_message(pyigtl.TransformMessage(np.eye(4), device_name="ProbeToTracker"), wait=False)
        volume = pyigtl.ImageMessage(np.zeros((2, 8, 8), np.uint8), device_name="Image_Reference")
        server.send_message(volume, wait=False)
        server.send_message(pyigtl.ImageMessage(np.full((1, 8, 8), 0.5, np.float32), device_name="Image_Reference"),
                            wait=False)  # fmt: skip
        server.send_message(pyigtl.ImageMessage(np.full((1, 8, 8), 900, np.uint16), device_name="Image_Reference"),
                            wait=False)  # fmt: skip
        other = image_message(7)
        other.device_name = "OtherImage"
        server.send_message(other, wait=False)
        server.send_message(image_message(3), wait=False)
        [frame] = run.wait_frames(1)
    assert int(frame.image[3, 5]) == 15
    c, e = src.health.counters, src.health.errors
    assert c["skipped_transform"] == 1 and c["skipped_image"] == 1
    assert e["igtl_not_2d"] == 1 and e["unsupported_dtype"] == 1 and e["unsupported_bit_depth"] == 1
    assert c["connections"] == 1  # bad content is a bad message, not a bad stream


def test_reconnects_with_backoff_when_the_server_goes_away_and_comes_back():
    first = pyigtl.OpenIGTLinkServer(port=0, local_server=True)
    port = first.server_address[1]
    src = IgtlSource(port=port, backoff_initial_s=0.02, backoff_max_s=0.2)
    with Running(src) as run:
        first.send_message(image_message(1), wait=False)
        run.wait_frames(1)
        first.stop()
        wait_for(lambda: src.health.errors["igtl_closed"] + src.health.errors["connect_failed"] >= 2,
                 what="the loss to be noticed and a reconnect to fail")  # fmt: skip
        second = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        try:
            second.send_message(image_message(2), wait=False)
            run.wait_frames(2)
        finally:
            second.stop()
    assert int(run.frames[1].image[3, 5]) == 10
    assert src.health.counters["reconnects"] >= 1


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 40, "igtl_garbage"),  # wrong protocol
        (struct.pack(">H12s20sIIQQ", 1, b"IMAGE", b"x", 0, 0, 1 << 40, 0), "igtl_too_large"),
        (struct.pack(">H12s20sIIQQ", 1, b"IM\x01GE", b"x", 0, 0, 4, 0) + b"abcd", "igtl_garbage"),
        (struct.pack(">H12s20sIIQQ", 1, b"STRING", b"x", 0, 0, 4, 12345) + b"abcd", "igtl_crc"),
        (image_message().pack()[:500], "igtl_closed"),  # the peer stops inside a message
    ],
)
def test_garbage_from_the_peer_is_counted_announced_and_followed_by_a_reconnect(garbage, reason):
    peer = RawPeer([garbage, image_message(4).pack()])
    src = IgtlSource(port=peer.port, backoff_initial_s=0.01, backoff_max_s=0.05)
    seen = []
    src.health.sink = seen.append
    try:
        with Running(src) as run:
            [frame] = run.wait_frames(1)
    finally:
        peer.close()
    assert int(frame.image[3, 5]) == 20  # served again after the garbage
    assert src.health.errors[reason] == 1 and src.health.counters["reconnects"] == 1
    assert [e.reason for e in seen] == [reason] and seen[0].level == "error"


def test_header_parser_refuses_hostile_headers():
    ok = image_message().pack()[:58]
    assert parse_header(ok, 1 << 20)["message_type"] == "IMAGE"
    for bad in (ok[:57], b"\xff" * 58, struct.pack(">H12s20sIIQQ", 1, b"", b"x", 0, 0, 0, 0)):
        with pytest.raises(ProtocolError):
            parse_header(bad, 1 << 20)


# --- metrics output -----------------------------------------------------------------------------


def _metrics(seq, spacing=(0.1, 0.2)):
    csa = CsaSummary(seed_rc=(10, 20), tracked=True, area_px=50.0, area_mm2=1.0, perimeter_px=30.0,
                     perimeter_mm=4.5, centroid_rc=(12.0, 21.0), confidence=0.8)  # fmt: skip
    m = Metrics(stream_id="probe", session_id="s-1", parent=("probe", seq), t_device_s=seq / 30, spacing_mm=spacing,
                echogenicity=EchoSummary(region="csa", mean=87.5, std=3.0, n_px=50), csa=csa)  # fmt: skip
    return decode(encode(m))


@pytest.fixture()
def output():
    node = IgtlMetricsOutput(port=0, client_queue_messages=8).start()
    yield node
    node.close()


def test_output_sends_metrics_as_string_and_csa_centroid_as_point(output):
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", output.address[1])
    try:
        wait_for(lambda: output.server.n_clients == 1, what="client connected")
        output.process("bus", _metrics(7))
        text = client.wait_for_message("mmstream_metrics", timeout=5)
        point = client.wait_for_message("mmstream_csa", timeout=5)
    finally:
        client.stop()
    rec = json.loads(text.string)
    assert rec["stream_id"] == "probe" and rec["seq"] == 7 and rec["echo_mean"] == 87.5
    assert rec["csa_area_mm2"] == 1.0 and rec["thickness_mm"] is None
    assert point.names == ["probe"] and point.groups == ["csa_centroid"]
    assert point.positions[0] == pytest.approx((21.0 * 0.2, 12.0 * 0.1, 0.0))
    assert output.counters["metrics_sent"] == 1


def test_output_sends_no_point_without_spacing_and_forwards_events(output):
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", output.address[1])
    try:
        wait_for(lambda: output.server.n_clients == 1, what="client connected")
        output.process("bus", _metrics(1, spacing=None))
        ev = Event(node="source-igtl", level="error", reason="igtl_crc", message="CRC mismatch é", t_host_s=1.0)
        output.process("bus", decode(encode(ev)))
        text = client.wait_for_message("mmstream_event", timeout=5)
        assert client.wait_for_message("mmstream_csa", timeout=0.3) is None
    finally:
        client.stop()
    assert text.string.startswith("error source-igtl igtl_crc: CRC mismatch")


@pytest.mark.parametrize("spacing_mm", [150.0, 1e37])
def test_a_spacing_the_analysis_refuses_is_unknown_in_the_metrics_and_gives_no_point(sim_probe, spacing_mm):
    """A frame whose spacing the analysis refuses (150 mm per pixel, 1e37 mm) is measured in pixels;
    its metrics say the spacing is unknown, so the OpenIGTLink output sends a STRING with
    ``spacing_mm`` null and no POINT (it sent [150, 150] and a point at (30000, 43500, 0) mm, or inf)."""
    from dataclasses import replace

    from mmstream.source import FrameSender
    from test_graph import RANDOM_TCP, request

    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, igtl_output={"enabled": True, "port": 0})
    with Service(cfg) as svc:
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", svc.igtl_output.address[1])
        f0 = sim_probe.frame(0)
        try:
            assert request(svc.graph.endpoints["control"], command="set_seed", stream_id="probe",
                           seed_rc=f0.truth.nerve_center_rc).ok  # fmt: skip
            with FrameSender(svc.graph.endpoints["ingest"], "probe") as sender:
                for i in range(3):
                    sender.send(replace(sim_probe.frame(i).to_source(), spacing_mm=(spacing_mm, spacing_mm),
                                        spacing_source="config"))  # fmt: skip

                def measured():
                    msg = client.wait_for_message("mmstream_metrics", timeout=0.5)
                    return msg is not None and (rec := json.loads(msg.string))["csa_area_px"] is not None and rec
                rec = wait_for(measured, 20, "a metrics STRING with a CSA")
            point = client.wait_for_message("mmstream_csa", timeout=0.5)  # sent right after its STRING, if at all
        finally:
            client.stop()
        st = svc.graph.status()["nodes"]
    assert rec["spacing_mm"] is None and rec["csa_area_mm2"] is None and rec["csa_perimeter_mm"] is None
    assert rec["csa_area_px"] > 0 and point is None
    assert st["analyzer-0"]["counters"]["spacing_refused"] >= 1 and st["igtl-output"]["counters"]["metrics_sent"] >= 1


def test_garbage_client_is_dropped_and_the_others_keep_receiving(output):
    good = pyigtl.OpenIGTLinkClient("127.0.0.1", output.address[1])
    bad = socket.create_connection(("127.0.0.1", output.address[1]))
    try:
        wait_for(lambda: output.server.n_clients == 2, what="two clients")
        bad.sendall(b"\x00\x07" + b"junk" * 20)
        wait_for(lambda: output.counters["garbage"] == 1, what="garbage counted")
        assert bad.recv(10) == b""  # closed by the server
        assert [e.header.reason for e in output.tick(0.0)] == ["igtl_garbage"]
        assert output.process("bus", _metrics(2)) == []
        assert json.loads(good.wait_for_message("mmstream_metrics", timeout=5).string)["seq"] == 2
        assert output.server.n_clients == 1
    finally:
        good.stop()
        bad.close()


@pytest.mark.shared_data
def test_service_streams_a_configured_source_and_publishes_metrics_over_openigtlink(shared_data):
    """`mmstream serve` wiring: a DICOM cine source from the config, metrics out to a pyigtl client."""
    cfg = load_config(
        None,
        endpoints={"ingest": "tcp://127.0.0.1:*", "metrics": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"},
        web={"enabled": False},
        igtl_output={"enabled": True, "port": 0},
        sources=[
            {"driver": "dicom", "stream_id": "cine", "options": {
                "path": str(shared_data / "dicom-us" / "color3d_jpeg_baseline.dcm"), "loop": True}},
            {"driver": "video", "stream_id": "grabber", "options": {"url": "/nonexistent/grabber.avi", "live": True}},
            {"driver": "mha", "stream_id": "missing", "options": {"path": "x.mha"}},
        ],
    )  # fmt: skip
    with Service(cfg) as svc:
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", svc.igtl_output.address[1])
        events = make_socket("sub", svc.graph.endpoints["metrics"], bind=False)
        try:
            msg = wait_for(lambda: client.wait_for_message("mmstream_metrics", timeout=0.5), 30, "metrics over IGTL")
            # the absent grabber's retries arrive as events of the service, tagged with its stream
            ev = wait_for(lambda: _event_from(events, "source-video"), 10, "an event of the video source")
        finally:
            client.stop()
            events.close()
        status = svc.graph.status()
    assert ev.reason == "device_unavailable" and ev.stream_id == "grabber"
    assert status["sources"]["grabber"]["errors"]["device_unavailable"] >= 1
    assert file_tag("x.mha") in status["source_errors"]["missing"]  # a source that fails running: named (by a hash), the rest runs
    rec = json.loads(msg.string)
    assert rec["stream_id"] == "cine" and rec["spacing_mm"] == pytest.approx([0.5104970559, 0.5104970559])
    assert rec["echo_mean"] is not None
    assert status["sources"]["cine"]["counters"]["frames"] >= 1


def _event_from(sock, node):
    parts = sock.try_recv()
    while parts is not None:
        h = decode(parts).header
        if h.msg_type == "event" and h.node == node:
            return h
        parts = sock.try_recv()
    return None


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 1000, 307_201])
def test_crc64_matches_pyigtl(size, rng):
    from pyigtl.messages import CRC64

    from mmstream_drivers.igtl.crc import crc64

    body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc64(body) == CRC64(body)
    assert crc64(memoryview(bytearray(body))[1:]) == CRC64(body[1:])  # unaligned view


CHILD_EMFILE = """
import os, resource, socket, sys, time
from pyigtl.messages import StringMessage
from mmstream_drivers.igtl.output import IgtlServer
events, counts = [], []
srv = IgtlServer("127.0.0.1", 0, max_clients=8, queue_len=4, on_event=lambda *a: events.append(a[1]), count=counts.append).start()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
hog = []
try:
    while True:
        hog.append(open(os.devnull))
except OSError:
    pass
hog.pop().close()
c1 = socket.create_connection(srv.address)  # this process's last descriptor: the server's accept() gets EMFILE
deadline = time.monotonic() + 5
while "igtl_accept_failed" not in events and time.monotonic() < deadline:
    time.sleep(0.05)
for f in hog:
    f.close()
c2 = socket.create_connection(srv.address)
deadline = time.monotonic() + 5
while counts.count("clients_connected") < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
srv.broadcast(StringMessage("x", device_name="d").pack())
c2.settimeout(3)
print(srv._thread.is_alive(), "igtl_accept_failed" in events, len(c2.recv(4096)) > 0)
"""


def test_output_server_survives_running_out_of_descriptors(tmp_path):
    """accept() failing with EMFILE is announced and the server goes on serving (in a child process:
    the descriptor limit is the process's)."""
    (tmp_path / "child.py").write_text(CHILD_EMFILE)
    out = subprocess.run([sys.executable, str(tmp_path / "child.py")], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr[-2000:]


def test_output_config_refuses_remote_hosts_unless_allowed():
    from mmstream.errors import ConfigError

    with pytest.raises(ConfigError, match="allow_remote"):
        load_config(None, igtl_output={"enabled": True, "host": "0.0.0.0"})
    cfg = load_config(None, igtl_output={"enabled": True, "host": "0.0.0.0", "allow_remote": True})
    assert cfg.igtl_output.allow_remote
    with pytest.raises(ConfigError):
        load_config(None, igtl_output={"string_device": "x" * 21})  # OpenIGTLink device names hold 20 bytes


@pytest.mark.parametrize("kw", [{"port": "abc"}, {"port": 70000}, {"max_body_mb": 0}, {"spacing_row_mm": "x",
                                "spacing_col_mm": 1}])  # fmt: skip
def test_bad_source_options_are_config_errors(kw):
    from mmstream.errors import ConfigError, SpacingError

    with pytest.raises((ConfigError, SpacingError)):
        IgtlSource(**kw)


def test_a_client_that_does_not_read_loses_whole_messages_only(output):
    """Queue overflow drops the oldest unsent messages; what the client reads stays valid OpenIGTLink."""
    from mmstream_drivers.igtl.wire import MessageReader

    slow = socket.create_connection(("127.0.0.1", output.address[1]))
    try:
        wait_for(lambda: output.server.n_clients == 1, what="client connected")
        sent = 300
        for i in range(sent):
            output.server.broadcast(pyigtl.StringMessage(f"{i:05d}" + "x" * 60000, device_name="big").pack())
        wait_for(lambda: output.counters["dropped_messages"] > 0, what="drops for the slow client")
        slow.settimeout(0.2)
        reader = MessageReader(slow, max_body_bytes=1 << 20, stall_timeout_s=2.0)
        seen = []
        while (got := reader.read(idle_timeout_s=1.0)) is not None:  # CRC and framing checked
            seen.append(int(bytes(got[1][4:9])))
    finally:
        slow.close()
    assert seen == sorted(seen) and len(seen) + output.counters["dropped_messages"] == sent
    assert seen[-1] == sent - 1  # the newest always arrives


def test_clients_that_never_read_lose_their_slots_and_a_reader_gets_in():
    """Connections that never read or send held every slot for good, and 3D Slicer was refused
    (igtl_too_many_clients). A client whose messages wait and who takes none of their bytes for
    ``client_idle_s`` is disconnected; the sockets have TCP keepalive on."""
    out = IgtlMetricsOutput(port=0, max_clients=2, client_idle_s=0.5).start()
    dead = [socket.create_connection(("127.0.0.1", out.address[1])) for _ in range(2)]
    reader = None
    try:
        wait_for(lambda: out.server.n_clients == 2, what="two connections")
        with out.server._lock:
            assert all(c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) for c in out.server._clients.values())

        def broadcast_until_dropped():
            out.server.broadcast(pyigtl.StringMessage("x" * 60000, device_name="big").pack())
            return out.counters["clients_stalled"] == 2
        wait_for(broadcast_until_dropped, 30, "both non-readers disconnected")
        assert out.server.n_clients == 0 and out.rejected["igtl_client_stalled"] == 2
        assert [e.header.reason for e in out.tick(0.0)] == ["igtl_client_stalled"] * 2
        reader = pyigtl.OpenIGTLinkClient("127.0.0.1", out.address[1])
        wait_for(lambda: out.server.n_clients == 1, what="the reader connected")
        out.process("bus", _metrics(3))
        assert json.loads(reader.wait_for_message("mmstream_metrics", timeout=5).string)["seq"] == 3
    finally:
        for s in dead:
            s.close()
        if reader is not None:
            reader.stop()
        out.close()


def test_a_new_client_takes_the_slot_of_the_longest_idle_one_when_all_are_taken():
    """With nothing to send no client can be seen not reading; a new client then takes the place of
    the one idle (no byte either way) for ``client_idle_s`` or more, and is refused only while every
    connected client showed life more recently. The output's own events (refused, evicted clients)
    are not sent to the clients (each refusal made every idle client look alive)."""
    out = IgtlMetricsOutput(port=0, max_clients=2, client_idle_s=0.3).start()
    idle = [socket.create_connection(("127.0.0.1", out.address[1])) for _ in range(2)]
    newcomers = []
    try:
        wait_for(lambda: out.server.n_clients == 2, what="two idle connections")

        def newcomer_admitted():  # refused while the idle ones are younger than client_idle_s
            newcomers.append(socket.create_connection(("127.0.0.1", out.address[1])))
            wait_for(lambda: out.counters["clients_evicted"] + out.counters["refused_clients"] == len(newcomers),
                     what="the newcomer admitted or refused")  # fmt: skip
            return out.counters["clients_evicted"] == 1
        wait_for(newcomer_admitted, 10, "a newcomer admitted in an idle client's place")
        idle[0].settimeout(5)
        assert idle[0].recv(10) == b""  # the oldest idle one was closed
        assert out.server.n_clients == 2
        own = out.tick(0.0)  # its events (refused, evicted) come back on the bus: not for the clients
        assert {e.header.reason for e in own} <= {"igtl_too_many_clients", "igtl_client_evicted"}
        for e in own:
            out.process("bus", decode(encode(e.header)))
        out.process("bus", _metrics(4))
        newcomers[-1].settimeout(5)
        head = newcomers[-1].recv(58)
        assert head[2:8] == b"STRING" and head[14:30] == b"mmstream_metrics"  # served, its first message the metrics
    finally:
        for s in idle + newcomers:
            s.close()
        out.close()


def test_a_peer_that_stalls_inside_a_message_is_dropped_after_the_stall_timeout():
    peer = RawPeer([Stall(image_message().pack()[:500]), image_message(6).pack()])  # 898-byte message cut
    src = IgtlSource(port=peer.port, stall_timeout_s=0.3, backoff_initial_s=0.01)
    try:
        with Running(src) as run:
            [frame] = run.wait_frames(1)
    finally:
        peer.close()
    assert int(frame.image[3, 5]) == 30 and src.health.errors["igtl_stalled"] == 1
