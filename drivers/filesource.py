"""The common part of the file-backed sources (DICOM cine, MetaImage sequences).

A :class:`FileSequenceSource` reads its file with :func:`mmstream.io.read_frames` (header validated
when the source is built, pixels decoded one frame at a time), converts each
:class:`~mmstream.io.ImageFrame` with the subclass's :meth:`~FileSequenceSource.convert`, and
optionally loops. ``realtime`` tells the service to pace frames by ``t_device_s`` (the file's own
timing) or to send them as fast as the service takes them.

A file that fails mid-stream (truncated, corrupt frame) ends the source: the frames already
produced stay sent, the error is counted and announced, and :meth:`source_frames` raises it.
"""

import threading
from collections.abc import Iterator

from mmstream.errors import ConfigError, MmstreamError
from mmstream.io import DEFAULT_MAX_PIXELS, ImageFrame
from mmstream.source import SourceFrame
from mmstream_drivers.health import SourceHealth
from mmstream_drivers.options import option_errors


class FileSequenceSource:
    """Base of the file sources. Subclasses set ``name`` and implement :meth:`open` and :meth:`convert`.

    Parameters
    ----------
    path : str
        The file.
    fps : float
        Frame rate used for files that state no frame timing (``t_device_s = index / fps``).
    realtime : bool
        Pace by the file's timing (True) or send as fast as possible (False).
    loop : bool
        Start again at the end; device time keeps increasing across passes.
    max_frame_pixels : int
        Largest frame accepted (rows * cols), checked from the header before decoding.
    """

    name = "file"

    def __init__(self, path: str, *, fps: float = 30.0, realtime: bool = True, loop: bool = False,
                 max_frame_pixels: int = DEFAULT_MAX_PIXELS):
        with option_errors(self.name):
            self.fps = float(fps)
            self.max_frame_pixels = int(max_frame_pixels)
        if not self.fps > 0:
            raise ConfigError(f"{self.name} source: fps must be > 0, got {fps}")
        self.path = str(path)
        self.realtime = bool(realtime)
        self.loop = bool(loop)
        self.health = SourceHealth(f"source-{self.name}")
        self.stop_event = threading.Event()
        try:
            self.open()  # validates the header now: a bad file fails when the source is built
        except MmstreamError as exc:
            self.health.error(exc.reason, str(exc))
            raise

    @property
    def paces_itself(self) -> bool:
        """True when the service should send frames as fast as it can (``realtime = false``)."""
        return not self.realtime

    def open(self) -> Iterator[ImageFrame]:
        """A fresh lazy frame iterator over the file (called once per pass)."""
        raise NotImplementedError

    def convert(self, frame: ImageFrame, t_device_s: float | None) -> SourceFrame | None:
        """The frame as sent, or None to skip it (the subclass counts why)."""
        raise NotImplementedError

    def file_time(self, frame: ImageFrame) -> float | None:
        """The frame's time in the file (s); by default the file's own, else ``index / fps``."""
        return frame.t_s if frame.t_s is not None else frame.index / self.fps

    def _announce_unknown_spacing(self, frame: ImageFrame) -> None:
        self.health.count("spacing_unknown")
        detail = frame.meta.get("spacing_detail", "not in the file")
        self.health.event("warning", str(frame.meta.get("spacing_error", "no_spacing")),
                          f"{self.path}: pixel spacing unknown ({detail}); measurements stay in pixels")

    def close(self) -> None:
        """Ask :meth:`source_frames` to end after the current frame."""
        self.stop_event.set()

    def source_frames(self) -> Iterator[SourceFrame]:
        """Frames of the file (every pass when looping); ``t_device_s`` is the file's time, plus the
        length of the earlier passes when looping."""
        offset_s = 0.0
        frames = self.open()
        while not self.stop_event.is_set():
            first = last = None
            n_timed = n_out = 0
            try:
                for fr in frames:
                    t = self.file_time(fr)
                    if t is not None:
                        first = t if first is None else first
                        last, n_timed = t, n_timed + 1
                    if fr.spacing_mm is None and not self.health.counters["spacing_unknown"]:
                        self._announce_unknown_spacing(fr)
                    out = self.convert(fr, None if t is None else t + offset_s)
                    if out is not None:
                        self.health.count("frames")
                        n_out += 1
                        yield out
                    if self.stop_event.is_set():
                        return
            except MmstreamError as exc:
                self.health.error(exc.reason, f"{self.path}: stopped after {self.health.counters['frames']} "
                                  f"frames: {exc}")
                raise
            if not self.loop:
                return
            if n_out == 0:  # looping a file that gives nothing would spin: say so and end
                self.health.error("no_frames", f"{self.path}: a whole pass gave no usable frame; not looping")
                return
            self.health.count("loops")
            if first is not None:  # one more mean frame interval after the last frame
                offset_s += (last - first) * n_timed / (n_timed - 1) if n_timed > 1 else 1.0 / self.fps
            frames = self.open()
