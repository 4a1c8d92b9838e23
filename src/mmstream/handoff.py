"""In-process hand-over of messages between the nodes of one graph.

On a PUSH -> PULL edge between two nodes of one graph (its own ``inproc://`` endpoints) both ends
live in the same process, so encoding the header to JSON and validating it again on the other side
is pure cost (tens of microseconds hot, hundreds after the thread slept between frames).
:class:`Handoff` parks the message object and sends only a token (:data:`TAG` + a random 8-byte key)
through ZeroMQ, which still does the wake-up, the ordering and the high-water mark; the receiver
takes the object back. Headers are frozen models, arrays are made read-only, as after
:func:`mmstream.codec.decode`: a sender hands over arrays it will not write again (a view of a
buffer the sender keeps filling must be copied first). The graph takes tokens only on its own
internal endpoints (never on ingest, control or any TCP/IPC socket, where a client could otherwise
claim a parked message), and every other edge (PUB taps, TCP, IPC) carries encoded messages; its
internal PULL sockets accept both, so senders outside the graph need not know.
"""

import secrets
import threading

from mmstream.codec import Decoded, topic_for

TAG = b"\x00mmstream-handoff"
_KEY_BYTES = 8


def _key(token: bytes) -> int:
    return int.from_bytes(token[len(TAG) :], "little")


class Handoff:
    """The parking place of one graph; :meth:`clear` when the graph stops (tokens left unread)."""

    def __init__(self) -> None:
        self._parked: dict[int, Decoded] = {}
        self._lock = threading.Lock()
        self.taken = 0  # messages handed over so far

    def park(self, header, arrays: tuple) -> list[bytes]:
        """Park a message (header, arrays in buffer order); returns the one-part token to send.
        ValueError if the arrays do not match the header's buffers (a node's bug, as in ``encode``)."""
        specs = getattr(header, "buffers", ())
        if len(arrays) != len(specs):
            raise ValueError(f"{len(arrays)} arrays for {len(specs)} buffers in the {header.msg_type} header")
        for a in arrays:
            a.flags.writeable = False
        msg = Decoded(topic_for(header), header, {b.name: a for b, a in zip(specs, arrays)})
        with self._lock:
            key = secrets.randbits(64)
            while key in self._parked:
                key = secrets.randbits(64)
            self._parked[key] = msg
        return [TAG + key.to_bytes(_KEY_BYTES, "little")]  # read back by _key

    def take(self, parts: list) -> Decoded | None:
        """The parked message a received token stands for; None if ``parts`` is not a token."""
        if len(parts) != 1 or len(parts[0]) != len(TAG) + _KEY_BYTES:
            return None
        raw = parts[0] if isinstance(parts[0], bytes) else parts[0].bytes
        if not raw.startswith(TAG):
            return None
        with self._lock:
            msg = self._parked.pop(_key(raw), None)
            self.taken += msg is not None
            return msg

    def cancel(self, token: list[bytes]) -> None:
        """Forget a parked message whose token could not be sent."""
        with self._lock:
            self._parked.pop(_key(token[0]), None)

    def clear(self) -> None:
        with self._lock:
            self._parked.clear()

    def __len__(self) -> int:
        return len(self._parked)
