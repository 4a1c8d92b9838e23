"""Smoke run of tools/bench_header_decay.py: every pause measured, ratios to back to back, JSON written."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def test_bench_header_decay_measures_every_pause(tmp_path, capsys):
    import bench_header_decay

    out = tmp_path / "decay.json"
    bench_header_decay.main(["--repeat", "3", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["pause_ms"], r["pause"]) for r in rows] == [
        (0.0, "none"), (0.1, "sleep"), (0.1, "spin"), (1.0, "sleep"), (1.0, "spin"),
        (4.0, "sleep"), (4.0, "spin"), (16.0, "sleep"), (16.0, "spin"),
    ]  # fmt: skip
    assert rows[0]["ratio_to_back_to_back"] == 1.0 and all(r["build_encode_us"] > 0 for r in rows)
    assert "x back to back" in capsys.readouterr().out
