"""Video source: a frame grabber (OpenCV ``VideoCapture`` on a device index) or a video file/stream.

* **B-mode crop**: ``crop_row0, crop_col0, crop_row1, crop_col1`` (half-open, full-frame pixels;
  0 for ``crop_row1``/``crop_col1`` means "to the edge") cut the scanner's screen down to the image.
* **Spacing**: ``spacing_row_mm`` and ``spacing_col_mm`` (``spacing_source = "config"``), or a
  one-time calibration on the scanner's depth scale: two full-frame pixel rows ``calib_row_a``,
  ``calib_row_b`` and the depths they show, ``calib_depth_a_mm``, ``calib_depth_b_mm``
  (:func:`depth_scale_spacing`). A depth scale measures rows only: the column spacing is
  ``spacing_col_mm``, or the row spacing when the user states ``square_pixels = true``. Without
  either, spacing is unknown. With a depth scale, ``imaging.depth_mm`` is the depth of the crop's
  last row.
* **Time and drops**: ``t_device_s`` is the capture's own frame time (``CAP_PROP_POS_MSEC``); a gap of
  more than 1.5 frame periods (``CAP_PROP_FPS``, else ``fps``) or a jump of the frame counter
  (``CAP_PROP_POS_FRAMES``) counts the missing frames under ``dropped_frames`` (event
  ``dropped_frames``; the frame after the gap carries ``annotations["dropped_before"]``). A capture
  whose clock does not advance falls back to the host clock for that frame (counted).
* **Live** sources (a device; a ``url`` with ``live = true``) reconnect with exponential back-off
  when the device goes away (``device_lost``, ``device_unavailable`` events, ``reconnects``);
  across a reconnect ``t_device_s`` keeps increasing by the host time that passed. A file ends at
  its last frame (or loops); a file that ends two or more frames before the frame count in its
  header is reported ``truncated`` (a warning: some containers only estimate that count). A file
  that cannot be opened is ``not_found`` when it does not exist, ``not_a_video`` when it does (not
  a video, cut short, a directory, a codec OpenCV lacks).
* **Console**: OpenCV's and FFmpeg's own messages (a warning per failed open of an absent grabber,
  lines per damaged frame of a looped file) repeat what the source's rate-limited events report,
  without their limit: building a source sets OpenCV's log level to errors only and FFmpeg's to
  quiet, unless the environment sets ``OPENCV_LOG_LEVEL`` or ``OPENCV_FFMPEG_LOGLEVEL``.
"""

import math
import os
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np

from mmstream.errors import ConfigError, ReadError, SpacingError
from mmstream.io import to_grey_u8
from mmstream.io._common import quiet_opencv, validate_spacing
from mmstream.messages import ImagingSettings
from mmstream.source import SourceFrame
from mmstream_drivers.health import Backoff, SourceHealth
from mmstream_drivers.options import option_errors


def depth_scale_spacing(row_a: float, depth_a_mm: float, row_b: float, depth_b_mm: float) -> float:
    """Row spacing (mm per pixel row) from two rows of the on-screen depth scale and their depths."""
    vals = (row_a, depth_a_mm, row_b, depth_b_mm)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise ConfigError(f"depth-scale calibration needs four finite numbers, got {vals}")
    if row_a == row_b or depth_a_mm == depth_b_mm:
        raise ConfigError("depth-scale calibration needs two different rows at two different depths")
    spacing = (depth_b_mm - depth_a_mm) / (row_b - row_a)
    if spacing <= 0:
        raise ConfigError("depth must increase down the image (deeper row, larger depth)")
    return float(spacing)


class VideoSource:
    """Frames from a video device or file (options as in the module docstring).

    ``open_capture(target)`` builds the capture: ``cv2.VideoCapture``; a test sets a fake on the
    instance (not an option: a configuration cannot name a callable).
    """

    name = "video"
    open_capture = cv2.VideoCapture

    def __init__(
        self,
        *,
        device: int = -1,
        url: str = "",
        live: bool | None = None,
        loop: bool = False,
        fps: float = 30.0,
        crop_row0: int = 0,
        crop_col0: int = 0,
        crop_row1: int = 0,
        crop_col1: int = 0,
        spacing_row_mm: float | None = None,
        spacing_col_mm: float | None = None,
        calib_row_a: float | None = None,
        calib_depth_a_mm: float | None = None,
        calib_row_b: float | None = None,
        calib_depth_b_mm: float | None = None,
        square_pixels: bool = False,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ):
        with option_errors("video"):
            if (device >= 0) == bool(url):
                raise ConfigError("video source: give exactly one of device (index >= 0) or url (file or stream)")
            if not fps > 0:
                raise ConfigError(f"video source: fps must be > 0, got {fps}")
            self.target = int(device) if device >= 0 else str(url)
            self.live = bool(device >= 0 if live is None else live)
            self.paces_itself = self.live  # a device delivers at its own rate; a file is paced by its frame times
            self.loop = bool(loop)
            self.fps = float(fps)
            crop = (int(crop_row0), int(crop_col0), int(crop_row1), int(crop_col1))
            if min(crop) < 0 or (crop[2] and crop[2] <= crop[0]) or (crop[3] and crop[3] <= crop[1]):
                raise ConfigError(f"video source: crop (row0, col0, row1, col1) = {crop} is not a non-empty rectangle")
            self.crop = crop
            self.spacing_mm, self.depth_mm = self._spacing(
                spacing_row_mm, spacing_col_mm, (calib_row_a, calib_depth_a_mm, calib_row_b, calib_depth_b_mm),
                square_pixels,
            )
            self.backoff = Backoff(backoff_initial_s, backoff_max_s)
            self.health = SourceHealth(f"source-{self.name}")
            self.stop_event = threading.Event()
        _quiet_opencv()

    def _spacing(self, row_mm, col_mm, calib, square) -> tuple[tuple[float, float] | None, float | None]:
        given = [v is not None for v in calib]
        if any(given) and not all(given):
            raise ConfigError("video source: depth-scale calibration needs calib_row_a, calib_depth_a_mm, "
                              "calib_row_b and calib_depth_b_mm")
        depth_mm = None
        if all(given):
            if row_mm is not None:
                raise ConfigError("video source: give spacing_row_mm or a depth-scale calibration, not both")
            row_a, depth_a, row_b, depth_b = (float(v) for v in calib)
            row_mm = depth_scale_spacing(row_a, depth_a, row_b, depth_b)
            if self.crop[2]:
                depth_mm = depth_a + (self.crop[2] - row_a) * row_mm
        if row_mm is None and col_mm is None:
            return None, None
        if col_mm is None and square:
            col_mm = row_mm
        if row_mm is None or col_mm is None:
            raise ConfigError("video source: the column spacing is unknown; give spacing_col_mm or state "
                              "square_pixels = true")
        try:
            spacing = validate_spacing((row_mm, col_mm), what="video source: spacing")
        except SpacingError as exc:
            raise ConfigError(str(exc)) from None
        return spacing, (depth_mm if depth_mm is not None and depth_mm > 0 else None)

    def close(self) -> None:
        """Ask :meth:`source_frames` to end (also interrupts a reconnect wait)."""
        self.stop_event.set()

    # -----------------------------------------------------------------------------------------

    def _open(self):
        cap = self.open_capture(self.target)
        if cap is not None and cap.isOpened():
            if isinstance(self.target, int):
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            return cap
        if cap is not None:
            cap.release()
        return None

    def source_frames(self) -> Iterator[SourceFrame]:
        """Frames until stopped (live) or the file ends (no loop)."""
        last = None  # (t_device_s, host time) of the last frame sent, across connections
        while not self.stop_event.is_set():
            cap = self._open()
            if cap is None:
                if not self.live:
                    if isinstance(self.target, str) and os.path.exists(self.target):
                        reason, why = "not_a_video", ": it exists but OpenCV cannot read it as a video"
                    else:
                        reason, why = "not_found", ""
                    self.health.error(reason, f"cannot open video {self.target!r}{why}")
                    raise ReadError(f"cannot open video {self.target!r}{why}", reason=reason)
                self.health.error("device_unavailable", f"video {self.target!r} cannot be opened; retrying")
                if self.backoff.wait(self.stop_event):
                    return
                continue
            self.health.count("connections")
            if self.health.counters["connections"] > 1:
                self.health.count("reconnects" if self.live else "loops")  # a file's next pass is no reconnect
            sent = self.health.counters["frames"]
            try:
                n_read, last = yield from self._read(cap, last)
                expected = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            finally:
                cap.release()
            if self.live:
                self.health.error("device_lost", f"video {self.target!r} stopped delivering frames after "
                                  f"{n_read} frames; reconnecting")
                if self.backoff.wait(self.stop_event):
                    return
                continue
            # some containers only estimate their frame count: one frame short is not reported
            if expected > 0 and n_read + 1 < expected and not self.stop_event.is_set():
                self.health.error("truncated", f"video {self.target!r} ended after {n_read} of the {int(expected)} "
                                  "frames its header announces", level="warning")
            if not self.loop:
                return
            if self.health.counters["frames"] == sent:  # looping a file that gives nothing would spin: end
                self.health.error("no_frames", f"video {self.target!r}: a whole pass gave no usable frame; not looping")
                return

    def _read(self, cap, last):
        """Read one connection's frames; returns (frames read, last (t_device_s, host time))."""
        fps = cap.get(cv2.CAP_PROP_FPS)
        period_s = 1.0 / fps if fps and 0 < fps < 1000 else 1.0 / self.fps
        offset_s = None
        prev_t = prev_pos = prev_host = None
        n = 0
        while not self.stop_event.is_set():
            try:
                ok, img = cap.read()
            except cv2.error as exc:  # a failing backend: the device is gone as far as we can tell
                self.health.error("capture_error", f"video {self.target!r}: {exc}")
                break
            if not ok or img is None:
                break
            host = time.monotonic()
            t_cap = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            pos = cap.get(cv2.CAP_PROP_POS_FRAMES)
            if not math.isfinite(t_cap) or (prev_t is not None and t_cap <= prev_t):
                self.health.count("host_timestamps")  # the capture's clock stands still: use the host's
                t_cap = 0.0 if prev_t is None else prev_t + max(host - prev_host, 1e-6)
            if offset_s is None:  # first frame of this connection: continue the stream's clock
                if last is None:
                    offset_s = 0.0
                elif self.live:  # a device: the time it was away
                    offset_s = last[0] + (host - last[1]) - t_cap
                else:  # a file's next pass: one frame period after its last frame (a 1-frame file loops at fps)
                    offset_s = last[0] + period_s - t_cap
            missed = self._missed(t_cap, prev_t, pos, prev_pos, period_s)
            prev_t, prev_pos, prev_host = t_cap, pos, host
            n += 1
            frame = self._frame(img, t_cap + offset_s, missed)
            if frame is None:
                continue
            last = (frame.t_device_s, host)
            self.backoff.reset()  # a good frame: the next loss retries quickly again
            self.health.count("frames")
            yield frame
        return n, last

    def _missed(self, t, prev_t, pos, prev_pos, period_s) -> int:
        missed = 0
        if prev_t is not None and t - prev_t > 1.5 * period_s:
            missed = round((t - prev_t) / period_s) - 1
        if prev_pos is not None and pos > 0 and prev_pos > 0 and pos - prev_pos > 1:
            missed = max(missed, int(pos - prev_pos) - 1)
        if missed > 0:
            self.health.count("dropped_frames", missed)
            self.health.event("warning", "dropped_frames", f"video {self.target!r}: {missed} frame(s) missing before "
                              f"the frame at t = {t:.3f} s ({self.health.counters['dropped_frames']} so far)")
        return missed

    def _frame(self, img: np.ndarray, t_device_s: float, missed: int) -> SourceFrame | None:
        r0, c0, r1, c1 = self.crop
        rows, cols = img.shape[:2]
        r1, c1 = r1 or rows, c1 or cols
        if r1 > rows or c1 > cols or r0 >= r1 or c0 >= c1:
            self.health.error("crop_outside_frame", f"video {self.target!r}: crop {self.crop} does not fit a "
                              f"{rows} x {cols} frame; frame skipped")
            return None
        try:
            grey = to_grey_u8(f"video {self.target!r}", img[r0:r1, c0:c1], channel_order="BGR")
        except ReadError as exc:  # e.g. a 2-channel or 16-bit capture format: this frame, not the source
            self.health.error(exc.reason, f"{exc}; frame skipped", level="warning")
            return None
        return SourceFrame(
            image=grey,
            t_device_s=t_device_s,
            spacing_mm=self.spacing_mm,
            spacing_source="config" if self.spacing_mm is not None else "unknown",
            imaging=ImagingSettings(depth_mm=self.depth_mm),
            annotations={"dropped_before": float(missed)} if missed else {},
        )


def _quiet_opencv() -> None:
    """OpenCV errors only, FFmpeg quiet (module docstring), unless the environment says otherwise.
    FFmpeg's level is read when OpenCV first opens a file through it: set before any capture."""
    quiet_opencv()
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


__all__ = ["VideoSource", "depth_scale_spacing"]
