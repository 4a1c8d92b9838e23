"""In-process hand-over of messages on inproc PUSH -> PULL edges: the object arrives as sent (frozen
header, read-only arrays), encoded messages still pass, tokens never leak, forged tokens are refused."""

import numpy as np
import pytest

from mmstream.codec import buffer_specs, encode
from mmstream.config import load_config
from mmstream.graph import Graph
from mmstream.handoff import TAG, Handoff
from mmstream.messages import Frame
from mmstream.source import FrameSender, SourceFrame
from mmstream.transport import make_socket
from test_graph import RANDOM_TCP, wait_for


def _frame(image):
    return Frame(stream_id="s", session_id="s-1", seq=3, buffers=buffer_specs(image=image))


def test_park_and_take_return_the_same_objects_read_only():
    ho = Handoff()
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    header = _frame(image)
    token = ho.park(header, (image,))
    assert len(token) == 1 and token[0].startswith(TAG) and len(ho) == 1
    msg = ho.take(token)
    assert msg.header is header and msg.topic == "frame.s" and msg.arrays["image"] is image
    assert not image.flags.writeable
    assert len(ho) == 0 and ho.take(token) is None  # taken once


def test_cancel_clear_and_messages_that_are_not_tokens():
    ho = Handoff()
    image = np.zeros((2, 2), np.uint8)
    t1, t2 = ho.park(_frame(image), (image,)), ho.park(_frame(image), (image,))
    ho.cancel(t1)
    assert len(ho) == 1
    ho.clear()
    assert len(ho) == 0 and ho.take(t2) is None
    assert ho.take(encode(_frame(image), [image])) is None  # an encoded message is left to the codec
    assert ho.take([TAG]) is None and ho.take([TAG + b"\x00" * 9]) is None and ho.take([b"x" * len(t1[0])]) is None


def test_graph_passes_objects_and_leaves_nothing_parked(sim_probe):
    cfg = load_config(None, endpoints=RANDOM_TCP, ingest={"max_fps_per_stream": 1e6, "burst_frames": 1000})
    img = sim_probe.frame(0).image
    with Graph(cfg) as g:
        with FrameSender(g.endpoints["ingest"], "s") as snd:
            for _ in range(50):
                snd.send(SourceFrame(image=img))
        wait_for(lambda: g.status()["nodes"]["publisher"]["counters"].get("metrics", 0)
                 + sum(g.status()["nodes"]["analyzer-0"]["queue_drops"].values()) == 50, what="every frame handled")  # fmt: skip
        wait_for(lambda: len(g._handoff) == 0, what="every parked message taken")
        published = g.status()["nodes"]["publisher"]["counters"]["metrics"]
        assert g._handoff.taken >= 50 + published  # frames to the analyzer, metrics to the publisher: objects


def test_json_between_nodes_when_the_handoff_is_off(sim_probe):
    cfg = load_config(None, endpoints=RANDOM_TCP)
    with Graph(cfg, handoff=False) as g:
        with FrameSender(g.endpoints["ingest"], "s") as snd:
            snd.send(SourceFrame(image=sim_probe.frame(0).image))
        wait_for(lambda: g.status()["streams"].get("s", {}).get("frames") == 1, what="the frame analysed and published")
        assert g._handoff is None  # every message between the nodes went as encoded parts


@pytest.mark.parametrize("forged", [[TAG + (10**9).to_bytes(8, "little")], [TAG + b"\xff" * 8]])
def test_a_forged_token_on_an_internal_endpoint_is_a_counted_decode_error(forged):
    """A token that was never parked is refused by the codec (too few parts) and counted, and the
    service goes on."""
    cfg = load_config(None, endpoints=RANDOM_TCP)
    with Graph(cfg) as g:
        sock = make_socket("push", g.events_spec().endpoint, bind=False)
        sock.send(forged, timeout_ms=2000)
        sock.close(linger_ms=1000)
        wait_for(lambda: g.status()["nodes"]["publisher"]["rejected"], what="the forged token counted")
        assert g.status()["nodes"]["publisher"]["rejected"] == {"too_few_parts": 1}
        assert all(r.is_alive() for r in g._runners)


def test_a_client_cannot_claim_a_parked_message_through_ingest(sim_probe):
    """Tokens are taken only on the graph's own internal endpoints: one sent to the ingest endpoint
    (TCP, reachable by any local client) is a bad message, and the parked message stays put."""
    cfg = load_config(None, endpoints=RANDOM_TCP)
    with Graph(cfg) as g:
        img = sim_probe.frame(0).image.copy()
        token = g._handoff.park(_frame(img), (img,))
        sock = make_socket("push", g.endpoints["ingest"], bind=False)
        sock.send(token, timeout_ms=2000)
        sock.close(linger_ms=1000)
        wait_for(lambda: g.status()["nodes"]["ingest"]["rejected"], what="the token refused at ingest")
        st = g.status()["nodes"]["ingest"]
        assert st["rejected"] == {"too_few_parts": 1} and not st["counters"].get("accepted")
        assert len(g._handoff) == 1 and g._handoff.take(token).header.stream_id == "s"


def test_park_refuses_arrays_that_do_not_match_the_header():
    img = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="2 arrays for 1 buffers"):
        Handoff().park(_frame(img), (img, img))
