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
        log.process("bus", event("recording_disk_full", "error", "recorder", None, None))
        clock[0] += 6.0
        log.process("bus", event())
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "ingest rate_limited [p seq 3]: m"),
        ("ERROR", "recorder recording_disk_full: m"),
        ("WARNING", "ingest rate_limited [p seq 3]: m (+49 more in the last 6 s)"),
    ]
    assert log.counters["held_back"] == 49 and log.counters["logged"] == 3
    h = Metrics.model_construct(msg_type="metrics")  # anything but an event is ignored
    assert log.process("bus", Decoded("metrics.p", h)) == []


def test_a_failing_source_shows_on_the_console(tmp_path, caplog):
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False},
                      sources=[{"driver": "dicom", "stream_id": "cine", "options": {"path": str(tmp_path / "gone.dcm")}}])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mmstream.events"), Service(cfg) as svc:
        wait_for(lambda: any("source_failed [cine]" in r.getMessage() for r in caplog.records), what="the log line")
        assert "cine" in svc.source_errors
    (line,) = [r for r in caplog.records if "source_failed" in r.getMessage()]
    assert line.levelname == "ERROR" and "gone.dcm" in line.getMessage()
