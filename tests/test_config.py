"""The service configuration as hostile input: ``mmstream config validate`` refuses what ``serve``
would refuse or could not run (one check, :func:`mmstream.config.preflight`, for both), files named
by the configuration are read only when they are regular files of a bounded size, size limits are
finite, and ``MMSTREAM_*`` variables that would be ignored or misread are refused, naming them."""

import json
import os
import resource
import subprocess
from pathlib import Path

import pytest
from test_cli_service import RANDOM_PORTS, mmstream_exe

from mmstream.cli import main
from mmstream.config import load_config
from mmstream.errors import ConfigError
from mmstream.service import Service
from mmstream.transport import make_keys

NO_WEB = "[web]\nenabled = false\n"


@pytest.fixture()
def keys(tmp_path):
    """A server key, its allowed-clients folder with one client, that client's secret key."""
    _, server_sec = make_keys(tmp_path / "keys" / "server", "server")
    client_pub, client_sec = make_keys(tmp_path / "keys" / "clients", "client")
    allowed = tmp_path / "keys" / "allowed"
    allowed.mkdir()
    (allowed / client_pub.name).write_bytes(client_pub.read_bytes())
    return {"server": server_sec, "allowed": allowed, "client": client_sec}


def _validate(path: Path, capsys) -> tuple[int, str]:
    code = main(["config", "validate", str(path)])
    return code, capsys.readouterr().err


def _cases(tmp: Path, keys: dict) -> dict[str, tuple[str, str]]:
    """name -> (TOML text, what the one-line error says): each validated as valid before, each
    refused by ``mmstream serve`` (or failing once it ran: dupsrc interleaved two sources' frames)."""
    lax = tmp / "lax.key_secret"
    lax.write_bytes(keys["server"].read_bytes())
    lax.chmod(0o640)
    sec = f'[security]\nserver_secret_key_file = "{keys["server"]}"\nallowed_clients_dir = "{keys["allowed"]}"\n'
    return {
        "all_interfaces": ('[endpoints]\ncontrol = "tcp://0.0.0.0:5557"\n',
                           "endpoints.control tcp://0.0.0.0:5557 is beyond loopback: set [security]"),
        "ipc_path_too_long": (f'[endpoints]\ncontrol = "ipc:///tmp/{"x" * 110}"\n',
                              "an ipc path longer than 107 bytes cannot be bound"),
        "unicode_digits": ('[endpoints]\ncontrol = "tcp://127.0.0.1:\u0665\u0665\u0665\u0667"\n',
                           "endpoints.control: Value error, bad endpoint"),
        "same_address": ('[endpoints]\ningest = "tcp://127.0.0.1:47125"\ncontrol = "tcp://localhost:47125"\n',
                         "endpoints.control tcp://localhost:47125 takes the address of endpoints.ingest"),
        "wildcard_same_port": ('[endpoints]\ningest = "tcp://127.0.0.1:47126"\nmetrics = "tcp://0.0.0.0:47126"\n' + sec
                               + f'[web]\ncontrol_client_secret_key_file = "{keys["client"]}"\n',
                               "endpoints.metrics tcp://0.0.0.0:47126 takes the address of endpoints.ingest"),
        "key_missing": (sec.replace(str(keys["server"]), str(tmp / "nokey")) + NO_WEB,
                        f"security.server_secret_key_file: cannot load CURVE key {tmp / 'nokey'}: no such file"),
        "allowed_dir_missing": (sec.replace(str(keys["allowed"]), str(tmp / "nodir")) + NO_WEB,
                                f"security.allowed_clients_dir: {tmp / 'nodir'} is not an existing directory"),
        "key_mode_640": (sec.replace(str(keys["server"]), str(lax)) + NO_WEB,
                         f"security.server_secret_key_file: CURVE secret key {lax} is readable by others"),
        "allowed_dir_without_key": (f'[security]\nallowed_clients_dir = "{keys["allowed"]}"\n',
                                    "security.allowed_clients_dir is set but security.server_secret_key_file is not"),
        "web_without_control_key": (sec, "web.control_client_secret_key_file is needed: [security] secures"),
        "echo_reference_missing": (f'[biomarkers]\necho_reference = "{tmp / "ref.toml"}"\n',
                                   f"biomarkers.echo_reference: {tmp / 'ref.toml'}: cannot read: no such file"),
        "calibration_without_reference": (f'[biomarkers]\ndevice_calibration = "{tmp}"\n',
                                          "biomarkers.device_calibration is set but biomarkers.echo_reference is not"),
        "tls_missing": (f'[web]\ntls_cert_file = "{tmp / "c.pem"}"\ntls_key_file = "{tmp / "k.pem"}"\n',
                        f"web.tls_cert_file: {tmp / 'c.pem'}: no such file"),
        "watch_folder_missing": (f'[volumes.watch]\nenabled = true\nfolder = "{tmp / "in"}"\n',
                                 f"volumes.watch.folder: {tmp / 'in'} is not an existing directory"),
        "two_sources_one_stream": ('[[sources]]\ndriver = "sim"\nstream_id = "a"\n[[sources]]\ndriver = "sim"\nstream_id = "a"\n',
                                   "sources 0 and 1 both send stream_id 'a'"),
        "object_size_unbounded": ("[volumes.scp]\nmax_object_mb = 1e308\n",
                                  "volumes.scp.max_object_mb: Input should be less than or equal to 65536"),
        "file_size_unbounded": ("[volumes.watch]\nmax_file_mb = 1e308\n",
                                "volumes.watch.max_file_mb: Input should be less than or equal to 65536"),
    }  # fmt: skip


CASES = ("all_interfaces", "ipc_path_too_long", "unicode_digits", "same_address", "wildcard_same_port", "key_missing",
         "allowed_dir_missing", "key_mode_640", "allowed_dir_without_key", "web_without_control_key",
         "echo_reference_missing", "calibration_without_reference", "tls_missing", "watch_folder_missing",
         "two_sources_one_stream", "object_size_unbounded", "file_size_unbounded")  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_validate_refuses_what_serve_refuses_with_the_same_line(tmp_path, keys, capsys, case):
    """Each of these was 'valid' to ``config validate`` while ``serve`` refused it at start (or died
    of it: an OverflowError for the unbounded sizes), naming no key for some. Now both refuse it
    before anything is bound, with one line naming the key."""
    text, says = _cases(tmp_path, keys)[case]
    f = tmp_path / "c.toml"
    f.write_text(text)
    code, err = _validate(f, capsys)
    assert code == 1 and says in err and str(f) in err and "Traceback" not in err, err
    with pytest.raises(ConfigError) as refused:
        Service(load_config(f))  # what serve does: load_config, then Service (preflight) before binding
    assert says in str(refused.value)


def test_validate_lists_every_problem_it_finds(tmp_path, keys, capsys):
    f = tmp_path / "c.toml"
    f.write_text(_cases(tmp_path, keys)["key_missing"][0].replace(str(keys["allowed"]), str(tmp_path / "nodir"))
                 + f'[volumes.watch]\nenabled = true\nfolder = "{tmp_path / "in"}"\n')  # fmt: skip
    code, err = _validate(f, capsys)
    assert code == 1 and "3 problems:" in err
    assert all(k in err for k in ("security.server_secret_key_file:", "security.allowed_clients_dir:", "volumes.watch.folder:"))


def test_sizes_up_to_the_bound_are_taken(tmp_path):
    cfg = load_config(None, volumes={"scp": {"max_object_mb": 65536}, "watch": {"max_file_mb": 65536}})
    assert cfg.volumes.scp.max_object_mb == cfg.volumes.watch.max_file_mb == 65536


# --------------------------------------------------------------------------- files named by the configuration


def _limited(gigabytes: float):
    """A child's address space limit: a regression reading /dev/zero fails fast, never takes the machine."""
    limit = int(gigabytes * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("key", ["echo_reference", "server_secret_key_file", "tls_cert_file"])
def test_a_device_named_by_the_configuration_is_never_read(tmp_path, keys, key):
    """``/dev/zero`` (through a link too) where a file is expected: it used to be read without end
    (MemoryError traceback; 4.8 GB then an empty error for the CURVE key). Now one line naming the
    key, from ``config validate`` and ``serve`` alike, before anything is read."""
    zero = tmp_path / "zero.link"
    zero.symlink_to("/dev/zero")
    text = {
        "echo_reference": f'[biomarkers]\necho_reference = "{zero}"\n',
        "server_secret_key_file": f'[security]\nserver_secret_key_file = "{zero}"\nallowed_clients_dir = "{keys["allowed"]}"\n'
                                  + NO_WEB,
        "tls_cert_file": f'[web]\ntls_cert_file = "{zero}"\ntls_key_file = "{keys["client"]}"\n',
    }[key]  # fmt: skip
    f = tmp_path / "c.toml"
    f.write_text(RANDOM_PORTS + text)
    for argv in (["config", "validate", str(f)], ["serve", "--config", str(f)]):
        proc = subprocess.run([mmstream_exe(), *argv], capture_output=True, text=True, timeout=120, preexec_fn=_limited(2))
        assert proc.returncode == 1, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"{key}: " in line and "a character device, not a regular file" in line, line


def test_an_oversized_or_irregular_reference_file_is_refused_naming_the_key(tmp_path):
    from mmstream.calibration import load_echo_references
    from mmstream.config import BiomarkersSection

    MODEL_FILE_MAX_BYTES = 16 * 1024 * 1024  # docs/configuration.md: an echo reference 16 MiB at most
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:
        fh.truncate(MODEL_FILE_MAX_BYTES + 1)  # sparse: no disk used
    fifo = tmp_path / "ref.fifo"
    os.mkfifo(fifo)
    for path, says in ((big, f"{MODEL_FILE_MAX_BYTES + 1:,} bytes, more than the {MODEL_FILE_MAX_BYTES:,}"),
                       (fifo, "a FIFO (named pipe), not a regular file"), (tmp_path, "a directory, not a regular file")):  # fmt: skip
        with pytest.raises(ConfigError, match="^" + "biomarkers.echo_reference: "):
            load_echo_references(BiomarkersSection(echo_reference=path))
        with pytest.raises(ConfigError) as e:
            load_echo_references(BiomarkersSection(echo_reference=path))
        assert says in str(e.value)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "link to a device"])
def test_a_config_path_that_is_not_a_file_says_what_it_is(tmp_path, capsys, kind):
    """It used to say "no such config file" for all of these."""
    path = {"directory": tmp_path / "d.toml", "fifo": tmp_path / "f.toml", "device": Path("/dev/zero"),
            "link to a device": tmp_path / "l.toml"}[kind]  # fmt: skip
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to a device":
        path.symlink_to("/dev/zero")
    says = {"directory": "a directory", "fifo": "a FIFO (named pipe)"}.get(kind, "a character device")
    code, err = _validate(path, capsys)
    assert code == 1 and f"{path}: {says}, not a regular file" in err
    code, err = _validate(tmp_path / "missing.toml", capsys)
    assert code == 1 and "missing.toml: no such file" in err


def test_home_is_expanded_in_paths_and_relative_paths_stay_relative(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "in").mkdir()
    cfg = load_config(None, recorder={"directory": "~/rec"}, volumes={"watch": {"folder": "~/in", "enabled": True}})
    assert cfg.recorder.directory == tmp_path / "rec" and cfg.volumes.watch.folder == tmp_path / "in"
    assert load_config(None, recorder={"directory": "rec"}).recorder.directory == Path("rec")
    f = tmp_path / "c.toml"
    f.write_text("[analyzer]\nworkers = 2\n")
    assert load_config("~/c.toml").analyzer.workers == 2  # the configuration file's own path too


# --------------------------------------------------------------------------- the environment


def test_an_unknown_mmstream_variable_is_refused_the_projects_own_are_not(tmp_path, capsys, monkeypatch):
    """A misspelt section (``ENDPOINT``, ``WEBB``) or a single underscore was silently ignored, so
    the service ran with what the user meant to change."""
    for name in ("MMSTREAM_ENDPOINT__CONTROL", "MMSTREAM_WEBB__TOKEN", "MMSTREAM_WEB_TOKEN", "mmstream_ingest_x"):
        monkeypatch.setenv(name, "x")
        assert main(["config", "validate"]) == 1
        err = capsys.readouterr().err
        assert f"{name} (environment): the configuration has no key" in err and len(err.splitlines()) == 1, err
        monkeypatch.delenv(name)
    for name in ("MMSTREAM_SHARED_DATA", "MMSTREAM_ARTIFACTS", "MMSTREAM_NOJIT_RUN"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("MMSTREAM_LOG_LEVEL", "debug")
    assert main(["config", "validate"]) == 0


def test_a_stream_id_with_capitals_in_a_variable_name_is_refused(tmp_path, capsys, monkeypatch):
    """``MMSTREAM_STREAMS__Probe1__SEED_RC`` configured stream ``probe1`` beside ``[streams.Probe1]``
    (pydantic-settings reads names lower-case): refused; lower-case names and the JSON form work."""
    f = tmp_path / "c.toml"
    f.write_text("[streams.Probe1]\nseed_rc = [5, 5]\n")
    monkeypatch.setenv("MMSTREAM_STREAMS__Probe1__SEED_RC", "[100, 200]")
    assert main(["config", "validate", str(f)]) == 1
    assert "MMSTREAM_STREAMS__Probe1__SEED_RC (environment): variable names are read lower-case, so this would " \
           "configure stream 'probe1', not 'Probe1'" in capsys.readouterr().err  # fmt: skip
    monkeypatch.delenv("MMSTREAM_STREAMS__Probe1__SEED_RC")
    monkeypatch.setenv("MMSTREAM_STREAMS", json.dumps({"Probe1": {"roi": [0, 0, 10, 10]}}))
    monkeypatch.setenv("MMSTREAM_STREAMS__probe0__SEED_RC", "[1, 2]")
    streams = load_config(f).streams
    assert streams["Probe1"].seed_rc == (5, 5) and streams["Probe1"].roi == (0, 0, 10, 10)
    assert streams["probe0"].seed_rc == (1, 2) and set(streams) == {"Probe1", "probe0"}


def test_a_value_nested_too_deeply_names_its_variable(capsys, monkeypatch):
    """A RecursionError was blamed on "None: cannot parse TOML"."""
    monkeypatch.setenv("MMSTREAM_ANALYZER", '{"metrics": ' + "[" * 3000 + "}")
    assert main(["config", "validate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmstream config: error: MMSTREAM_ANALYZER (environment): cannot parse the value: RecursionError")
    monkeypatch.delenv("MMSTREAM_ANALYZER")
    monkeypatch.setenv("MMSTREAM_ANALYZER__METRICS", "[" * 3000)
    assert main(["config", "validate"]) == 1
    assert "MMSTREAM_ANALYZER__METRICS (environment): cannot parse the value" in capsys.readouterr().err
