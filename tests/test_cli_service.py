"""``mmstream demo``, ``serve``, ``status``, ``keys`` and ``config validate`` as a user runs them."""

import json
import re
import shutil
import signal
import subprocess
import time

import pytest

from mmstream.cli import main
from mmstream.privacy import file_tag

RANDOM_PORTS = """
[endpoints]
ingest = "tcp://127.0.0.1:*"
metrics = "tcp://127.0.0.1:*"
control = "tcp://127.0.0.1:*"
"""


def mmstream_exe():
    exe = shutil.which("mmstream")
    assert exe, "the mmstream console script is not installed"
    return exe


def test_demo_streams_and_matches_truth(tmp_path):
    cfg = tmp_path / "demo.toml"
    cfg.write_text(RANDOM_PORTS)
    proc = subprocess.run([mmstream_exe(), "demo", "--config", str(cfg), "--duration", "4"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("mmstream demo: ingest tcp://127.0.0.1:") and lines[-1] == "mmstream demo: stopped"
    status = lines[-2]
    m = re.search(r"(\d+) frames ([\d.]+) fps .* CSA ([\d.]+) mm2 \(truth ([\d.]+)\)  thickness ([\d.]+) mm \(truth ([\d.]+)\)", status)
    assert m, status
    frames, fps, csa, csa_t, th, th_t = (float(v) for v in m.groups())
    assert frames >= 60 and fps == pytest.approx(30, rel=0.2)
    assert csa == pytest.approx(csa_t, rel=0.2) and th == pytest.approx(th_t, abs=0.5)
    drops, rejects = (int(v) for v in re.search(r"drops (\d+) rejects (\d+)", status).groups())
    # the live path is latest-wins: a machine that stalls the analyzer for a frame interval skips a
    # frame (counted); a healthy demo skips next to none, and rejects none
    assert rejects == 0 and drops <= 0.02 * frames, status


def test_serve_status_and_sigterm(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(RANDOM_PORTS + '\n[[sources]]\ndriver = "sim"\nstream_id = "probe-a"\nfps = 20\n'
                   f'[[sources]]\ndriver = "dicom"\nstream_id = "cine"\n[sources.options]\npath = "{tmp_path}/gone.dcm"\n'
                   f'[recorder]\nenabled = true\ndirectory = "{tmp_path}/no-such-dir"\n')  # a source and the recorder fail
    proc = subprocess.Popen([mmstream_exe(), "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = proc.stdout.readline()
        control = re.search(r"control (\S+)", first).group(1)
        deadline = time.monotonic() + 30
        out = ""
        while time.monotonic() < deadline:
            st = subprocess.run([mmstream_exe(), "status", "--control", control], capture_output=True, text=True,
                                timeout=30)  # fmt: skip
            out = st.stdout
            if st.returncode == 0 and re.search(r"probe-a\s+\d+\s+[\d.]+", out):
                break
            time.sleep(0.2)
        assert re.search(r"fps\s+idle s\s+e2e p50 ms", out), out
        assert re.search(r"probe-a\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), out  # frames fps idle p50 p99
        assert "analyzer-0" in out and "ingest" in out
        assert f"source cine: FAILED: ReadError: {file_tag('gone.dcm')}" in out and "gone.dcm" not in out  # a hash only
        assert re.search(r"recording: idle  last error: no_directory: .*no-such-dir", out), out
        js = subprocess.run([mmstream_exe(), "status", "--control", control, "--json"], capture_output=True, text=True)
        assert '"probe-a"' in js.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "mmstream serve: stopped" in rest
    assert re.search(r"ERROR sources source_failed \[cine\]", err) and "recording_no_directory" in err, err  # on the console


def test_demo_closes_its_recording_on_sigterm(tmp_path):
    """What ``timeout``, systemd and ``docker stop`` send: the demo stops like on Ctrl-C, its file
    closed cleanly (it used to die of the signal, the file left open)."""
    from mmstream.recording.reader import SessionReader

    cfg = tmp_path / "demo.toml"
    cfg.write_text(RANDOM_PORTS + "[web]\nenabled = false\n")
    proc = subprocess.Popen([mmstream_exe(), "demo", "--config", str(cfg), "--record", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*.h5")) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the file
        assert list(tmp_path.glob("*.h5")), "no recording file"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "mmstream demo: recorded" in out and out.rstrip().endswith("mmstream demo: stopped")
    (path,) = tmp_path.glob("*.h5")
    with SessionReader(path) as r:
        assert r.summary()["closed"]


def test_status_without_service_fails_cleanly():
    proc = subprocess.run([mmstream_exe(), "status", "--control", "tcp://127.0.0.1:9", "--timeout-ms", "300"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 1 and "no answer" in proc.stderr


def test_status_of_a_curve_secured_service(tmp_path, capsys):
    """``mmstream status`` had no key options: a service with [security] could not be queried. It
    takes replay's, through the same helper (cli_args.add_client_key_options)."""
    from mmstream.config import load_config
    from mmstream.graph import Graph
    from mmstream.transport import make_keys

    assert main(["keys", str(tmp_path / "k"), "--client", "ops"]) == 0
    k = tmp_path / "k"
    cfg = load_config(None, web={"enabled": False}, endpoints={e: "tcp://127.0.0.1:*" for e in ("ingest", "metrics", "control")},
                      security={"server_secret_key_file": str(k / "server" / "server.key_secret"),
                                "allowed_clients_dir": str(k / "allowed_clients")})  # fmt: skip
    _, stranger = make_keys(tmp_path / "stranger", "stranger")
    with Graph(cfg) as g:
        capsys.readouterr()
        argv = ["status", "--control", g.endpoints["control"], "--timeout-ms", "3000"]
        keys = ["--client-secret-key", str(k / "clients" / "ops.key_secret"), "--server-key", str(k / "server" / "server.key")]
        assert main([*argv, *keys, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["session_id"] == g.session_id
        assert main([*argv[:-1], "500"]) == 1
        assert "needs --client-secret-key and --server-key" in capsys.readouterr().err
        assert main([*argv[:-1], "500", *keys[:2]]) == 2  # the client key alone
        assert "--client-secret-key and --server-key go together" in capsys.readouterr().err
        assert main([*argv[:-1], "500", "--client-secret-key", str(stranger), *keys[2:]]) == 1  # a key not allowed
        assert "no answer" in capsys.readouterr().err


def test_keys(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "k"), "--client", "bedside"]) == 0
    assert (tmp_path / "k" / "server" / "server.key_secret").is_file()
    assert (tmp_path / "k" / "allowed_clients" / "bedside.key").is_file()
    assert oct((tmp_path / "k" / "clients" / "bedside.key_secret").stat().st_mode)[-3:] == "600"
    # adding a client keeps the server's keys (the clients given its public key stay admitted)
    server = (tmp_path / "k" / "server" / "server.key").read_bytes()
    capsys.readouterr()
    assert main(["keys", str(tmp_path / "k"), "--client", "tablet"]) == 0
    assert (tmp_path / "k" / "server" / "server.key").read_bytes() == server and "existing, kept" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "k" / "allowed_clients").iterdir()) == ["bedside.key", "tablet.key"]
    (tmp_path / "k" / "clients" / "tablet.key_secret").unlink()  # half a pair: refused, not silently replaced
    assert main(["keys", str(tmp_path / "k"), "--client", "tablet"]) == 1
    assert "only half of the key pair 'tablet'" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["keys", str(tmp_path / "afile")]) == 1
    assert capsys.readouterr().err.startswith(f"mmstream keys: error: {tmp_path / 'afile'}: ")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[analyzer]\nworkers = 0\n", "analyzer.workers"),
        ("[endpoints]\ningest = \"http://x\"\n", "endpoints.ingest"),
        ("nonsense = true\n", "nonsense"),
        ("[analyzer\n", "cannot parse TOML"),
        ("[[sources]]\ndriver = \"sim\"\nstream_id = \"bad/id\"\n", "sources.0.stream_id"),
        ("[streams.p1]\nroi = [1, 2]\n", "streams.p1.roi"),
        # as set_roi refuses them: an inverted or empty ROI would refuse every frame of the stream (bad_roi)
        ("[streams.p1]\nroi = [10, 10, 5, 5]\n", "streams.p1.roi: Value error, roi must satisfy 0 <= r0 < r1 and 0 <= c0 < c1"),
        ("[streams.p1]\nroi = [0, 4, 8, 4]\n", "streams.p1.roi: Value error, roi must satisfy 0 <= r0 < r1 and 0 <= c0 < c1"),
        ("[streams.p1]\nroi = [-5, 0, 10, 10]\n", "streams.p1.roi.0: Input should be greater than or equal to 0"),
        ("[streams.p1]\nroi = [0, 0, 8, 4294967296]\n", "streams.p1.roi.3"),
        ("[ingest]\nstream_idle_s = inf\n", "ingest.stream_idle_s: Input should be a finite number"),
        ("[web]\nhost = \"0.0.0.0\"\ntoken = \"                \"\n", "web.token must be at least 16"),
        ("a = " + "[" * 100000 + "]" * 100000 + "\n", "cannot parse TOML: RecursionError"),
        ("[[sources]]\ndriver = \"nosuch\"\nstream_id = \"p\"\n", "source 'p': no mmstream source named 'nosuch'"),
        ("[[sources]]\ndriver = \"dicom\"\nstream_id = \"p\"\n[sources.options]\npathh = \"x\"\n",
         "unknown option(s) pathh; known: path, "),
        ("[[sources]]\ndriver = \"replay\"\nstream_id = \"p\"\n", "missing a required argument: 'path'"),
    ],
)
def test_config_validate_reports_bad_files(tmp_path, capsys, text, fragment):
    f = tmp_path / "c.toml"
    f.write_text(text)
    assert main(["config", "validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert str(f) in err and fragment in err


def test_a_compressor_that_is_not_installed_is_refused_by_the_configuration(tmp_path, capsys, monkeypatch):
    """blosc-lz4 without its optional package: one clear error up front (the recorder used to open
    and lose 1000 file parts, then blame two sources on one stream)."""
    import sys

    f = tmp_path / "c.toml"
    f.write_text('[recorder]\ncompression = "blosc-lz4"\n')
    monkeypatch.setitem(sys.modules, "hdf5plugin", None)  # as on a default install
    assert main(["config", "validate", str(f)]) == 1
    assert "recorder.compression: Value error, blosc-lz4 needs the hdf5plugin package: pip install 'mmstream[blosc]'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "hdf5plugin")
    pytest.importorskip("hdf5plugin", reason="the blosc extra is not installed")
    assert main(["config", "validate", str(f)]) == 0


def test_config_validate_good_file_and_env_override(tmp_path, capsys, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text(RANDOM_PORTS + "[analyzer]\nworkers = 2\n")
    monkeypatch.setenv("MMSTREAM_ANALYZER__WORKERS", "3")
    assert main(["config", "validate", str(f), "--show"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and '"workers": 3' in out
    assert main(["config", "validate", str(tmp_path / "missing.toml")]) == 1
    capsys.readouterr()
    monkeypatch.setenv("MMSTREAM_STREAMS", "{bad json")
    assert main(["config", "validate", str(f)]) == 1
    assert "MMSTREAM_STREAMS (environment): cannot parse the value" in capsys.readouterr().err


def test_config_validate_warns_of_a_missing_recording_directory_or_source_file(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text(f"[recorder]\nenabled = true\ndirectory = \"{tmp_path / 'nope'}\"\n")
    assert main(["config", "validate", str(f)]) == 0  # the file is valid; this machine lacks the folder
    assert "warning: recorder: recording directory" in capsys.readouterr().err
    f.write_text(f'[[sources]]\ndriver = "dicom"\nstream_id = "cine"\n[sources.options]\npath = "{tmp_path}/gone.dcm"\n')
    assert main(["config", "validate", str(f)]) == 0
    assert f"warning: source 'cine': path {tmp_path}/gone.dcm does not exist here" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "fragment"), [
    ("[analyzer]\nworkers = -1\n", "analyzer.workers"),
    (RANDOM_PORTS + '[[sources]]\ndriver = "mha"\nstream_id = "typo"\n[sources.options]\npath = "x.mha"\n'
     "spacing_rows_mm = 0.1\n", "source 'typo' (mha): unknown option(s) spacing_rows_mm; known: path,"),
])  # fmt: skip
def test_serve_with_bad_config_exits_1(tmp_path, text, fragment):
    f = tmp_path / "c.toml"
    f.write_text(text)
    proc = subprocess.run([mmstream_exe(), "serve", "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and fragment in proc.stderr and "Traceback" not in proc.stderr
