"""``mmstream analyze`` and ``mmstream demo``: output contract, batches with bad files, real data."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zlib
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


# ---------------------------------------------------------------------------------------------
# hostile files in a batch: one line per failed file, the batch goes on, the status kept


def _zero_rgba16_png(path, rows: int, cols: int):
    """A PNG of rows x cols 16-bit RGBA zeros: a few hundred kB that decode to rows * cols * 8 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z, row = zlib.compressobj(9), bytes(1 + cols * 8)
    idat = b"".join(z.compress(row) for _ in range(rows)) + z.flush()
    ihdr = cols.to_bytes(4, "big") + rows.to_bytes(4, "big") + bytes([16, 6, 0, 0, 0])  # 16-bit RGBA
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


_LIMITED = """
import resource, sys
import mmstream.io  # noqa: F401
from mmstream.cli import main
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + (400 << 20), resource.RLIM_INFINITY))
sys.exit(main(["analyze", "--no-progress", "--metrics", "quality", *sys.argv[1:]]))
"""


def test_a_file_too_big_for_the_memory_fails_alone(tmp_path):
    """Its MemoryError (or OpenCV's failed allocation, reported as a corrupt file) ended the batch
    with a traceback; the files after it were never read."""
    big = _zero_rgba16_png(tmp_path / "big.png", 4096, 8192)  # 256 MB decoded; the process gets 400 MB more
    assert big.stat().st_size < 1_000_000
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(big), str(PHANTOM)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert [r["source"] for r in records(proc.stdout)] == [str(PHANTOM)]
    assert proc.stderr.splitlines() == [f"mmstream analyze: error: {big}: out_of_memory: not enough memory to "
                                        "decode or analyse its frames"]  # fmt: skip


def test_error_output_is_one_line_per_failed_file(tmp_path):
    """File names with a newline or an escape sequence were printed raw; OpenCV's [ WARN ] lines,
    pydicom's warnings and multi-line decoder errors came between the error lines."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    openjpeg = pytest.importorskip("openjpeg")
    half_png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))[1].tobytes()
    half_png = half_png[: len(half_png) // 2]
    named = [tmp_path / "bad\ninjected: fake line.png", tmp_path / "esc\x1b[2J.png", tmp_path / "half.png"]
    for p in named:
        p.write_bytes(half_png)

    def dicom(path, ts, pixel_data):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfFrames = 9
        ds.PixelData = pixel_data
        if ts.is_encapsulated:
            ds.NumberOfFrames = 1
            ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
        return path

    j2k = bytes(openjpeg.encode(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)))
    bad_dicoms = [dicom(tmp_path / "frames_text.dcm", ExplicitVRLittleEndian, bytes(9 * 64 * 64)),
                  dicom(tmp_path / "cut_j2k.dcm", JPEG2000Lossless, encapsulate([j2k[: len(j2k) // 2]]))]  # fmt: skip
    raw = bad_dicoms[0].read_bytes()  # NumberOfFrames "ab": pydicom warns when it is read
    bad_dicoms[0].write_bytes(raw.replace(b"\x28\x00\x08\x00IS\x02\x009 ", b"\x28\x00\x08\x00IS\x02\x00ab"))
    proc = subprocess.run([sys.executable, "-m", "mmstream.cli", "analyze", "--no-progress", "--metrics", "quality",
                           *map(str, named + bad_dicoms + [PHANTOM])], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 5 and all(line.startswith("mmstream analyze: error: ") for line in lines), proc.stderr
    assert f"{tmp_path}/bad\\ninjected: fake line.png: corrupt: " in lines[0]
    assert f"{tmp_path}/esc\\x1b[2J.png: corrupt: " in lines[1] and "\x1b" not in proc.stderr
    assert lines[2].endswith("half.png: corrupt: cannot decode PNG page 0 (truncated or corrupt)")  # no OpenCV [ WARN ] line
    assert lines[3].endswith("frames_text.dcm: bad_header: DICOM attribute NumberOfFrames = 'ab' is not an integer")
    assert ": corrupt: cannot decode frame 0 (RuntimeError: " in lines[4]  # every plugin's error, on one line
    assert [r["source"] for r in records(proc.stdout)] == [str(PHANTOM)]


def test_opencv_log_level_chosen_in_the_environment_is_kept(tmp_path):
    """mmstream.io sets OpenCV's log to errors only (its warnings repeat the readers' errors), unless
    the user asked for OpenCV's log with OPENCV_LOG_LEVEL."""
    half_png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))[1].tobytes()
    bad = tmp_path / "half.png"
    bad.write_bytes(half_png[: len(half_png) // 2])
    argv = [sys.executable, "-m", "mmstream.cli", "analyze", "--no-progress", "--metrics", "quality", str(bad)]
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    told = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**env, "OPENCV_LOG_LEVEL": "WARNING"})
    assert quiet.returncode == told.returncode == 1
    assert quiet.stderr.splitlines() == [f"mmstream analyze: error: {bad}: corrupt: cannot decode PNG page 0 (truncated or corrupt)"]
    assert "PNG input buffer is incomplete" in told.stderr and quiet.stderr.splitlines()[0] in told.stderr


def test_a_closed_output_pipe_keeps_the_failure_status(tmp_path):
    """`mmstream analyze bad.png cine | head -1` exited 0 although a file had failed."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    rng = np.random.default_rng(1)
    cine = tmp_path / "cine.tif"  # 400 records (~200 kB): written after the reader has gone
    assert cv2.imwritemulti(str(cine), [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(400)])
    for batch, status in (([bad, cine], 1), ([cine], 0)):
        proc = subprocess.Popen([sys.executable, "-m", "mmstream.cli", "analyze", "--no-progress", "--metrics",
                                 "quality", *map(str, batch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert json.loads(proc.stdout.readline())["source"] == str(cine)
        proc.stdout.close()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == status, err
        assert b"Traceback" not in err and b"Exception ignored" not in err


@pytest.mark.parametrize("argv, says", [
    (["--metrics", ","], "argument --metrics: empty: name at least one of echogenicity,csa,thickness,quality"),
    (["--metrics", "colour,quality"], "argument --metrics: unknown colour; choose from"),
    (["--spacing-mm", "0", "0.1"], "argument --spacing-mm: spacing_mm: spacing must be two numbers in"),
])  # fmt: skip
def test_option_errors_show_the_analyze_usage(argv, says, capsys):
    """`--metrics ,` said "unknown []"; every such error printed the top-level usage."""
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(PHANTOM), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: mmstream analyze ") and says in err


def test_smallest_frames_as_documented(capsys, tmp_path):
    """analyze_frame's docstring: H >= 64 and W >= 16, and W >= 32 for thickness."""
    img = np.random.default_rng(2).integers(0, 256, (64, 32), dtype=np.uint8)
    cases = [((64, 16), "echogenicity,quality", 0), ((64, 16), "thickness", 1), ((64, 32), "thickness", 0),
             ((63, 32), "quality", 1)]  # fmt: skip
    for (rows, cols), metrics, status in cases:
        p = tmp_path / f"{rows}x{cols}.png"
        cv2.imwrite(str(p), np.ascontiguousarray(img[:rows, :cols]))
        code, out, err = run(capsys, p, "--metrics", metrics)
        assert code == status, (rows, cols, metrics, err)
