"""The simulated probe: registered as a source, deterministic, and its truth matches its pixels."""

import numpy as np
import pytest

import mmstream_drivers
from mmstream_drivers.sim import SceneSpec, SimProbe


def test_registered_through_entry_point():
    assert "sim" in mmstream_drivers.available()
    assert mmstream_drivers.load("sim") is SimProbe
    with pytest.raises(KeyError, match="installed: .*sim"):
        mmstream_drivers.load("no-such-source")


def test_same_seed_same_frames():
    a, b = SimProbe(seed=4), SimProbe(seed=4)
    np.testing.assert_array_equal(a.frame(7).image, b.frame(7).image)
    assert not np.array_equal(a.frame(7).image, SimProbe(seed=5).frame(7).image)


def test_frames_and_device_clock():
    probe = SimProbe(fps=25.0, seed=1)
    frames = list(probe.frames(4))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.t_device_s for f in frames] == pytest.approx([0.0, 0.04, 0.08, 0.12])
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (512, 512)
    with pytest.raises(ValueError):
        SimProbe(fps=0)


def test_truth_matches_pixels(sim_probe):
    f = sim_probe.frame(0)
    img, t = f.image.astype(float), f.truth
    r, c = (int(round(v)) for v in t.nerve_center_rc)
    ar, ac = t.nerve_semi_axes_px
    # bright epineurial rim on the nerve's lateral edges, brighter than the muscle around
    rim = img[r - 2 : r + 3, int(c + ac) - 3 : int(c + ac) + 1].mean()
    around = img[r - 10 : r + 10, int(c + ac) + 15 : int(c + ac) + 35].mean()
    assert rim > around + 20
    # aponeuroses: bright band just above the superficial line and just above the deep line
    col = 256
    sup, deep = int(t.superficial_row[col]), int(t.deep_row[col])
    assert img[sup - 6 : sup, col - 20 : col + 20].mean() > img[sup + 5 : sup + 25, col - 20 : col + 20].mean() + 30
    assert img[deep + 1 : deep + 7, col - 20 : col + 20].mean() > img[deep - 25 : deep - 5, col - 20 : col + 20].mean() + 30
    assert t.thickness_px == pytest.approx(np.median(t.deep_row - t.superficial_row))
    assert t.nerve_area_mm2 == pytest.approx(t.nerve_area_px * 0.01)


def test_motion_moves_truth_and_pixels():
    probe = SimProbe(seed=2, sweep_mm=2.0, sweep_period_s=4.0, breathing_mm=0.0)
    f0, f1 = probe.frame(0), probe.frame(30)  # a quarter period: 2 mm = 20 px sweep
    dc = f0.truth.nerve_center_rc[1] - f1.truth.nerve_center_rc[1]
    assert dc == pytest.approx(20.0, abs=0.5)
    # the speckle moves with the tissue: shifting frame 1 back by 20 px correlates with frame 0
    a = f0.image[:400, 40:400].astype(float)
    b = f1.image[:400, 20:380].astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_custom_size_and_spacing():
    probe = SimProbe(SceneSpec(shape=(256, 320), spacing_mm=(0.2, 0.15)), seed=0)
    f = probe.frame(0)
    assert f.image.shape == (256, 320)
    assert f.truth.nerve_semi_axes_px == pytest.approx((2.6 / 0.2, 4.0 / 0.15))


def test_sim_source_counts_its_frames_in_its_health():
    """Like every driver, the simulated probe has a ``health`` (shown under ``sources`` in status)."""
    probe = SimProbe(SceneSpec(shape=(64, 64)), seed=1)
    assert len(list(probe.source_frames(3))) == 3
    st = probe.health.status()
    assert st["counters"]["frames"] == 3 and not st["errors"]
