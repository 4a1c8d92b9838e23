"""``mmstream analyze`` and ``mmstream demo``: output contract, batches with bad files, real data."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files

import cv2
import numpy as np
import pytest

from mmstream.cli import CSV_COLUMNS, main

PHANTOM = files("mmstream") / "data" / "phantom.png"
PHANTOM_TRUTH = json.loads((files("mmstream") / "data" / "phantom.json").read_text())


def run(capsys, *argv):
    code = main(["analyze", "--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def records(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_phantom_jsonl_contract(capsys):
    seed = PHANTOM_TRUTH["seed_rc"]
    code, out, err = run(capsys, PHANTOM, "--seed", *seed, "--spacing-mm", *PHANTOM_TRUTH["spacing_mm"])
    assert code == 0, err
    (rec,) = records(out)
    assert {"source", "frame", "spacing_mm", "echogenicity", "csa", "thickness"} <= rec.keys()
    assert rec["frame"] == 0 and rec["spacing_mm"] == [0.1, 0.1] and rec["spacing_source"] == "config"
    assert {"mean", "std", "n_px"} <= rec["echogenicity"].keys()
    assert {"area_px", "area_mm2", "contour_rc", "confidence"} <= rec["csa"].keys()
    assert {"thickness_px", "thickness_mm", "superficial_rc", "deep_rc", "confidence"} <= rec["thickness"].keys()
    assert rec["csa"]["area_mm2"] == pytest.approx(PHANTOM_TRUTH["nerve_area_mm2"], rel=0.15)
    assert rec["thickness"]["thickness_mm"] == pytest.approx(PHANTOM_TRUTH["thickness_mm"], abs=0.3)
    assert all(len(p) == 2 for p in rec["csa"]["contour_rc"])


def test_csv_and_metric_subset(capsys):
    code, out, _ = run(capsys, PHANTOM, "--format", "csv", "--metrics", "echogenicity,quality", "--roi", 10, 20, 110, 220)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0].keys()) == CSV_COLUMNS and len(rows) == 1
    img = cv2.imread(str(PHANTOM), cv2.IMREAD_UNCHANGED)
    assert float(rows[0]["echo_mean"]) == pytest.approx(img[10:110, 20:220].mean())
    assert rows[0]["csa_area_px"] == "" and rows[0]["thickness_px"] == ""
    assert rows[0]["spacing_source"] == "unknown"


def test_batch_with_bad_files_keeps_going(capsys, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.tif"
    good2 = tmp_path / "copy.png"
    shutil.copy(PHANTOM, good2)
    code, out, err = run(capsys, PHANTOM, garbage, empty, missing, good2, "--metrics", "echogenicity")
    assert code == 1
    assert [r["source"] for r in records(out)] == [str(PHANTOM), str(good2)]
    lines = err.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip((garbage, empty, missing), lines):
        assert line.startswith(f"mmstream analyze: error: {path}: ")


def test_seed_or_roi_outside_image(capsys):
    code, out, err = run(capsys, PHANTOM, "--seed", 900, 10)
    assert code == 1 and out == "" and str(PHANTOM) in err and "seed" in err
    code, out, err = run(capsys, PHANTOM, "--roi", 0, 0, 600, 600)
    assert code == 1 and "roi" in err


def test_image_without_probe_contact_is_not_measured_and_a_seed_on_it_refused(capsys, tmp_path):
    lifted = tmp_path / "lifted.png"
    assert cv2.imwrite(str(lifted), np.zeros((200, 240), np.uint8))
    code, out, err = run(capsys, lifted, PHANTOM, "--metrics", "echogenicity,csa,thickness")
    assert code == 0, err
    rec, good = records(out)
    assert rec["echogenicity"] is None and rec["thickness"] is None and rec["quality"]["no_contact"] is True
    assert good["thickness"] is not None and good["quality"] is None  # not asked for, and measured
    code, out, err = run(capsys, lifted, "--seed", 100, 100)  # measured (nothing), but the seed never applied
    assert code == 1 and len(records(out)) == 1 and str(lifted) in err and "seed never applied" in err


@pytest.mark.parametrize(("grey", "flag"), [(0, "no_contact"), (29, "featureless")])
def test_a_seed_applies_to_the_first_frame_with_probe_contact(capsys, tmp_path, sim_probe, grey, flag):
    frames = [np.full((512, 512), grey, np.uint8)] + [sim_probe.frame(i).image for i in range(2)]
    path = tmp_path / "cine.tif"
    assert cv2.imwritemulti(str(path), frames)
    seed = sim_probe.frame(0).truth.nerve_center_rc
    code, out, err = run(capsys, path, "--seed", *seed, "--metrics", "csa")
    assert code == 0, err
    recs = records(out)
    assert recs[0]["csa"] is None and recs[0]["quality"][flag]
    assert recs[1]["csa"]["tracked"] is False and recs[2]["csa"]["tracked"] is True


def test_clicked_deep_line_first_frame_then_tracked(capsys, tmp_path, sim_probe):
    frames = [sim_probe.frame(i) for i in range(3)]
    path = tmp_path / "cine.tif"
    assert cv2.imwritemulti(str(path), [f.image for f in frames])
    c = frames[0].image.shape[1] // 2
    deep = (float(frames[0].truth.deep_row[c]), float(c))
    code, out, err = run(capsys, path, "--deep-at", *deep, "--metrics", "thickness")
    assert code == 0, err
    recs = records(out)
    assert [r["thickness"]["tracked"] for r in recs] == [False, True, True]
    assert all(r["thickness"]["deep_at_rc"][1] == c for r in recs)  # held at the click's column
    for r, f in zip(recs, frames):
        assert r["thickness"]["thickness_px"] == pytest.approx(f.truth.thickness_px, abs=3.0)
        assert r["thickness"]["superficial_at_rc"] is None
    code, out, err = run(capsys, path, "--deep-at", *deep, "--metrics", "thickness", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["thickness_tracked"] for r in rows] == ["False", "True", "True"]
    for row, rec in zip(rows, recs):  # the CSV holds the held points too
        assert float(row["thickness_deep_at_col"]) == c and row["thickness_superficial_at_row"] == ""
        assert float(row["thickness_deep_at_row"]) == pytest.approx(rec["thickness"]["deep_at_rc"][0])
    for bad in (["--superficial-at", 5000, 10], ["--deep-at", "nan", 10], ["--superficial-at", 300, 10, "--deep-at", 302, 10]):
        code, out, err = run(capsys, path, PHANTOM, *bad, "--metrics", "thickness")
        assert code == 1 and out == "" and str(path) in err and str(PHANTOM) in err  # both files refused, named


def test_require_spacing(capsys):
    code, out, err = run(capsys, PHANTOM, "--require-spacing", "--metrics", "echogenicity")
    assert code == 1 and "no_spacing" in err and out == ""


@pytest.mark.parametrize(
    "argv", [["--metrics", "colour"], ["--spacing-mm", "0", "0.1"], ["--spacing-mm", "nan", "1"], ["--format", "xml"]]
)
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(PHANTOM), *argv])
    assert exc.value.code == 2


def test_multiframe_tiff_tracks_after_first_frame(capsys, tmp_path, sim_probe):
    frames = [sim_probe.frame(i) for i in range(3)]
    path = tmp_path / "cine.tif"
    ok, = (cv2.imwritemulti(str(path), [f.image for f in frames]),)
    assert ok
    seed = frames[0].truth.nerve_center_rc
    code, out, err = run(capsys, path, "--seed", *seed, "--metrics", "csa")
    assert code == 0, err
    recs = records(out)
    assert [r["frame"] for r in recs] == [0, 1, 2]
    assert [r["csa"]["tracked"] for r in recs] == [False, True, True]


@pytest.mark.shared_data
def test_sonosite_cine_spacing(capsys, shared_data):
    path = shared_data / "dicom-us" / "color3d_jpeg_baseline.dcm"
    code, out, err = run(capsys, path, "--metrics", "echogenicity", "--require-spacing")
    assert code == 0, err
    recs = records(out)
    assert len(recs) == 120
    assert all(r["spacing_mm"] == pytest.approx([0.5105, 0.5105], abs=1e-4) for r in recs)
    # without --roi the B-mode region of the DICOM ultrasound region sequence is analysed
    assert recs[0]["echogenicity"]["n_px"] == (414 - 31 + 1) * (595 - 84 + 1)
    assert recs[0]["spacing_source"] == "dicom_us_regions"
    # a spacing given by hand replaces the calibrated one: used, and said once on stderr
    code, out, err = run(capsys, path, "--metrics", "quality", "--spacing-mm", 0.1, 0.1)
    assert code == 0 and records(out)[5]["spacing_mm"] == [0.1, 0.1] and records(out)[5]["spacing_source"] == "config"
    assert err.count("warning") == 1 and "replaces the file's own 0.510497 x 0.510497 mm (dicom_us_regions)" in err


@pytest.mark.shared_data
def test_offline_thickness_equals_the_live_sources_on_a_dicom_cine(capsys, shared_data):
    """`mmstream analyze` passes the file's B-mode region as ROI; the live dicom source crops the
    frame to it. Both search the picture found inside (the sector's black corners left out), so the
    same frame gives the same lines (they once differed by 22 px, 11 mm, on this cine)."""
    from mmstream.analysis import analyze_frame
    from mmstream.io import read_frames

    path = shared_data / "dicom-us" / "color3d_jpeg_baseline.dcm"
    code, out, err = run(capsys, path, "--metrics", "thickness")
    assert code == 0, err
    offline = records(out)[0]["thickness"]
    f = next(read_frames(path))
    r0, c0, r1, c1 = f.meta["region_rc"]
    live = analyze_frame(np.ascontiguousarray(f.image[r0:r1, c0:c1]), spacing_mm=f.spacing_mm, metrics=["thickness"]).thickness
    assert offline["thickness_px"] == live.thickness_px and offline["thickness_mm"] == pytest.approx(live.thickness_mm)
    lr0, lc0, lr1, lc1 = live.region_rc
    assert offline["region_rc"] == [lr0 + r0, lc0 + c0, lr1 + r0, lc1 + c0]
    assert lc1 - lc0 < c1 - c0  # the sector's black corners are not searched


@pytest.mark.shared_data
def test_plus_sequence(capsys, shared_data):
    path = shared_data / "pluslibdata" / "BoneUltrasound_L14.igs.mha"
    code, out, err = run(capsys, path, "--metrics", "echogenicity,thickness")
    assert code == 0, err
    recs = records(out)
    assert len(recs) == 21
    assert all(r["thickness"]["thickness_px"] > 0 for r in recs)


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "mmstream.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("mmstream ")


def test_large_batch_progress_does_not_pollute_stdout(tmp_path):
    img = np.full((80, 80), 119, np.uint8)
    img[1::2] = 121  # mean 120; a uniform frame would be featureless (not measured)
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}.bmp"
        cv2.imwrite(str(p), img)
        paths.append(str(p))
    proc = subprocess.run(
        [sys.executable, "-m", "mmstream.cli", "analyze", "--metrics", "echogenicity", *paths],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["echogenicity"]["mean"] for line in proc.stdout.splitlines()] == [120.0] * 5


def test_cli_pins_one_blas_thread_unless_the_user_chose(tmp_path):
    """``mmstream`` sets OPENBLAS_NUM_THREADS=1 before numpy loads; a user's value wins."""
    code = "import os, mmstream.cli, numpy; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    out = subprocess.run([sys.executable, "-c", code], env=env | {"OPENBLAS_NUM_THREADS": "2"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "2"


@pytest.mark.parametrize("argv", [
    ["status", "--timeout-ms", "-5"], ["report", "x.h5", "--thumbnails", "-3"], ["demo", "--duration", "-1"],
    ["demo", "--fps", "inf"], ["sources", "probe", "sim", "--frames", "0"], ["biopsy", "P", "--age-years", "-4"],
    ["inspect", "x.h5", "--interval-s", "nan"], ["volumes", "send", "x.nii", "--timeout-s", "0"],
    ["replay", "x.h5", "--speed", "0"], ["status", "--timeout-ms", "1.5"], ["replay", "x.h5", "--to", "127.0.0.1:5555"],
    ["status", "--control", "http://x"],
])  # fmt: skip
def test_out_of_range_numbers_and_bad_endpoints_are_usage_errors(argv, capsys):
    """Refused by the parser, naming the option (they used to raise tracebacks or be used as given)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {argv[-2]}: " in err
    assert f"{argv[-1]} must be" in err or f"{argv[-1]!r} is not an integer" in err or f"bad endpoint {argv[-1]!r}" in err


def test_csa_asked_for_without_a_seed_says_what_it_needs(capsys):
    code, out, err = run(capsys, PHANTOM, "--metrics", "csa,thickness")
    assert code == 0 and records(out)[0]["csa"] is None and "the CSA needs --seed ROW COL" in err
    code, out, err = run(capsys, PHANTOM)  # every metric, by default: no note
    assert code == 0 and err == ""
