"""The service's events on its console: the event-log node, its rate limit, and a real service
whose source fails."""

import logging

from test_graph import RANDOM_TCP, wait_for

import mmstream.nodes.event_log as E
from mmstream.codec import Decoded
from mmstream.config import load_config
from mmstream.messages import Event, Metrics
from mmstream.service import Service


def event(reason="rate_limited", level="warning", node="ingest", stream_id="p", seq=3):
    return Decoded("event", Event(node=node, level=level, reason=reason, message="m", stream_id=stream_id, seq=seq,
                                  t_host_s=0.0))  # fmt: skip


def test_each_event_is_logged_at_its_level_and_floods_are_one_line_per_interval(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(E.time, "monotonic", lambda: clock[0])
    log = E.EventLog(interval_s=5.0)
    with caplog.at_level(logging.INFO, logger="mmstream.events"):
        for _ in range(50):  # a flood of rejected frames
            log.process("bus", event())
        log.process("bus", event(stream_id="q"))  # another stream: its own line
        log.process("bus", event("recording_disk_full", "error", "recorder", None, None))
        log.tick(clock[0] + 1.0)  # within the interval: nothing yet
        clock[0] += 6.0
        log.tick(clock[0])  # the interval is over: the held-back ones are counted
        log.process("bus", event())  # after a quiet interval: logged at once
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "ingest rate_limited [p seq 3]: m"),
        ("WARNING", "ingest rate_limited [q seq 3]: m"),
        ("ERROR", "recorder recording_disk_full: m"),
        ("WARNING", "ingest rate_limited [p seq 3]: m (49 like this in the last 6 s)"),
        ("WARNING", "ingest rate_limited [p seq 3]: m"),
    ]
    assert log.counters["held_back"] == 49 and log.counters["logged"] == 5
    log.process("bus", event())  # held back ...
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmstream.events"):
        log.close()  # ... and reported when the service stops
    assert [r.getMessage() for r in caplog.records] == ["ingest rate_limited [p seq 3]: m (1 like this in the last 0 s)"]
    h = Metrics.model_construct(msg_type="metrics")  # anything but an event is ignored
    assert log.process("bus", Decoded("metrics.p", h)) == []


def test_failing_sources_show_on_the_console_without_their_file_names(tmp_path, caplog):
    """Two sources failing alike: each has its line. The files are named by a hash only, in the log,
    the status and a recording's stored configuration (exported names often carry the patient's)."""
    from mmstream.privacy import file_tag
    from mmstream.recording.reader import SessionReader

    folder = tmp_path / "Doe_Jane_1961"
    (tmp_path / "rec").mkdir()
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False},
                      recorder={"enabled": True, "directory": str(tmp_path / "rec")},
                      sources=[{"driver": "dicom", "stream_id": sid, "options": {"path": str(folder / f"Doe_{sid}.dcm")}}
                               for sid in ("cineA", "cineB")])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mmstream.events"), Service(cfg) as svc:
        wait_for(lambda: sum("source_failed" in r.getMessage() for r in caplog.records) == 2, what="both log lines")
        assert set(svc.source_errors) == {"cineA", "cineB"}
        assert "Doe" not in str(svc.graph.status())
    lines = sorted(r.getMessage() for r in caplog.records if "source_failed" in r.getMessage())
    assert file_tag("Doe_cineA.dcm") in lines[0] and file_tag("Doe_cineB.dcm") in lines[1]
    assert all(r.levelname == "ERROR" for r in caplog.records if "source_failed" in r.getMessage())
    assert not [r for r in caplog.records if "Doe" in r.getMessage()]
    for path in (tmp_path / "rec").glob("*.h5"):  # armed: no frame came, so there may be no file
        with SessionReader(path) as r:
            assert "Doe" not in r.file["session"].attrs["config_json"]


def test_a_recording_stores_the_configuration_without_source_file_names(tmp_path):
    from mmstream.privacy import file_tag
    from mmstream.recording.recorder import recorder_config_json

    cfg = load_config(None, sources=[{"driver": "dicom", "stream_id": "cine",
                                      "options": {"path": "/data/Doe_Jane_1961/cine.dcm", "loop": True}}])  # fmt: skip
    text = recorder_config_json(cfg)
    assert "Doe" not in text and file_tag("cine.dcm") in text and '"loop": true' in text
