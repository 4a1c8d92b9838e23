"""``pump``: a patient sender waits out a service that pushes back, and still stops on request."""

import threading

import numpy as np
import pytest

from mmstream.source import FrameSender, SourceFrame, pump
from mmstream.transport import TransportTimeout, make_socket
from test_graph import wait_for

FRAMES = [SourceFrame(image=np.full((512, 512), k, np.uint8)) for k in range(40)]  # 10 MB: more than socket buffers hold


@pytest.fixture()
def stalled_receiver(tmp_path):
    """A PULL socket (high-water mark 1) that nobody reads until the test says so."""
    sock = make_socket("pull", f"ipc://{tmp_path}/in", bind=True, hwm=1)
    yield sock
    sock.close()


def _run(target, **kw):
    out = {}
    t = threading.Thread(target=lambda: out.update(n=target(**kw)), daemon=True)
    t.start()
    return t, out


def test_a_frame_the_sender_refuses_is_skipped_and_counted(tmp_path):
    """One bad frame (empty, 16-bit, too many metadata fields) never ends a live source."""
    from mmstream.codec import decode

    pull = make_socket("pull", f"ipc://{tmp_path}/in2", bind=True)
    good = SourceFrame(image=np.full((8, 8), 7, np.uint8))
    bad = [SourceFrame(image=np.zeros((0, 8), np.uint8)), SourceFrame(image=np.zeros((8, 8), np.uint16)),
           SourceFrame(image=np.zeros((8, 8), np.uint8), metadata={f"k{i}": "v" for i in range(40)})]  # fmt: skip
    try:
        with FrameSender(f"ipc://{tmp_path}/in2", "s") as sender:
            assert pump([good, *bad, good], sender, realtime=False) == 2
            assert sender.invalid_frames == 3
        got = [decode(pull.recv(timeout_ms=2000)).header.seq for _ in range(2)]
    finally:
        pull.close()
    assert got == [0, 1]


def test_patient_pump_waits_for_the_receiver_and_loses_nothing(stalled_receiver):
    stop = threading.Event()
    with FrameSender(stalled_receiver.last_endpoint, "s", hwm=1) as snd:
        t, out = _run(pump, frames=FRAMES, sender=snd, realtime=False, stop=stop, patient=True)
        wait_for(lambda: snd.seq > 0, what="the first frames queued")
        t.join(0.6)  # longer than a patience slice: the pump must still be waiting, not failing
        assert t.is_alive() and snd.seq < len(FRAMES)
        got = [stalled_receiver.recv(timeout_ms=5000) for _ in FRAMES]  # the service catches up
        t.join(10)
    assert out["n"] == len(FRAMES) and len(got) == len(FRAMES)


def test_patient_pump_stops_on_request(stalled_receiver):
    stop = threading.Event()
    with FrameSender(stalled_receiver.last_endpoint, "s", hwm=1) as snd:
        t, out = _run(pump, frames=FRAMES, sender=snd, realtime=False, stop=stop, patient=True)
        wait_for(lambda: snd.seq > 0, what="the first frames queued")
        stop.set()
        t.join(5)
        assert not t.is_alive() and 0 < out["n"] < len(FRAMES)
        snd.close(linger_ms=0)


def test_impatient_pump_raises_when_the_receiver_stays_full(stalled_receiver):
    with FrameSender(stalled_receiver.last_endpoint, "s", hwm=1) as snd:
        snd.send(FRAMES[0], timeout_ms=1000)
        with pytest.raises(TransportTimeout):
            while True:
                snd.send(FRAMES[1], timeout_ms=100)
        snd.close(linger_ms=0)


def test_a_jump_in_the_frame_times_is_not_waited_for(tmp_path):
    """Realtime pacing by device time: a frame 1e9 s after the previous one (a file's absurd
    timestamps) is sent at once, counted as a pace jump, and the pacing restarts from it."""
    import time

    pull = make_socket("pull", f"ipc://{tmp_path}/in3", bind=True)
    img = np.full((8, 8), 7, np.uint8)
    frames = [SourceFrame(image=img, t_device_s=t) for t in (0.0, 0.02, 1e9, 1e9 + 0.02)]
    try:
        with FrameSender(f"ipc://{tmp_path}/in3", "s") as sender:
            t0 = time.monotonic()
            assert pump(frames, sender, realtime=True) == 4
            assert time.monotonic() - t0 < 5.0 and sender.pace_jumps == 1  # about 40 ms of pacing in all
        assert len([pull.recv(timeout_ms=2000) for _ in range(4)]) == 4
    finally:
        pull.close()


def _paced(tmp_path, frames, **kw):
    """Pump ``frames`` into a real PULL socket; returns (seconds taken, the sender, headers received)."""
    import time

    from mmstream.codec import decode

    pull = make_socket("pull", f"ipc://{tmp_path}/paced", bind=True)
    try:
        with FrameSender(f"ipc://{tmp_path}/paced", "s") as sender:
            t0 = time.monotonic()
            n = pump(frames, sender, **kw)
            took = time.monotonic() - t0
        got = [decode(pull.recv(timeout_ms=2000)).header for _ in range(n)]
    finally:
        pull.close()
    return took, sender, got


def test_frame_times_going_back_restart_the_pacing(tmp_path):
    """A clock (or a file's timestamps) starting again: the frames after the restart are paced from
    it, not sent at once as 'late' (they were: 78-87 of 300 lost to ingest's rate limit)."""
    img = np.full((8, 8), 7, np.uint8)
    times = (100.0, 100.05, 100.1, 0.0, 0.05, 0.1, 0.15)
    took, sender, got = _paced(tmp_path, [SourceFrame(image=img, t_device_s=t) for t in times], realtime=True)
    assert took >= (0.1 + 0.15) * 0.95 and sender.pace_jumps == 1  # the old pacing took 0.1 s
    assert [h.t_device_s for h in got] == list(times)  # the frames keep their times


def test_frames_never_leave_faster_than_the_services_rate_limit(tmp_path):
    """``realtime = false`` (and realtime frames due at once) go no faster than ``max_fps``, the
    service's per-stream ingest limit, which refuses (loses) frames beyond it."""
    img = np.full((8, 8), 7, np.uint8)
    took, _, got = _paced(tmp_path, [SourceFrame(image=img) for _ in range(21)], realtime=False, max_fps=100.0)
    assert len(got) == 21 and took >= 0.2 * 0.95
    sent = np.array([h.stamps["sent"] for h in got])
    assert (sent - sent[0] >= np.arange(21) * 0.01 - 0.002).all()  # frame k is due k / max_fps after the first
    burst = [SourceFrame(image=img, t_device_s=0.0) for _ in range(11)]  # all due at once
    took, _, _ = _paced(tmp_path, burst, realtime=True, max_fps=100.0)
    assert took >= 0.1 * 0.95


def test_the_rate_limit_is_reached_by_deadline_not_lowered_by_sleep_overshoot(tmp_path):
    """Each frame is due 1 / max_fps after the previous one was due, not after the previous sleep
    ended: the oversleeping of every wait does not add up (it held 1000/s to about 900/s)."""
    img = np.full((8, 8), 7, np.uint8)
    _, _, got = _paced(tmp_path, [SourceFrame(image=img) for _ in range(501)], realtime=False, max_fps=1000.0)
    sent = np.array([h.stamps["sent"] for h in got])
    assert (sent - sent[0] >= np.arange(501) * 0.001 - 0.002).all()  # never ahead of the limit
    gaps = np.diff(sent)
    regular = gaps[gaps < 0.003]  # leaving out the machine's stalls (after one the schedule starts again)
    assert len(regular) > 400 and regular.mean() < 0.00103, regular.mean()  # it was 1.1 ms (~900/s)


def test_the_sender_refuses_frames_larger_than_the_service_takes(tmp_path):
    """The service's codec refuses a frame over [ingest] max_frame_rows/cols (too_large, lost at
    ingest, the source none the wiser): the sender refuses it first, and pump counts it."""
    from mmstream.errors import InputError

    ok, tall = np.zeros((100, 20), np.uint8), np.zeros((101, 20), np.uint8)
    with FrameSender(f"ipc://{tmp_path}/x", "s", max_frame_shape=(100, 100)) as sender:
        with pytest.raises(InputError, match="larger than the service takes") as exc:
            sender.send(SourceFrame(image=tall), timeout_ms=0)
        assert exc.value.reason == "too_large" and sender.seq == 0
    took, sender, got = _paced(tmp_path, [SourceFrame(image=ok), SourceFrame(image=np.zeros((4097, 20), np.uint8))],
                               realtime=False)  # the default: the default configuration's 4096 x 4096
    assert len(got) == 1 and sender.invalid_frames == 1
