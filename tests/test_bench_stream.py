"""tools/bench_stream.py runs end to end in a tiny configuration and reports sane numbers.

Real processes, real sockets (driver, service graph, subscriber, raw pyzmq floor, pyigtl peer); the
assertions are about what the benchmark measures (lossless ingest, latency split), not about speed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_stream.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_stream.json"
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--quick", "--seconds", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _sane_latency(p, n_min):
    assert p["n"] >= n_min, p
    assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] < 1000, p


def test_json_has_every_section_and_the_table_is_printed(report):
    data, stdout = report
    assert set(data) >= {"frame", "machine", "floor_zmq", "peer_pyigtl", "analysis_alone", "mmstream",
                         "mmstream_json_between_nodes", "floor_zmq_analysis", "ratios", "targets"}  # fmt: skip
    assert data["frame"] == {"shape": [512, 512], "dtype": "uint8"}
    assert set(data["mmstream"]["latency"]) == {"30", "60"}
    assert set(data["ratios"]) == {"p50_over_zmq_one_way", "p50_over_zmq_round_trip", "p50_over_pyigtl", "p99_over_pyigtl",
                                   "p50_over_json_between_nodes", "p50_over_floor_with_analysis"}  # fmt: skip
    json_run = data["mmstream_json_between_nodes"]
    assert json_run["received"] > 0 and set(json_run["stages_p50_ms"]) == set(data["mmstream"]["latency"]["60"]["stages_p50_ms"])
    assert all(isinstance(v, bool) for v in data["targets"].values()) and len(data["targets"]) == 4
    for needle in ("raw pyzmq round trip", "pyigtl server -> client", "mmstream driver", "JSON between nodes",
                   "max sustained lossless rate"):  # fmt: skip
        assert needle in stdout


def test_floor_and_peer_delivered_every_frame_and_one_way_is_half_the_round_trip(report):
    data, _ = report
    for fps in ("30", "60"):
        floor = data["floor_zmq"][fps]
        _sane_latency(floor["round_trip"], 10)
        assert floor["one_way"]["p50_ms"] == pytest.approx(floor["round_trip"]["p50_ms"] / 2)
        peer = data["peer_pyigtl"][fps]
        assert peer["received"] >= 0.9 * peer["sent"]  # pyigtl keeps only the newest message per device
        _sane_latency(peer["latency"], 10)


def test_floor_with_analysis_analysed_every_frame_it_echoed(report):
    data, _ = report
    floor = data["floor_zmq_analysis"]
    assert floor["fps"] == 60.0 and floor["metrics"] == ["echogenicity", "quality", "thickness", "csa"]
    _sane_latency(floor["round_trip"], 10)
    # every reply was an analysis with all four metrics (the first seeded, the others tracked)
    assert floor["replies"] == floor["replies_with_every_metric"] == floor["round_trip"]["n"] + data["warmup_frames"]
    ours = data["mmstream"]["latency"]["60"]["latency"]["p50_ms"]
    assert data["ratios"]["p50_over_floor_with_analysis"] == pytest.approx(ours / floor["round_trip"]["p50_ms"])


def test_service_latency_covers_the_stream_and_splits_into_stages(report):
    data, _ = report
    for fps in ("30", "60"):
        lat = data["mmstream"]["latency"][fps]
        assert lat["accepted"] == lat["sent"] and lat["rejected"] == 0
        # every accepted frame was analysed or counted as a latest-wins drop (none vanish)
        assert lat["analyzed"] + lat["live_drops"] + lat["analysis_errors"] == lat["accepted"], lat
        assert lat["analysis_errors"] == 0, lat
        assert lat["received"] >= 0.9 * (lat["sent"] - data["warmup_frames"]), lat
        _sane_latency(lat["latency"], 5)
        stages = lat["stages_p50_ms"]
        assert list(stages) == ["sent->ingest", "ingest->analysis_start", "analysis_start->analyzed",
                                "analyzed->published", "published->received"]  # fmt: skip
        assert all(v > 0 for v in stages.values())
        assert stages["analysis_start->analyzed"] > 0.1  # four metrics on 512x512 really ran
    ratios = data["ratios"]
    ours = data["mmstream"]["latency"]["60"]["latency"]["p50_ms"]
    assert ratios["p50_over_zmq_round_trip"] == pytest.approx(ours / data["floor_zmq"]["60"]["round_trip"]["p50_ms"])
    assert ratios["p50_over_zmq_one_way"] == pytest.approx(2 * ratios["p50_over_zmq_round_trip"])


def test_ingest_is_lossless_at_every_rate_and_every_accepted_frame_is_analysed_or_counted(report):
    data, _ = report
    rates = data["mmstream"]["rates"]
    assert [r["target_fps"] for r in rates] == [250.0, 1000.0]
    for r in rates:
        assert r["driver_error"] is None
        assert r["sent"] == r["accepted"] == int(r["target_fps"] * 0.5) and r["rejected"] == 0 and r["lossless"]
        assert r["analyzed"] > 0 and r["analyzed"] + r["live_drops"] + r["analysis_errors"] == r["accepted"], r
        assert 0 < r["absorbed_fps"] < 10 * r["target_fps"]
    best = data["mmstream"]["max_sustained_lossless_fps"]
    sustained = [r["sustained"] for r in rates]
    assert best == (None if not sustained[0] else 250.0 if not sustained[1] else 1000.0)
