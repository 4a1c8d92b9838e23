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
