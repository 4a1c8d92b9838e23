"""Ingest: the service's front door for frames (and volumes) from drivers.

Checks what the codec cannot (sequence numbers per stream, rate per stream, a frame too small to
analyse: under 64 x 16, `frame_too_small`), stamps the host time,
and forwards accepted frames on ``frames`` (to the analyzers) and ``accepted`` (to subscribers such
as the recorder). Volumes (DICOM SCP, watch folder; ``mmstream.volumes``) go to ``accepted`` only,
topic ``volume.<volume_id>``. Each rejection is counted by reason and announced as an
event; a bad message never stops the node, and valid streams interleaved with bad ones lose nothing.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from mmstream.codec import Decoded
from mmstream.kernels.quality import MIN_SHAPE
from mmstream.messages import Frame, Volume
from mmstream.nodes.base import Node, Out, Port


@dataclass(frozen=True)
class IngestLimits:
    """Per-stream rate limit (token bucket: ``max_fps`` sustained, ``burst`` frames at once; the
    bucket is the stream's, across its sources' sessions) and at most ``max_streams`` streams (a new
    one beyond it takes the place of one idle for ``idle_s``, else is refused)."""

    max_fps: float = 1000.0
    burst: int = 60
    max_streams: int = 64
    idle_s: float = 60.0


class _StreamState:
    __slots__ = ("session_id", "last_seq", "tokens", "t_last", "t_seen", "accepted", "gaps")

    def __init__(self, session_id: str, burst: int, now: float):
        self.session_id = session_id
        self.last_seq = -1
        self.tokens = float(burst)
        self.t_last = now  # of the token bucket's last refill
        self.t_seen = now  # of the stream's last frame
        self.accepted = 0
        self.gaps = 0


class Ingest(Node):
    name = "ingest"
    inputs = (Port("in", capacity=64, policy="block"),)
    outputs = (Port("frames"), Port("accepted"), Port("events"))

    def __init__(self, limits: IngestLimits = IngestLimits(), name: str | None = None):
        super().__init__(name)
        self.limits = limits
        self._streams: dict[str, _StreamState] = {}

    def _room_for_a_stream(self, now: float) -> bool:
        """Whether a new stream fits, forgetting the longest-idle stream if that makes room."""
        if len(self._streams) < self.limits.max_streams:
            return True
        sid, st = min(self._streams.items(), key=lambda kv: kv[1].t_seen)
        if now - st.t_seen < self.limits.idle_s:
            return False
        del self._streams[sid]
        self.count("streams_forgotten")
        return True

    def process(self, port: str, msg: Decoded) -> list[Out]:
        h = msg.header
        if isinstance(h, Volume):  # the codec checked buffer sizes and limits; analyzers take frames only
            self.count("volumes_accepted")
            return [Out("accepted", h, (msg.arrays["voxels"],))]
        if not isinstance(h, Frame):
            return [self.reject("unexpected_msg_type", f"ingest takes frames and volumes, got {h.msg_type}")]
        shape = msg.arrays["image"].shape
        if shape[0] < MIN_SHAPE[0] or shape[1] < MIN_SHAPE[1]:  # nothing could analyse it
            return [self.reject("frame_too_small", f"frame {shape[0]}x{shape[1]} is smaller than the "
                                f"{MIN_SHAPE[0]}x{MIN_SHAPE[1]} the analysis takes", h.stream_id, h.seq)]  # fmt: skip
        now = time.monotonic()
        st = self._streams.get(h.stream_id)
        if st is None and not self._room_for_a_stream(now):
            return [self.reject("too_many_streams", f"over {self.limits.max_streams} streams, none idle", h.stream_id, h.seq)]
        if st is None or st.session_id != h.session_id:  # new stream, or its source restarted
            prev, st = st, _StreamState(h.session_id, self.limits.burst, now)
            if prev is not None:  # a new session per frame must not refill the bucket
                st.tokens, st.t_last = prev.tokens, prev.t_last
            self._streams[h.stream_id] = st
        st.t_seen = now
        if h.seq <= st.last_seq:
            return [self.reject("seq_not_increasing", f"seq {h.seq} after {st.last_seq}", h.stream_id, h.seq)]
        st.tokens = min(float(self.limits.burst), st.tokens + (now - st.t_last) * self.limits.max_fps)
        st.t_last = now
        if st.tokens < 1.0:
            return [self.reject("rate_limited", f"over {self.limits.max_fps:g} frames/s", h.stream_id, h.seq)]
        st.tokens -= 1.0
        if st.last_seq >= 0 and h.seq > st.last_seq + 1:
            st.gaps += h.seq - st.last_seq - 1
            self.count("seq_gap_frames", h.seq - st.last_seq - 1)
        st.last_seq = h.seq
        st.accepted += 1
        self.count("accepted")
        stamped = h.model_copy(
            update={
                "t_host_s": now,
                "t_wall": h.t_wall or datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "stamps": {**h.stamps, "ingest": now},
            }
        )
        image = (msg.arrays["image"],)
        return [Out("frames", stamped, image), Out("accepted", stamped, image)]

    def status(self) -> dict:
        out = super().status()
        out["streams"] = {
            sid: {"accepted": s.accepted, "last_seq": s.last_seq, "seq_gap_frames": s.gaps}
            for sid, s in list(self._streams.items())
        }
        return out
