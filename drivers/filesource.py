"""The common part of the file-backed sources (DICOM cine, MetaImage sequences).

A :class:`FileSequenceSource` reads its file with :func:`mmstream.io.read_frames` (header validated
when the source is built, pixels decoded one frame at a time), converts each
:class:`~mmstream.io.ImageFrame` with the subclass's :meth:`~FileSequenceSource.convert`, and
optionally loops. ``realtime`` tells the service to pace frames by ``t_device_s`` (the file's own
timing) or to send them as fast as the service's ingest rate limit lets them through.

Timing: ``t_device_s`` is the file's own frame time while it increases. A file without timing (its
first frame has none: no DICOM timing tag, a MetaImage without PLUS ``Timestamp``) is timed at
``fps`` (``index / fps``); so is a file whose timing turns out unusable -- a DICOM timing tag the
reader ignored, or a frame time not after the one before (equal timestamps, running backwards,
starting again mid-file) -- from that frame on, announced once as the warning
``invalid_frame_times``. A looped file's next pass starts one mean frame interval after the last
frame, so device time keeps increasing.

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
        Frame rate of files that state no usable frame timing (``t_device_s = index / fps``).
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
        self.fps_timing = False  # True once the file's timing is found absent or unusable: index / fps
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

    def _pass_time(self, frame: ImageFrame, prev_s: float | None) -> float | None:
        """The frame's time within this pass: the file's own (None where the frame has none), or
        ``index / fps`` once the file's timing is absent (first frame) or unusable (module docstring)."""
        if not self.fps_timing:
            t = frame.t_s
            if t is None and frame.index == 0:
                self.fps_timing = True
                problem = frame.meta.get("frame_time_problem")  # a timing tag the reader ignored
                if problem is not None:
                    self.health.error("invalid_frame_times", f"{self.path}: {problem}; frames paced at "
                                      f"fps = {self.fps:g}", level="warning")
            elif t is not None and prev_s is not None and not t > prev_s:
                self.fps_timing = True
                self.health.error("invalid_frame_times", f"{self.path}: frame {frame.index} at {t!r} s is not after "
                                  f"the frame before ({prev_s!r} s); the file's timing is ignored from it on, frames "
                                  f"paced at fps = {self.fps:g}", level="warning")
            else:
                return t
        return frame.index / self.fps

    def _announce_unknown_spacing(self, frame: ImageFrame) -> None:
        self.health.count("spacing_unknown")
        detail = frame.meta.get("spacing_detail", "not in the file")
        self.health.event("warning", str(frame.meta.get("spacing_error", "no_spacing")),
                          f"{self.path}: pixel spacing unknown ({detail}); measurements stay in pixels")

    def close(self) -> None:
        """Ask :meth:`source_frames` to end after the current frame."""
        self.stop_event.set()

    def source_frames(self) -> Iterator[SourceFrame]:
        """Frames of the file (every pass when looping); ``t_device_s`` as in the module docstring."""
        next_s = None  # device time of the next pass's first frame (None: the first pass keeps the file's)
        frames = self.open()
        while not self.stop_event.is_set():
            offset_s = 0.0 if next_s is None else None
            first = last = prev = None  # device times of this pass; prev: the file time before
            n_timed = n_out = 0
            try:
                for fr in frames:
                    was_fps = self.fps_timing
                    t = self._pass_time(fr, prev)
                    if t is not None:
                        if offset_s is None:  # a pass's first frame starts where the previous pass ended
                            offset_s = next_s - t
                        elif self.fps_timing and not was_fps and last is not None:  # timing given up mid-pass
                            offset_s = last + 1.0 / self.fps - t
                        prev = t
                        first = t + offset_s if first is None else first
                        last, n_timed = t + offset_s, n_timed + 1
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
            if last is not None:  # one more mean frame interval after the last frame
                next_s = last + ((last - first) / (n_timed - 1) if n_timed > 1 else 1.0 / self.fps)
            frames = self.open()
