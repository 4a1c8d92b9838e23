"""Quality kernel: parity with the twin, duplicate/frozen/saturation/contact detection, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmstream.errors import InputError
from mmstream.kernels.quality import QualityLimits, frame_quality
from twins import quality as twin


@settings(max_examples=50, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(64, 90), st.integers(16, 70))))
def test_matches_twin(image):
    q = frame_quality(image)
    sat, dark = twin.fractions(image)
    assert q.saturated_fraction == pytest.approx(sat)
    assert q.dark_fraction == pytest.approx(dark)
    assert q.active_fraction == pytest.approx(twin.active_fraction(image), abs=1e-12)
    np.testing.assert_allclose(q.signature.thumb, twin.thumbnail(image), rtol=1e-12)
    assert q.thumb_mean_abs_diff is None and not q.frozen and not q.duplicate


def test_duplicate_and_frozen(sim_probe, rng):
    a = sim_probe.frame(0).image
    qa = frame_quality(a)
    same = frame_quality(a.copy(), qa.signature)
    assert same.duplicate and not same.frozen and same.thumb_mean_abs_diff == 0.0  # one repeat: not a freeze
    # a frozen scanner seen through a noisy grabber (+-1 grey level): frozen from the 5th near-identical frame on
    sig, flags = qa.signature, []
    for _ in range(7):
        q = frame_quality(np.clip(a.astype(np.int16) + rng.integers(-1, 2, a.shape), 0, 255).astype(np.uint8), sig)
        sig = q.signature
        flags.append((q.duplicate, q.frozen))
    assert flags == [(False, False)] * 4 + [(False, True)] * 3 and sig.still_frames == 7
    # live tissue (the next simulated frames: probe moved, fresh noise) ends the run at once
    qb = frame_quality(sim_probe.frame(5).image, sig)
    assert not qb.frozen and not qb.duplicate and qb.signature.still_frames == 0
    assert not frame_quality(a, sig, QualityLimits(frozen_frames=9)).frozen


@pytest.mark.jit_only
def test_consecutive_frames_of_the_simulated_probe_are_never_frozen(sim_probe):
    sig, frozen = None, []
    for i in range(120):
        q = frame_quality(sim_probe.frame(i).image, sig)
        sig = q.signature
        frozen.append(q.frozen)
    assert not any(frozen)


def test_one_changed_pixel_is_not_duplicate(sim_probe):
    a = sim_probe.frame(0).image
    b = a.copy()
    b[100, 100] ^= 1
    q = frame_quality(b, frame_quality(a).signature)
    assert not q.duplicate and q.thumb_mean_abs_diff < 0.01 and q.signature.still_frames == 1


def test_saturation_and_no_contact():
    img = np.full((128, 128), 100, np.uint8)
    img[:20] = 255
    q = frame_quality(img)
    assert q.saturated_fraction == pytest.approx(20 / 128) and q.saturated and not q.no_contact
    black = np.zeros((128, 128), np.uint8)
    black[:6] = 180  # near-field reverberation of a probe in air
    q = frame_quality(black)
    assert q.no_contact and q.dark_fraction == pytest.approx(122 / 128)
    assert not frame_quality(black, limits=QualityLimits(dark_fraction_no_contact=0.99)).no_contact


def test_featureless_frames(sim_probe, rng):
    """A uniform screen, with or without a caption, is featureless; a B-mode frame, even mostly
    dark, and a frame of +-1 grey level noise are not."""
    grey = np.full((128, 160), 29, np.uint8)
    q = frame_quality(grey)
    assert q.featureless and q.active_fraction == 0.0 and not q.no_contact
    grey[64, 40:120] = 235  # a caption's underline
    q = frame_quality(grey)
    assert q.featureless and 0.0 < q.active_fraction < 0.02
    assert not frame_quality(grey, limits=QualityLimits(active_fraction_featureless=q.active_fraction)).featureless
    image = sim_probe.frame(0).image
    q = frame_quality(image)
    assert not q.featureless and q.active_fraction > 0.9
    mostly_dark = np.zeros_like(image)
    mostly_dark[100:120] = image[100:120]  # 4% of the frame: no contact, but an image
    q = frame_quality(mostly_dark)
    assert q.no_contact and not q.featureless and q.active_fraction > 0.9
    noisy = (100 + rng.integers(-1, 2, image.shape)).astype(np.uint8)
    assert not frame_quality(noisy).featureless
    black = frame_quality(np.zeros_like(image))  # no non-dark pixel at all: no contact (the flags exclude each other)
    assert black.no_contact and not black.featureless and black.active_fraction == 0.0
    # a line-doubling grabber or an upscaled frame: every sampled row equals the row below
    for scaled in (np.repeat(image, 2, axis=0), np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)):
        q = frame_quality(np.ascontiguousarray(scaled))
        assert not q.featureless and q.active_fraction > 0.2, scaled.shape


@pytest.mark.parametrize("image", [np.zeros((63, 20), np.uint8), np.zeros((64, 64), np.int16), np.zeros((64, 64, 3), np.uint8)])
def test_bad_input(image):
    with pytest.raises(InputError):
        frame_quality(image)


@pytest.mark.shared_data
@pytest.mark.jit_only
def test_real_cines_are_never_frozen(shared_data):
    """A handheld SonoSite cine (120 frames, 7 exact repeats) and a PLUS tracked scan: no frozen
    frame (the former one-pair check under 0.5 grey levels flagged 49 of the cine's 120)."""
    from mmstream.io import read_frames

    for path, duplicates in ((shared_data / "dicom-us" / "color3d_jpeg_baseline.dcm", 7),
                             (shared_data / "pluslibdata" / "BoneUltrasound_L14.igs.mha", 0)):  # fmt: skip
        sig, frozen, dup = None, 0, 0
        for f in read_frames(path):
            q = frame_quality(f.image, sig)
            sig, frozen, dup = q.signature, frozen + q.frozen, dup + q.duplicate
        assert frozen == 0 and dup == duplicates, path.name
