"""Smoke run of tools/bench_sources.py: it runs, measures every row and writes its JSON."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


@pytest.mark.shared_data
def test_bench_sources_writes_a_row_per_comparison(tmp_path, shared_data):
    import bench_sources

    out = tmp_path / "bench.json"
    dicom = shared_data / "dicom-us" / "examples_ybr_color.dcm"  # 30 small frames: a quick run
    assert bench_sources.main(["--repeats", "1", "--igtl-frames", "20", "--dicom", str(dicom), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["what"] for r in rows] == [
        "DICOM cine: driver decode", "DICOM cine: driver decode + publish",
        "OpenIGTLink: driver ingest (CRC checked)", "OpenIGTLink: driver ingest, check_crc=false",
        "OpenIGTLink: driver ingest + publish",
        "OpenIGTLink: driver ingest (CRC checked)", "OpenIGTLink: driver ingest + publish",
    ]  # fmt: skip
    assert rows[-1]["library"] == "pyigtl client receive"
    assert rows[0]["frames"] == 30 and rows[2]["frames"] == 20
    assert all(r["ratio"] > 0 and r["driver_fps"] > 0 and r["target_ratio"] == 1.2 for r in rows)
