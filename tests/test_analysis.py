"""analyze_frame: units, tracking across frames, regions, bad input — on the simulated probe."""

import json

import numpy as np
import pytest

from mmstream.analysis import FrameAnalysis, analyze_frame
from mmstream.errors import InputError, SpacingError


@pytest.fixture(scope="module")
def frames():
    from mmstream_drivers.sim import SimProbe

    probe = SimProbe(fps=30.0, seed=3)
    return [probe.frame(i) for i in range(0, 60, 3)]


def test_first_click_metrics_match_truth(frames):
    f = frames[0]
    res = analyze_frame(f.image, spacing_mm=f.truth.spacing_mm, seed=f.truth.nerve_center_rc)
    assert res.csa is not None and not res.csa.tracked
    assert res.csa.area_mm2 == pytest.approx(f.truth.nerve_area_mm2, rel=0.15)
    assert res.csa.area_mm2 == pytest.approx(res.csa.area_px * 0.01)
    assert res.thickness.thickness_mm == pytest.approx(f.truth.thickness_mm, abs=0.3)
    assert res.thickness.thickness_mm == pytest.approx(res.thickness.thickness_px * 0.1)
    # echogenicity defaults to the CSA contour when there is one
    assert res.echogenicity.region == "csa"
    assert 0.8 * res.csa.area_px <= res.echogenicity.n_px <= 1.2 * res.csa.area_px
    assert res.quality.thumb_mean_abs_diff is None


def test_tracking_follows_the_moving_probe(frames):
    f0 = frames[0]
    prev = analyze_frame(f0.image, spacing_mm=f0.truth.spacing_mm, seed=f0.truth.nerve_center_rc)
    for f in frames[1:]:
        res = analyze_frame(f.image, spacing_mm=f.truth.spacing_mm, previous=prev)
        assert res.csa.tracked
        dr = res.csa.centroid_rc[0] - f.truth.nerve_center_rc[0]
        dc = res.csa.centroid_rc[1] - f.truth.nerve_center_rc[1]
        assert np.hypot(dr, dc) < 4.0, f"frame {f.index}: centroid off by ({dr:.1f}, {dc:.1f}) px"
        assert res.csa.area_mm2 == pytest.approx(f.truth.nerve_area_mm2, rel=0.2)
        assert res.thickness.thickness_mm == pytest.approx(f.truth.thickness_mm, abs=0.4)
        assert not res.quality.frozen
        prev = res


def test_clicked_lines_then_tracked(frames):
    """A click on each aponeurosis: the lines pass through them and are held there (their points
    at the click columns) on that frame and on the tracked frames after it."""
    f0 = frames[0]
    c = f0.image.shape[1] // 3
    at = {"superficial_at_rc": (float(f0.truth.superficial_row[c]) - 1.0, float(c)),
          "deep_at_rc": (float(f0.truth.deep_row[c]) + 1.0, float(c))}  # fmt: skip
    prev = analyze_frame(f0.image, spacing_mm=f0.truth.spacing_mm, metrics=["thickness"], **at)
    t = prev.thickness
    assert not t.tracked
    for name in at:
        assert getattr(t, name)[1] == c and getattr(t, name)[0] == pytest.approx(at[name][0], abs=3.0)
    assert t.thickness_mm == pytest.approx(f0.truth.thickness_mm, abs=0.3)
    for f in frames[1:4]:
        res = analyze_frame(f.image, spacing_mm=f.truth.spacing_mm, previous=prev, metrics=["thickness"])
        t = res.thickness
        assert t.tracked and t.deep_at_rc[1] == c
        assert t.deep_at_rc[0] == pytest.approx(float(f.truth.deep_row[c]), abs=3.0)  # moves with its line
        assert t.thickness_mm == pytest.approx(f.truth.thickness_mm, abs=0.4)
        prev = res


def test_a_new_roi_keeps_held_lines_and_clearing_it_finds_the_region_again(frames):
    f = frames[0]
    c = float(f.image.shape[1] // 2)
    deep = (float(f.truth.deep_row[int(c)]), c)
    a = analyze_frame(f.image, metrics=["thickness"], deep_at_rc=deep)
    roi = (0, 0, f.image.shape[0], f.image.shape[1] - 40)
    b = analyze_frame(frames[1].image, metrics=["thickness"], previous=a, roi=roi)
    from mmstream.kernels._thickness_search import find_bmode_region

    r = tuple(b.thickness.region_rc)  # the picture inside the ROI (the simulator's dark bone shadow left out)
    assert r == find_bmode_region(frames[1].image, roi) and r[1] == 0 and r[3] == roi[3] and r[2] < roi[2]
    assert not b.thickness.tracked  # a new ROI: searched again ...
    assert b.thickness.deep_at_rc[1] == c  # ... through the held point
    d = analyze_frame(frames[2].image, metrics=["thickness"], previous=b)  # ROI cleared: the whole picture again
    assert tuple(d.thickness.region_rc) == find_bmode_region(frames[2].image) and d.thickness.deep_at_rc[1] == c


def test_a_frame_without_contact_is_not_measured_and_tracking_resumes_after_it(frames):
    """The probe lifted for two frames: nothing is measured on them (quality says why, even when not
    asked for), and the next frame with contact tracks the CSA and keeps the held line."""
    f0, f1 = frames[0], frames[1]
    c = float(f0.image.shape[1] // 2)
    a = analyze_frame(f0.image, spacing_mm=f0.truth.spacing_mm, seed=f0.truth.nerve_center_rc,
                      deep_at_rc=(float(f0.truth.deep_row[int(c)]), c))  # fmt: skip
    lifted = np.zeros_like(f0.image)
    lifted[:6] = 200  # the lens ring-down: a few bright rows on top
    b = analyze_frame(lifted, spacing_mm=f0.truth.spacing_mm, previous=a)
    assert b.echogenicity is None and b.csa is None and b.thickness is None
    assert b.quality.no_contact and b.quality.dark_fraction > 0.9
    b2 = analyze_frame(lifted, previous=b, metrics=["csa", "thickness"])
    assert b2.quality is not None and b2.quality.no_contact and b2.csa is None  # quality says why
    assert b2.tracking_state is a and b2.quality.duplicate  # compared with the lifted frame before it
    res = analyze_frame(f1.image, spacing_mm=f1.truth.spacing_mm, previous=b2)
    assert res.csa.tracked and res.thickness.deep_at_rc[1] == c and res.tracking_state is res
    assert res.csa.area_mm2 == pytest.approx(f1.truth.nerve_area_mm2, rel=0.2)
    assert res.thickness.thickness_mm == pytest.approx(f1.truth.thickness_mm, abs=0.4)
    # with_tracking edits what is carried, not the frame's own (null) fields
    cleared = b2.with_tracking(csa=None)
    assert cleared.tracking_state.csa is None and b2.tracking_state.csa is not None and cleared.quality == b2.quality
    assert analyze_frame(f1.image, previous=cleared).csa is None
    # a lifted first frame carries nothing
    first = analyze_frame(lifted)
    assert first.tracking_state is first and analyze_frame(f1.image, previous=first).csa is None


@pytest.mark.parametrize("tap", [{"seed": (100.0, 100.0)}, {"deep_at_rc": (300.0, 100.0)}, {"superficial_at_rc": (50.0, 10.0)}])
def test_a_tap_on_a_frame_without_contact_is_refused(frames, tap):
    lifted = np.full(frames[0].image.shape, 3, np.uint8)
    with pytest.raises(InputError, match="without probe contact") as exc:
        analyze_frame(lifted, **tap)
    assert exc.value.reason == "no_contact"


def test_a_featureless_frame_is_not_measured_and_taps_on_it_are_refused(frames):
    """A video grabber's uniform "no signal" screen: nothing is measured (a uniform frame gave a
    confident CSA of the whole picture), quality says why, tracking resumes after it."""
    f0, f1 = frames[0], frames[1]
    a = analyze_frame(f0.image, seed=f0.truth.nerve_center_rc)
    blank = np.full_like(f0.image, 29)
    b = analyze_frame(blank, previous=a)
    assert b.echogenicity is None and b.csa is None and b.thickness is None
    assert b.quality.featureless and not b.quality.no_contact and b.tracking_state is a
    assert analyze_frame(f1.image, previous=b).csa.tracked
    for tap in ({"seed": (100.0, 100.0)}, {"deep_at_rc": (300.0, 100.0)}):
        with pytest.raises(InputError, match="featureless frame") as exc:
            analyze_frame(blank, **tap)
        assert exc.value.reason == "featureless"


@pytest.mark.shared_data
def test_the_contact_check_measures_every_real_image(shared_data):
    """No real image of the shared data (nerves with dark surroundings, screen captures with the
    scanner's interface) is taken for a lifted probe or a featureless frame."""
    from mmstream.io.reader import open_file

    paths = sorted((shared_data / "usgra-seg").rglob("images/*.png")) + sorted((shared_data / "timtrack").rglob("*.png"))
    assert len(paths) > 300
    for p in paths:
        image = next(iter(open_file(p).frames())).image
        q = analyze_frame(image, metrics=["quality"]).quality
        assert not q.no_contact and q.dark_fraction < 0.85, p.name
        assert not q.featureless and q.active_fraction > 0.1, p.name


def test_unknown_spacing_gives_pixels_only(frames):
    f = frames[0]
    res = analyze_frame(f.image, seed=f.truth.nerve_center_rc)
    assert res.spacing_mm is None
    assert res.csa.area_mm2 is None and res.csa.perimeter_mm is None and res.csa.area_px > 0
    assert res.thickness.thickness_mm is None and res.thickness.thickness_px > 0


def test_anisotropic_spacing_perimeter_area_and_thickness(frames):
    f = frames[0]
    a = analyze_frame(f.image, spacing_mm=(0.1, 0.2), seed=f.truth.nerve_center_rc, metrics=["csa", "thickness"])
    c = a.csa.contour_rc
    d = np.diff(np.vstack([c, c[:1]]), axis=0) * (0.1, 0.2)
    assert a.csa.perimeter_mm == pytest.approx(np.hypot(d[:, 0], d[:, 1]).sum())
    assert a.csa.area_mm2 == pytest.approx(a.csa.area_px * 0.02)
    assert a.thickness.thickness_mm == pytest.approx(a.thickness.thickness_px * 0.1)  # a vertical length: row spacing


def test_roi_region_and_metric_selection(frames):
    img = frames[0].image
    res = analyze_frame(img, roi=(100, 50, 200, 300), metrics=["echogenicity"])
    assert res.csa is None and res.thickness is None and res.quality is None
    assert res.echogenicity.region == "roi" and res.echogenicity.n_px == 100 * 250
    assert res.echogenicity.mean == pytest.approx(img[100:200, 50:300].mean())
    whole = analyze_frame(img, metrics=["echogenicity"])
    assert whole.echogenicity.region == "frame" and whole.echogenicity.n_px == img.size
    # "auto" with both an ROI and a CSA seed: the ROI, not the CSA contour
    both = analyze_frame(img, roi=(100, 50, 200, 300), seed=frames[0].truth.nerve_center_rc,
                         metrics=["echogenicity", "csa"])  # fmt: skip
    assert both.csa is not None and both.echogenicity.region == "roi" and both.echogenicity.n_px == 100 * 250
    assert both.echogenicity.mean == pytest.approx(img[100:200, 50:300].mean())


def test_duplicate_frame_flagged_and_a_run_of_them_frozen(frames):
    """One repeated frame is a duplicate (exported cines hold some), five in a row a frozen image."""
    img = frames[0].image
    res = analyze_frame(img, metrics=["quality"])
    flags = []
    for _ in range(6):
        res = analyze_frame(img.copy(), metrics=["quality"], previous=res)
        flags.append((res.quality.duplicate, res.quality.frozen))
    assert flags == [(True, False)] * 4 + [(True, True)] * 2


def test_result_round_trips_through_json(frames):
    f = frames[0]
    res = analyze_frame(f.image, spacing_mm=(0.1, 0.1), seed=f.truth.nerve_center_rc)
    text = res.model_dump_json()
    back = FrameAnalysis.model_validate_json(text)
    assert back.csa.area_px == res.csa.area_px
    np.testing.assert_allclose(back.csa.contour_rc, res.csa.contour_rc, atol=1e-3)
    assert json.loads(text)["schema_version"] == 1
    # a result read back from JSON can seed tracking in another process
    nxt = analyze_frame(frames[1].image, spacing_mm=(0.1, 0.1), previous=back)
    assert nxt.csa.tracked


def test_new_frame_size_starts_afresh(frames):
    f = frames[0]
    prev = analyze_frame(f.image, seed=f.truth.nerve_center_rc)
    small = np.ascontiguousarray(f.image[:256, :256])
    res = analyze_frame(small, previous=prev)
    assert res.csa is None


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"spacing_mm": (0.1, float("nan"))}, SpacingError),
        ({"spacing_mm": (-0.1, 0.1)}, SpacingError),
        ({"spacing_mm": "abc"}, SpacingError),
        ({"spacing_mm": (1e200, 1e200)}, SpacingError),  # finite, but the mm results would be inf
        ({"spacing_mm": (1e-30, 0.1)}, SpacingError),  # positive, but a corrupt value (an area of 0.0 mm2)
        ({"spacing_mm": (5e-324, 5e-324)}, SpacingError),
        ({"spacing_mm": (10**400, 1)}, SpacingError),
        ({"roi": (10, 10, 5, 20)}, InputError),
        ({"roi": (0, 0, 600, 20)}, InputError),
        ({"roi": "x"}, InputError),
        ({"seed": (-5, 10)}, InputError),
        ({"seed": (10, 10_000)}, InputError),
        ({"seed": (float("nan"), 3)}, InputError),
        ({"deep_at_rc": (float("nan"), 3)}, InputError),
        ({"superficial_at_rc": (10, 10_000)}, InputError),
        ({"superficial_at_rc": (300, 100), "deep_at_rc": (200, 100)}, InputError),
        ({"deep_at_rc": "99"}, InputError),
        ({"seed": (10**400, 3)}, InputError),
        ({"seed": "ab"}, InputError),
        ({"metrics": ["csa", "colour"]}, InputError),
        ({"echo_region": "roi"}, InputError),
        ({"echo_region": "csa", "metrics": ["echogenicity"]}, InputError),
        ({"roi": (0, 0, float("inf"), 64)}, InputError),
        ({"metrics": None}, InputError),
        ({"echo_region": "bogus"}, InputError),
        ({"previous": "x"}, InputError),
    ],
)
def test_bad_arguments(frames, kwargs, err):
    with pytest.raises(err):
        analyze_frame(frames[0].image, **kwargs)


def test_a_small_roi_is_an_echogenicity_region_and_thickness_is_still_measured(frames):
    """A 20x20 echo ROI (common practice) cannot hold two aponeuroses: thickness is found in the
    automatic region instead of failing the whole frame; an echo_region="csa" contour is tracked
    even when the CSA itself is not reported."""
    img = frames[0].image
    res = analyze_frame(img, roi=(100, 100, 120, 120))
    assert res.echogenicity.region == "roi" and res.echogenicity.n_px == 400
    auto = analyze_frame(img).thickness
    assert res.thickness.thickness_px == auto.thickness_px and res.thickness.region_rc == auto.region_rc
    seed = frames[0].truth.nerve_center_rc
    first = analyze_frame(img, seed=seed, metrics=["echogenicity"], echo_region="csa")
    assert first.csa is None and first.echogenicity.region == "csa"
    second = analyze_frame(frames[1].image, previous=first, metrics=["echogenicity"], echo_region="csa")
    assert second.echogenicity.region == "csa" and second.echogenicity.n_px > 0


@pytest.mark.parametrize(
    "frame", [np.zeros((64, 64), np.float64), np.zeros((64, 64, 3), np.uint8), "image", np.zeros((8, 8), np.uint8)]
)
def test_bad_frames(frame):
    with pytest.raises(InputError):
        analyze_frame(frame)


def test_an_outline_leaving_the_image_counts_only_what_is_seen():
    """A nerve cut by the image edge: the CSA is the outline's part inside the picture (the outline
    used to count pixels beyond it), its confidence lowered by the share outside."""
    from mmstream.analysis import _visible_area_px
    from mmstream.kernels import csa as csa_k
    from mmstream.kernels.csa import _polygon_props

    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([30 * np.sin(t), 30 * np.cos(t)], axis=1)
    full = _polygon_props(circle + 100)[0]
    assert _visible_area_px(circle + 100, (200, 200)) == pytest.approx(full)  # inside: unchanged
    assert _visible_area_px(circle - 0.5, (200, 200)) == pytest.approx(full / 4)  # centred on the corner
    assert _visible_area_px(circle + [100, -0.5], (200, 200)) == pytest.approx(full / 2)  # on the left edge
    assert _visible_area_px(circle + 500, (200, 200)) == 0.0
    rng = np.random.default_rng(2)
    img = rng.integers(60, 90, (128, 160), dtype=np.uint8)
    img[40:90, :30] = 200  # a bright structure against the left edge
    res = analyze_frame(img, seed=(64.0, 6.0), metrics=["csa"]).csa
    inside = _visible_area_px(res.contour_rc, img.shape)
    assert res.area_px == pytest.approx(inside) and res.contour_rc[:, 1].min() < -0.5  # the outline does leave
    assert res.area_px < _polygon_props(res.contour_rc)[0] and 0 <= res.confidence < 1
    whole = csa_k.segment_from_seed(img, (64.0, 6.0))  # the kernel's outline and confidence, edge ignored
    share = res.area_px / whole.area_px
    assert 0.3 < share < 0.95 and whole.confidence > 0
    assert res.confidence == pytest.approx(whole.confidence * share)  # lowered by the share left outside
