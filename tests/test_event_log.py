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


def test_failing_sources_show_on_the_console(tmp_path, caplog):
    """Two sources failing alike: each has its line."""
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"enabled": False},
                      sources=[{"driver": "dicom", "stream_id": sid, "options": {"path": str(tmp_path / f"{sid}.dcm")}}
                               for sid in ("cineA", "cineB")])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mmstream.events"), Service(cfg) as svc:
        wait_for(lambda: sum("source_failed" in r.getMessage() for r in caplog.records) == 2, what="both log lines")
        assert set(svc.source_errors) == {"cineA", "cineB"}
    lines = sorted(r.getMessage() for r in caplog.records if "source_failed" in r.getMessage())
    assert [("cineA.dcm" in lines[0], "cineB.dcm" in lines[1])] == [(True, True)]
    assert all(r.levelname == "ERROR" for r in caplog.records if "source_failed" in r.getMessage())
