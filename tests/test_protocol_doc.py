"""``docs/protocol.md`` stays true: its driver example (plain pyzmq + json, no mmstream) runs
against a real service graph and its frames are accepted; its tables match the code."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_graph import RANDOM_TCP, wait_for  # one polling helper for every test

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def driver_example() -> str:
    section = DOC.read_text().split("## 10. A complete minimal driver", 1)[1]
    return python_blocks(section)[0]


def test_driver_example_uses_only_pyzmq_and_the_standard_library():
    code = driver_example()
    imports = set(re.findall(r"^(?:import|from) (\w+)", code, flags=re.M))
    assert imports <= {"json", "os", "time", "uuid", "zmq"}, imports
    assert "mmstream" not in code.replace("MMSTREAM_", "")
    compile(code, "protocol.md", "exec")


def test_driver_example_frames_are_accepted_by_a_real_graph(tmp_path):
    from mmstream.config import load_config
    from mmstream.graph import Graph

    script = tmp_path / "driver.py"
    script.write_text(driver_example())
    graph = Graph(load_config(None, endpoints=RANDOM_TCP)).start()
    try:
        ep = graph.endpoints
        env = {**os.environ, "MMSTREAM_ENDPOINTS__INGEST": ep["ingest"], "MMSTREAM_ENDPOINTS__CONTROL": ep["control"]}
        # a separate interpreter: the example really stands alone (its own zmq context, no shared state)
        run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "accepted 10 of 10 frames" in run.stdout, run.stdout

        def accepted():
            n = graph.status()["nodes"]["ingest"]["counters"].get("accepted", 0)
            return n if n >= 10 else None

        assert wait_for(accepted, 10, "10 accepted frames") == 10
        ingest = graph.status()["nodes"]["ingest"]
        assert ingest["rejected"] == {}
        assert ingest["streams"]["demo-probe"] == {"accepted": 10, "last_seq": 9, "seq_gap_frames": 0}
    finally:
        graph.stop()


def test_rejection_tables_match_the_code():
    import mmstream.codec

    text = DOC.read_text()
    table = re.split(r"^=+ +=+$", mmstream.codec.__doc__, flags=re.M)[2]
    codec_reasons = set(re.findall(r"^``(\w+)``", table, flags=re.M))
    ingest_src = (ROOT / "src" / "mmstream" / "nodes" / "ingest.py").read_text()
    ingest_reasons = set(re.findall(r'self\.reject\("(\w+)"', ingest_src))
    documented = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.M))
    assert codec_reasons | ingest_reasons <= documented
    assert ingest_reasons == {"unexpected_msg_type", "seq_not_increasing", "rate_limited", "too_many_streams",
                              "frame_too_small"}  # fmt: skip
    assert {"invalid_message", "bad_roi", "invalid_input"} <= documented  # node runner; analyzer


def test_schema_files_named_in_the_doc_exist():
    named = set(re.findall(r"messages\.\w+\.schema\.json", DOC.read_text()))
    from mmstream.messages import MESSAGE_TYPES

    expected = {f"messages.{m.model_fields['msg_type'].default}.schema.json" for m in MESSAGE_TYPES}
    assert expected <= named
    missing = [n for n in expected if not (ROOT / "schemas" / n).is_file()]
    if missing:
        pytest.skip(f"schemas not generated yet: {missing}")


def test_documented_limits_match_the_code():
    from mmstream.codec import Limits
    from mmstream.config import IngestSection

    text = DOC.read_text()
    lim, ing = Limits(), IngestSection()
    assert f"{lim.max_header_bytes:,}".replace(",", " ") in text  # "65 536"
    assert f"at most {lim.max_topic_bytes} bytes" in text
    assert f"{lim.max_elements // 2**20} Mi elements" in text
    assert f"{lim.max_frame_shape[0]}×{lim.max_frame_shape[1]}" in text
    assert f"default {ing.queue_messages}" in text
    assert f"(default {ing.max_fps_per_stream:g})" in text
    assert f"(default {ing.burst_frames})" in text
