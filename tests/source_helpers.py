"""Helpers for tests of live sources: run a driver in a thread and poll, never sleep-and-hope."""

import threading

from test_graph import wait_for  # one polling helper for every test

__all__ = ["Running", "wait_for"]


class Running:
    """A source's ``source_frames()`` consumed in a thread; ``frames`` fills as they come."""

    def __init__(self, source):
        self.source = source
        self.frames: list = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for f in self.source.source_frames():
                self.frames.append(f)
        except BaseException as exc:  # kept for the test to assert on
            self.error = exc

    def wait_frames(self, n, timeout_s=10.0):
        wait_for(lambda: len(self.frames) >= n, timeout_s, f"{n} frames (have {len(self.frames)})")
        return self.frames[:n]

    def stop(self):
        self.source.close()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "source did not stop"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
