"""The CSA training tools' file handling: fold networks (tools/train_csa_net.py) and the weights
module (tools/train_csa.py); the size breakdown of tools/accuracy_nerve.py. Training itself needs
torch and ../shared/data and is not run here."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from mmstream.errors import ReadError
from mmstream.kernels import csa, csa_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import accuracy_nerve  # noqa: E402
import train_csa  # noqa: E402
import train_csa_net  # noqa: E402


def _comps(n_images=10):
    return [{"img": i // 2} for i in range(2 * n_images)]  # two components per image


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in csa_net.layer_shapes().items()}


def test_held_out_nets_names_the_missing_files_and_the_command(tmp_path):
    with pytest.raises(SystemExit) as info:
        train_csa.held_out_nets(_comps(), 5, tmp_path)
    msg = str(info.value)
    assert "fold0_m0.npz" in msg and "fold4_m1.npz" in msg and "tools/train_csa_net.py --folds 5 --member M" in msg


def test_held_out_nets_gives_each_component_its_folds_ensemble(tmp_path):
    comps = _comps()
    assert train_csa_net.fold_paths(tmp_path, 3, 1) == [tmp_path / "k3" / f"fold{f}_m1.npz" for f in range(3)]
    (tmp_path / "k3").mkdir()
    for m in (0, 1, 2):
        for f, p in enumerate(train_csa_net.fold_paths(tmp_path, 3, m)):
            np.savez(p, **_params(10 * m + f))
    fold = train_csa.folds_by_image(comps, 3)
    for members in (None, [2], [2, 0]):
        nets = train_csa.held_out_nets(comps, 3, tmp_path, members)
        want = [0, 1] if members is None else members  # default: as many as csa_net.SHIPPED
        for ens, f in zip(nets, fold, strict=True):
            assert len(ens) == len(want)
            for net, m in zip(ens, want, strict=True):
                np.testing.assert_array_equal(net["out.bias"], _params(10 * m + f)["out.bias"])
    # both components of an image share a fold
    assert all(fold[2 * i] == fold[2 * i + 1] for i in range(10))


def test_held_out_nets_refuses_a_broken_fold_file(tmp_path):
    (tmp_path / "k2").mkdir()
    for m in (0, 1):
        for p in train_csa_net.fold_paths(tmp_path, 2, m):
            np.savez(p, **_params())
    train_csa_net.fold_paths(tmp_path, 2, 1)[1].write_bytes(b"not a network")
    with pytest.raises(ReadError, match="fold1_m1.npz"):
        train_csa.held_out_nets(_comps(), 2, tmp_path)


def test_written_weights_module_has_both_vectors(tmp_path, monkeypatch):
    path = tmp_path / "_csa_model.py"
    monkeypatch.setattr(train_csa, "MODEL_PATH", path)
    click = np.linspace(-1, 1, csa.N_OUTLINE + csa_net.N_NET_FEATURES)
    track = np.linspace(2, 3, csa.N_OUTLINE)
    train_csa.write_model(click, track, "a note")
    spec = importlib.util.spec_from_file_location("written_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    np.testing.assert_array_equal(mod.CLICK_WEIGHTS, click)
    np.testing.assert_array_equal(mod.TRACK_WEIGHTS, track)
    assert "a note" in mod.__doc__


def test_shipped_weights_fit_the_features():
    assert csa._click_weights().shape == (csa.N_OUTLINE + csa_net.N_NET_FEATURES,)
    assert csa._track_weights().shape == (csa.N_OUTLINE,)


def _ring_image():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 80, (420, 440)).astype(np.uint8)
    rr, cc = np.mgrid[:420, :440]
    img[np.abs(np.hypot((rr - 210) / 30.0, (cc - 200) / 45.0) - 1.0) < 0.08] = 220
    return img


def test_click_picks_the_candidate_the_trainer_scores_best():
    """segment_from_seed ranks candidates by what tools/train_csa.py fits: its design matrix
    (outline, shape and network features) times the shipped click weights."""
    img = _ring_image()
    comp = {"grey": img, "truth": {"seed_rc": [210, 200]}, "mask": np.zeros(img.shape, bool)}
    comp["mask"][200:220, 190:210] = True
    x, _ = train_csa.design([comp], [csa_net.shipped_nets()])
    best = int(np.argmax(x[0].astype(np.float64) @ csa._click_weights()))
    res = csa.segment_from_seed(img, (210.0, 200.0))
    expected = np.stack([210.0 + csa.CAND_RADII[best] * csa.SIN_T, 200.0 + csa.CAND_RADII[best] * csa.COS_T], 1)
    np.testing.assert_allclose(res.contour_rc, expected, atol=1e-9)


def test_training_crops_line_up_with_the_run_time_input():
    """The trainer's crops (area-downsampled image, warped) and net_input place the image alike:
    with the crop's blocks on the downsampled grid they agree exactly, and one network px off they
    do not."""
    import cv2

    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.integers(0, 256, (700, 760)).astype(np.float32), (0, 0), 6.0)
    img = np.clip((img - img.mean()) * 8 + 100, 0, 255).astype(np.uint8)
    small = cv2.resize(img.astype(np.float32), None, fx=1 / csa_net.POOL, fy=1 / csa_net.POOL,
                       interpolation=cv2.INTER_AREA)  # fmt: skip
    seed = (348.0, 400.0)  # crop origin a multiple of POOL: both read the same blocks
    run = csa_net.net_input(img, seed)[0][0] * csa_net.GREY_SCALE + csa_net.GREY_CENTRE
    train = train_csa_net._warp(small, seed, 1.0, False)
    inner = slice(8, -8)

    def diff(dr, dc):
        return float(np.abs(np.roll(train, (dr, dc), (0, 1))[inner, inner] - run[inner, inner]).mean())

    assert diff(0, 0) < 1e-3
    assert min(diff(1, 0), diff(-1, 0), diff(0, 1), diff(0, -1)) > 5.0


def test_by_size_groups_components_by_expert_area_quarters():
    """Small nerves drawn 20 % too large and large ones 10 % too small: each quarter reports its own
    median, the area ranges cover every component, and the sign says which way the outlines err."""
    areas = [100.0, 200.0, 300.0, 400.0, 1000.0, 1100.0, 1200.0, 1300.0]
    comps = [{"truth": {"area_px": a}} for a in areas]
    rows = [{"dice": 0.6 + 0.05 * k, "signed_area_err": 0.2 if a < 500 else -0.1} for k, a in enumerate(areas)]
    groups = accuracy_nerve.by_size(rows, comps)
    assert [g["n"] for g in groups] == [2, 2, 2, 2]
    assert groups[0]["area_px"][0] == 100.0 and groups[-1]["area_px"][1] == 1300.0
    assert [g["signed_area_err_median"] for g in groups] == pytest.approx([0.2, 0.2, -0.1, -0.1])
    assert [g["dice_median"] for g in groups] == pytest.approx([0.625, 0.725, 0.825, 0.925])
