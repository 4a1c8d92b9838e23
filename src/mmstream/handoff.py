"""In-process hand-over of messages between the nodes of one graph.

On an ``inproc://`` PUSH -> PULL edge both ends live in the same process, so encoding the header to
JSON and validating it again on the other side is pure cost (tens of microseconds hot, hundreds after
the thread slept between frames). :class:`Handoff` parks the message object and sends only a token
(:data:`TAG` + an 8-byte key) through ZeroMQ, which still does the wake-up, the ordering and the
high-water mark; the receiver takes the object back. Headers are frozen models, arrays are made
read-only, as after :func:`mmstream.codec.decode`. Every other edge (PUB taps, TCP, IPC) carries
encoded messages, and a PULL socket accepts both, so senders outside the graph need not know.
"""

import itertools
import threading

from mmstream.codec import Decoded, topic_for

TAG = b"\x00mmstream-handoff"
_KEY_BYTES = 8


class Handoff:
    """The parking place of one graph; :meth:`clear` when the graph stops (tokens left unread)."""

    def __init__(self) -> None:
        self._parked: dict[int, Decoded] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def park(self, header, arrays: tuple) -> list[bytes]:
        """Park a message (header, arrays in buffer order); returns the one-part token to send."""
        for a in arrays:
            a.flags.writeable = False
        names = [b.name for b in getattr(header, "buffers", ())]
        msg = Decoded(topic_for(header), header, dict(zip(names, arrays)))
        key = next(self._keys)
        with self._lock:
            self._parked[key] = msg
        return [TAG + key.to_bytes(_KEY_BYTES, "little")]

    def take(self, parts: list) -> Decoded | None:
        """The parked message a received token stands for; None if ``parts`` is not a token."""
        if len(parts) != 1 or len(parts[0]) != len(TAG) + _KEY_BYTES:
            return None
        raw = parts[0] if isinstance(parts[0], bytes) else parts[0].bytes
        if not raw.startswith(TAG):
            return None
        with self._lock:
            return self._parked.pop(int.from_bytes(raw[len(TAG) :], "little"), None)

    def cancel(self, token: list[bytes]) -> None:
        """Forget a parked message whose token could not be sent."""
        self.take(token)

    def clear(self) -> None:
        with self._lock:
            self._parked.clear()

    def __len__(self) -> int:
        return len(self._parked)
