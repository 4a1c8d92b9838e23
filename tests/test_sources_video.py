"""Video source: real OpenCV captures of small files written in tmp_path, and a fake device."""

import threading
import time

import cv2
import numpy as np
import pytest

from mmstream.errors import ConfigError, ReadError
from mmstream.io import rgb_to_grey
from mmstream_drivers.video import VideoSource, depth_scale_spacing
from source_helpers import Running, wait_for

ROWS, COLS, FPS = 48, 64, 25.0


def screen(k: int) -> np.ndarray:
    """A scanner 'screen' (BGR): grey border, B-mode area rows 8..40, cols 16..56 at level 10 + 20 (k mod 12)."""
    img = np.full((ROWS, COLS, 3), 250, np.uint8)
    img[8:40, 16:56] = 10 + 20 * (k % 12)
    return img


def write_video(path, n=6, first=0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (COLS, ROWS))
    assert w.isOpened()
    for k in range(first, first + n):
        w.write(screen(k))
    w.release()


def with_capture(source, open_capture):
    """``source`` opening its captures with ``open_capture(target)`` (a fake device) instead of OpenCV."""
    source.open_capture = open_capture
    return source


def take(source, n):
    """The first ``n`` frames of a live source (then stops it)."""
    with Running(source) as run:
        return run.wait_frames(n, timeout_s=20.0)


def test_file_frames_are_cropped_grey_with_file_timing(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path)
    src = VideoSource(url=str(path), crop_row0=8, crop_col0=16, crop_row1=40, crop_col1=56,
                      spacing_row_mm=0.1, spacing_col_mm=0.12)  # fmt: skip
    frames = list(src.source_frames())
    assert len(frames) == 6 and src.health.counters["frames"] == 6
    assert frames[0].image.shape == (32, 40) and frames[0].image.dtype == np.uint8
    for k, f in enumerate(frames):  # MJPG is lossy: within a few grey levels of the screen
        assert abs(float(f.image[4:-4, 4:-4].mean()) - (10 + 20 * k)) < 3
    assert [f.t_device_s for f in frames] == pytest.approx(np.arange(6) / FPS)
    assert frames[0].spacing_mm == (0.1, 0.12) and frames[0].spacing_source == "config"
    assert src.health.counters.get("dropped_frames", 0) == 0
    assert src.paces_itself is False  # a file is paced by its frame times


def test_grey_conversion_is_the_readers_bt601(tmp_path):
    path = tmp_path / "colour.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (COLS, ROWS))
    w.write(np.dstack([np.full((ROWS, COLS), v, np.uint8) for v in (30, 120, 220)]))  # B, G, R
    w.release()
    [frame] = list(VideoSource(url=str(path)).source_frames())
    bgr = cv2.VideoCapture(str(path)).read()[1]
    np.testing.assert_array_equal(frame.image, rgb_to_grey(bgr[..., ::-1]))


def test_depth_scale_calibration_gives_row_spacing_and_depth():
    assert depth_scale_spacing(100, 0.0, 500, 40.0) == pytest.approx(0.1)
    src = VideoSource(url="x.avi", crop_row0=100, crop_row1=500, calib_row_a=100, calib_depth_a_mm=0.0,
                      calib_row_b=300, calib_depth_b_mm=20.0, square_pixels=True)  # fmt: skip
    assert src.spacing_mm == pytest.approx((0.1, 0.1))
    assert src.depth_mm == pytest.approx(40.0)  # depth of the crop's last row
    with pytest.raises(ConfigError, match="column spacing is unknown"):
        VideoSource(url="x.avi", calib_row_a=100, calib_depth_a_mm=0.0, calib_row_b=300, calib_depth_b_mm=20.0)
    with pytest.raises(ConfigError):
        depth_scale_spacing(300, 0.0, 100, 20.0)  # deeper row must show a larger depth
    with pytest.raises(ConfigError):
        depth_scale_spacing(100, 5.0, 100, 20.0)


@pytest.mark.parametrize("kw", [{}, {"device": 0, "url": "a.avi"}, {"url": "a.avi", "crop_row0": 10, "crop_row1": 5},
                                {"url": "a.avi", "spacing_row_mm": 0.1}, {"url": "a.avi", "fps": 0},
                                {"device": "zero"}, {"url": "a.avi", "crop_row1": "end"},
                                {"url": "a.avi", "backoff_initial_s": 9.0, "backoff_max_s": 1.0},
                                # spacings the analysis would refuse on every frame (outside 0.0001-100 mm)
                                {"url": "a.avi", "spacing_row_mm": 5e-5, "square_pixels": True},
                                {"url": "a.avi", "spacing_row_mm": 150.0, "spacing_col_mm": 0.1}])
def test_bad_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        VideoSource(**kw)


def test_missing_file_is_a_read_error_and_an_event(tmp_path):
    src = VideoSource(url=str(tmp_path / "none.avi"))
    with pytest.raises(ReadError) as exc:
        list(src.source_frames())
    assert exc.value.reason == "not_found" and src.health.errors["not_found"] == 1


def test_a_file_that_is_not_a_video_is_named_so_not_missing(tmp_path):
    """A text file, an mp4 cut short, a directory: they exist, so not ``not_found``."""
    (tmp_path / "notes.txt").write_text("not a video\n")
    w = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (COLS, ROWS))
    for k in range(20):
        w.write(screen(k))
    w.release()
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    for path in (tmp_path / "notes.txt", tmp_path / "cut.mp4", tmp_path):
        src = VideoSource(url=str(path))
        with pytest.raises(ReadError, match="exists but OpenCV cannot read it as a video") as exc:
            list(src.source_frames())
        assert exc.value.reason == "not_a_video" and src.health.errors == {"not_a_video": 1}, path


def test_the_capture_factory_is_no_option():
    """A test hook is not something a configuration can set (``open_capture = "x"`` used to pass
    config validate and fail with a TypeError when the source started)."""
    import mmstream_drivers
    from mmstream.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        mmstream_drivers.check_source("video", "v", {"url": "a.avi", "open_capture": "os.system"})
    with pytest.raises(TypeError):
        VideoSource(url="a.avi", open_capture=lambda target: None)


def test_opencv_and_ffmpeg_stay_off_the_console(tmp_path):
    """A looped file with damaged frames and a grabber that is not there: the source's events say
    so, rate-limited; OpenCV's warning per open and FFmpeg's lines per damaged frame do not reach
    stderr (they did: 119 FFmpeg lines per 10 s). Its own process: FFmpeg reads its log level once."""
    import subprocess
    import sys

    write_video(tmp_path / "clip.avi", n=20)
    data = bytearray((tmp_path / "clip.avi").read_bytes())
    for at in range(len(data) // 3, 2 * len(data) // 3, 997):  # damage JPEG data in the middle frames
        data[at:at + 40] = bytes(range(40))
    (tmp_path / "bad.avi").write_bytes(bytes(data))
    script = f"""
import itertools, threading, time
from mmstream_drivers.video import VideoSource
src = VideoSource(url={str(tmp_path / "bad.avi")!r}, loop=True)
frames = list(itertools.islice(src.source_frames(), 60))
dev = VideoSource(device=42, backoff_initial_s=0.01, backoff_max_s=0.01)  # no such grabber
t = threading.Thread(target=lambda: list(dev.source_frames()))
t.start()
deadline = time.monotonic() + 20
while dev.health.errors["device_unavailable"] < 3 and time.monotonic() < deadline:
    time.sleep(0.01)  # polling
dev.close()
t.join(5)
print(len(frames), src.health.counters["loops"], dev.health.errors["device_unavailable"])
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OPENCV_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    n, loops, unavailable = map(int, proc.stdout.split())
    assert n == 60 and loops >= 2 and unavailable >= 3
    assert proc.stderr == ""


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "cut.avi"
    write_video(path, n=20)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    src = VideoSource(url=str(path))
    frames = list(src.source_frames())
    assert 0 < len(frames) < 20
    assert src.health.errors["truncated"] == 1


def test_crop_larger_than_the_frame_skips_frames_with_an_error(tmp_path):
    path = tmp_path / "small.avi"
    write_video(path, n=2)
    src = VideoSource(url=str(path), crop_row1=ROWS + 10)
    assert list(src.source_frames()) == []
    assert src.health.errors["crop_outside_frame"] == 2


def test_an_empty_crop_or_an_odd_capture_format_skips_the_frame_not_the_source(tmp_path, monkeypatch):
    path = tmp_path / "small.avi"
    write_video(path, n=2)
    src = VideoSource(url=str(path), crop_row0=ROWS, crop_row1=0)  # from the last row to the end: nothing
    assert list(src.source_frames()) == [] and src.health.errors["crop_outside_frame"] == 2
    write_video(path, n=3)
    odd = iter([np.zeros((8, 9, 2), np.uint8), np.full((8, 9), 1000, np.uint16), np.zeros((8, 9, 1), np.uint8)])
    src = VideoSource(url=str(path))
    monkeypatch.setattr(src, "_frame", lambda img, t, missed, real=src._frame: real(next(odd), t, missed))
    frames = list(src.source_frames())  # a 2-channel frame and a 16-bit one beyond 8 bits: refused; (H, W, 1): grey
    assert [f.image.shape for f in frames] == [(8, 9)]
    assert src.health.errors["unsupported_layout"] == 1 and src.health.errors["unsupported_bit_depth"] == 1


class FakeCapture:
    """A grabber that delivers the listed (frame counter, time ms) and then fails like an unplugged device."""

    def __init__(self, ticks):
        self.ticks = list(ticks)
        self.pos = self.msec = 0.0

    def isOpened(self):
        return True

    def set(self, prop, value):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_POS_FRAMES: self.pos, cv2.CAP_PROP_POS_MSEC: self.msec, cv2.CAP_PROP_FPS: FPS,
                cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)  # fmt: skip

    def read(self):
        if self.ticks and self.ticks[0] == "raise":
            self.ticks.pop(0)
            raise cv2.error("backend failure")
        if not self.ticks:
            return False, None
        self.pos, self.msec = self.ticks.pop(0)
        return True, screen(int(self.pos) % 10)

    def release(self):
        pass


def test_dropped_frames_are_counted_from_timestamp_and_counter_gaps():
    # counter 1,2,3 then 6 (2 lost), time 0,40,80 then 200 ms (2 lost at 25 fps); then 7 at 360 ms (3 lost)
    ticks = [(1, 0.0), (2, 40.0), (3, 80.0), (6, 200.0), (7, 360.0)]
    opened = []

    def open_capture(target):
        opened.append(target)
        return FakeCapture(ticks) if len(opened) == 1 else None  # unplugged after the first session

    src = with_capture(VideoSource(device=0, backoff_initial_s=0.01, backoff_max_s=0.02), open_capture)
    frames = take(src, 5)
    assert [f.annotations.get("dropped_before", 0) for f in frames] == [0, 0, 0, 2, 3]
    assert src.health.counters["dropped_frames"] == 5
    assert frames[3].t_device_s == pytest.approx(0.2)
    assert src.paces_itself is True  # a device delivers at its own rate


def test_device_that_goes_away_is_reopened_with_backoff_and_the_clock_keeps_running():
    sessions = [[(1, 0.0), (2, 40.0), "raise"], None, None, [(1, 0.0), (2, 40.0), (3, 80.0)]]
    opened = []

    def open_capture(target):
        i = len(opened)
        opened.append(time.monotonic())
        return FakeCapture(sessions[i]) if i < len(sessions) and sessions[i] is not None else None

    src = with_capture(VideoSource(device=0, backoff_initial_s=0.02, backoff_max_s=0.5), open_capture)
    frames = take(src, 5)
    assert src.health.counters["reconnects"] == 1 and src.health.counters["connections"] == 2
    assert src.health.errors["capture_error"] == 1  # the backend raised: treated as the device going away
    assert src.health.errors["device_lost"] >= 1 and src.health.errors["device_unavailable"] == 2
    # back-off doubled between the attempts: at least 0.02, 0.04, 0.08 s (sleeps are never shorter)
    gaps = np.diff(opened[:4])
    assert np.all(gaps >= np.array([0.02, 0.04, 0.08]) * 0.95)
    t = [f.t_device_s for f in frames]
    assert all(b > a for a, b in zip(t, t[1:]))  # no jump back after the reconnect
    assert t[2] - t[1] >= sum(gaps[:3]) * 0.9  # the outage shows as elapsed device time


def test_a_good_frame_resets_the_backoff():
    """A device that delivers frames between losses is retried after the initial delay each time,
    not after ever longer ones; failed opens in a row still double it."""
    sessions = [[(1, 0.0), (2, 40.0)], [(3, 80.0)], None, None, [(4, 120.0)], [(5, 160.0)]]
    opened = []

    def open_capture(target):
        opened.append(target)
        i = len(opened) - 1
        return FakeCapture(sessions[i]) if i < len(sessions) and sessions[i] is not None else None

    src = with_capture(VideoSource(device=0, backoff_initial_s=0.01, backoff_max_s=1.0), open_capture)
    delays = []
    next_delay = src.backoff.next_delay
    src.backoff.next_delay = lambda: delays.append(next_delay()) or delays[-1]
    take(src, 5)
    # lost after frames, lost after a frame, unavailable twice (doubling), lost after a frame (reset), ...
    assert delays[:6] == pytest.approx([0.01, 0.01, 0.02, 0.04, 0.01, 0.01])  # without the reset: 0.01, 0.02, ...


def test_file_that_disappears_and_reappears_is_picked_up_again_when_live(tmp_path):
    """A real capture of a file opened as a live stream: missing at first, then written, then gone."""
    path = tmp_path / "feed.avi"
    src = VideoSource(url=str(path), live=True, crop_row0=8, crop_col0=16, crop_row1=40, crop_col1=56,
                      backoff_initial_s=0.05, backoff_max_s=0.1)
    with Running(src) as run:
        wait_for(lambda: src.health.errors["device_unavailable"], what="a failed open")
        assert run.frames == []
        write_video(path, n=4)
        run.wait_frames(4)
        path.unlink()  # gone: the end of the file is the device going away; reopening fails, counted
        failed = src.health.errors["device_unavailable"]
        wait_for(lambda: src.health.errors["device_unavailable"] > failed, what="a failed reopen")
        write_video(path, n=3, first=8)  # back with other content (grey 170, 190, 210)
        wait_for(lambda: any(f.image.mean() > 160 for f in run.frames), what="frames of the re-created file")
        got = list(run.frames)
    assert src.health.counters["reconnects"] >= 1 and src.health.errors["device_lost"] >= 1
    t = [f.t_device_s for f in got]
    assert all(b > a for a, b in zip(t, t[1:]))


def test_backoff_doubles_up_to_its_cap_and_resets():
    from mmstream_drivers.health import Backoff

    b = Backoff(0.1, 0.5)
    assert [b.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next_delay() == 0.1
    stop = threading.Event()
    stop.set()
    assert b.wait(stop) is True  # a set stop ends the wait at once
    with pytest.raises(ValueError):
        Backoff(1.0, 0.5)


def test_a_looped_one_frame_file_goes_on_at_its_frame_rate():
    """Each pass of a looped file continues the clock one frame period after the last frame (a
    1-frame file used to loop at decode speed, 97 fps shown for a 30 fps file) and counts as a loop,
    not a reconnect."""
    src = with_capture(VideoSource(url="one.avi", loop=True), lambda target: FakeCapture([(1, 0.0)]))
    frames = take(src, 5)
    assert np.diff([f.t_device_s for f in frames]) == pytest.approx([1.0 / FPS] * 4)
    assert src.health.counters["loops"] >= 4 and "reconnects" not in src.health.counters


def test_a_looped_file_giving_no_usable_frame_ends_instead_of_spinning():
    beyond = VideoSource(url="a.avi", loop=True, crop_row1=ROWS + 100)  # a crop beyond the frames: every frame refused
    src = with_capture(beyond, lambda target: FakeCapture([(1, 0.0), (2, 40.0)]))
    assert list(src.source_frames()) == []
    assert src.health.errors["no_frames"] == 1 and src.health.counters["connections"] == 1
