"""Fusion node and biopsy ranking: scores with inputs shown, disagreements, staleness, the
three-image capture, no context / no biomarkers / locked / corrupt store (live values still
published), reload when the store changes, and the whole path over real sockets to a subscriber."""

import datetime as dt
import sqlite3
import time

import numpy as np
import pytest
from test_graph import RANDOM_TCP, request, wait_for

from mmstream.biomarkers import BiomarkerStore, parse_record
from mmstream.calibration import ReferenceTable
from mmstream.codec import Decoded, decode
from mmstream.config import load_config
from mmstream.fusion import FusionNode, FusionRules, assess_site, attach_fusion, rank_sites, stored_values
from mmstream.graph import Graph
from mmstream.messages import (
    ClinicalContext,
    CsaSummary,
    EchoSummary,
    Event,
    Fused,
    FusedValue,
    Metrics,
    QualitySummary,
    ThicknessSummary,
)
from mmstream.source import FrameSender, SourceFrame
from mmstream.transport import TransportTimeout, make_socket

TODAY = dt.date(2026, 6, 1)
REF = ReferenceTable.model_validate({"source": "test values", "entries": [
    {"biomarker": b, "site": s, "abnormal": "high", "mean": m, "sd": sd}
    for s in ("tibialis_anterior", "soleus", "gastrocnemius_medialis", "rectus_femoris", "biceps_brachii")
    for b, m, sd in (("fat_fraction", 0.05, 0.02), ("t2_water_ms", 30.0, 2.0), ("us_echo_intensity", 50.0, 10.0))
]})  # fmt: skip
RULES = FusionRules(REF, end_stage_fat_fraction=0.6, stale_after_days=365)


def rec(site, biomarker, value, unit, when="2026-01-10", patient="P1", side="left", modality="MRI"):
    return parse_record({"patient_id": patient, "site": site, "side": side, "modality": modality, "biomarker": biomarker,
                         "value": value, "unit": unit, "acquired_on": when})  # fmt: skip


PATIENT = [
    rec("tibialis_anterior", "fat_fraction", 0.2, "1"),  # z 7.5 affected
    rec("tibialis_anterior", "fat_fraction", 0.1, "1", when="2024-01-10"),  # older: superseded
    rec("soleus", "fat_fraction", 0.8, "1"),  # end-stage (>= 0.6)
    rec("gastrocnemius_medialis", "fat_fraction", 0.06, "1"),  # normal
    rec("rectus_femoris", "fat_fraction", 0.15, "1", when="2024-05-01"),  # affected, stale
    rec("rectus_femoris", "t2_water_ms", 40.0, "ms", when="2024-05-01"),  # raised T2: active disease, ranked first
    rec("vastus_lateralis", "fat_fraction", 0.3, "1"),  # no reference for this site: unknown
]


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "bio.db"
    with BiomarkerStore(path) as s:
        s.add(PATIENT)
    return path


def metrics(seq, site="tibialis_anterior", patient="P1", echo=None, region="roi", stream="probe", **ctx):
    e = None if echo is None else EchoSummary(region=region, mean=echo, std=1.0, n_px=100, calibrated_mean=echo,
                                               z_score=(echo - 50.0) / 10.0, abnormal=(echo - 50.0) / 10.0 >= 2)  # fmt: skip
    clinical = ClinicalContext(patient_id=patient, site=site, **{"side": "left" if site else None, **ctx})
    return Decoded(f"metrics.{stream}", Metrics(stream_id=stream, session_id="s", parent=(stream, seq), clinical=clinical,
                                                echogenicity=e, stamps={"ingest": time.monotonic()}))  # fmt: skip


def fused_of(outs) -> Fused:
    (f,) = [o.header for o in outs if o.port == "fused"]
    return f


def test_stored_values_newest_with_age_staleness_and_z():
    vals = stored_values(PATIENT, "tibialis_anterior", "left", RULES, 40, "female", TODAY)
    (ff,) = vals
    assert (ff.value, ff.acquired_on, ff.age_days, ff.stale) == (0.2, "2026-01-10", 142.0, False)
    assert ff.z == pytest.approx(7.5) and ff.abnormal
    rf = stored_values(PATIENT, "rectus_femoris", "left", RULES, 40, "female", TODAY)
    assert all(v.stale for v in rf)
    assert stored_values(PATIENT, "tibialis_anterior", None, RULES, 40, None, TODAY) == ()  # side not given: never either leg's
    both = [*PATIENT, rec("soleus", "fat_fraction", 0.4, "1", side="right"), rec("soleus", "fat_fraction", 0.5, "1", side=None)]
    assert [v.value for v in stored_values(both, "soleus", None, RULES, 40, None, TODAY)] == [0.5]  # only side-less
    assert [v.value for v in stored_values(both, "soleus", "right", RULES, 40, None, TODAY)] == [0.4]
    # on one date the stated side's record wins, whichever the store gives first
    assert [v.value for v in stored_values(both[::-1], "soleus", "right", RULES, 40, None, TODAY)] == [0.4]
    assert stored_values(PATIENT, "tibialis_anterior", "right", RULES, 40, None, TODAY) == ()  # never the other side
    assert stored_values(PATIENT, "tibialis_anterior", "left", FusionRules(), 40, None, TODAY)[0].z is None


def test_biopsy_ranking_moderate_first_end_stage_and_normal_last():
    sites = {(r.site, r.side) for r in PATIENT}
    ranked = rank_sites(assess_site(s, side, stored_values(PATIENT, s, side, RULES, 40, "female", TODAY), RULES) for s, side in sites)
    assert [(c.site, c.category) for c in ranked] == [
        ("rectus_femoris", "affected"), ("tibialis_anterior", "affected"), ("vastus_lateralis", "unknown"),
        ("gastrocnemius_medialis", "normal"), ("soleus", "end_stage"),
    ]  # fmt: skip
    assert "active disease" in ranked[0].reason and "end-stage limit 0.60 (configured)" in ranked[-1].reason
    assert [c.rank for c in ranked] == [1, 2, 3, 4, 5]
    off = FusionRules(REF)  # end-stage rule not configured: the fat-replaced muscle is merely 'affected'
    soleus = assess_site("soleus", "left", stored_values(PATIENT, "soleus", "left", off, 40, None, TODAY), off)
    assert soleus.category == "affected" and "end-stage rule off" in soleus.reason


def test_stale_means_older_than_stale_after_days():
    """``stale_after_days = 365``: a value exactly 365 days old is not stale, one 366 days old is."""
    for days, stale in ((364, False), (365, False), (366, True)):
        when = (TODAY - dt.timedelta(days=days)).isoformat()
        (v,) = stored_values([rec("soleus", "fat_fraction", 0.1, "1", when=when)], "soleus", "left", RULES, 40, None,
                             TODAY)  # fmt: skip
        assert (v.age_days, v.stale) == (float(days), stale)


def test_biopsy_order_among_affected_sites_modalities_then_known_fat_fraction():
    """Without raised water T2: more modalities abnormal ranks first, then a known (lower) fat
    fraction before an unknown one; each time the other site has the higher score and the earlier
    name, so only that rule can put the first one first."""

    def v(name, modality, value, z):
        return FusedValue(name=name, source="stored", modality=modality, value=value, unit="1", z=z, abnormal=z >= 2)

    ff = v("fat_fraction", "MRI", 0.3, 12.5)
    two = assess_site("tibialis_anterior", "left", [ff, v("us_echo_calibrated", "US", 75.0, 2.5)], RULES)  # MRI + US
    one = assess_site("biceps_brachii", "left", [ff, v("dti_fa", "MRI", 0.2, 14.0)], RULES)  # MRI only
    assert two.score < one.score and two.category == one.category == "affected"
    assert [c.site for c in rank_sites([one, two])] == ["tibialis_anterior", "biceps_brachii"]
    known = assess_site("tibialis_anterior", "left", [ff], RULES)
    unknown = assess_site("biceps_brachii", "left", [v("dti_fa", "MRI", 0.2, 14.0)], RULES)  # no fat fraction stored
    assert known.score < unknown.score and known.category == unknown.category == "affected"
    assert [c.site for c in rank_sites([unknown, known])] == ["tibialis_anterior", "biceps_brachii"]


def test_score_formula_inputs_and_disagreement(store):
    node = FusionNode(store, RULES, today=lambda: TODAY)
    node.process("bus", Decoded("event.control", Event(node="control", level="info", reason="capture", message="c",
                                                     stream_id="probe", t_host_s=0.0)))  # fmt: skip
    f = fused_of(node.process("bus", metrics(1, echo=52.0, age_years=40, sex="female")))
    assert f.patient_id == "P1" and f.site == "tibialis_anterior" and f.flags == ("disagreement",)
    assert f.score_inputs == ("live:us_echo_calibrated", "fat_fraction")
    assert f.score == pytest.approx((0.2 + 7.5) / 2)
    assert "mean of the oriented z-scores" in f.score_formula
    assert f.disagreements == ("MRI fat_fraction abnormal (z=7.50) but US live:us_echo_calibrated normal (z=0.20)",)
    assert f.captures == 1 and [c.site for c in f.biopsy][:2] == ["rectus_femoris", "tibialis_anterior"]
    assert {v.source for v in f.values} == {"live", "stored"}
    assert "fused" in f.stamps and f.stamps["fused"] >= f.stamps["fusion_start"]


def test_three_image_capture_becomes_the_site_value(store):
    node = FusionNode(store, RULES, today=lambda: TODAY)
    cap = Decoded("event.control", Event(node="control", level="info", reason="capture", message="c", stream_id="probe",
                                         t_host_s=0.0))  # fmt: skip
    outs = []
    for i, echo in enumerate((70.0, 75.0, 80.0)):
        node.process("bus", cap)
        outs = node.process("bus", metrics(i, site="gastrocnemius_medialis", echo=echo, age_years=40, sex="female"))
        assert any(o.port == "events" and "capture" in o.header.message for o in outs)
    f = fused_of(outs)
    (captured,) = [v for v in f.values if v.source == "captured"]
    assert captured.value == 75.0 and captured.z == pytest.approx(2.5) and captured.abnormal and f.captures == 3
    assert f.score_inputs == ("captured:us_echo_calibrated", "fat_fraction")  # the live frame gives way to the capture
    gm = next(c for c in f.biopsy if c.site == "gastrocnemius_medialis")
    assert gm.category == "affected"  # was 'normal' from MRI alone; the capture changed the ranking
    node.process("bus", cap)  # a capture of the whole frame is refused, not averaged in
    outs = node.process("bus", metrics(9, site="gastrocnemius_medialis", echo=60.0, region="frame"))
    assert any(o.port == "events" and o.header.reason == "capture_refused" for o in outs)
    assert node.rejected["capture_refused"] == 1
    node.process("bus", cap)  # a capture on a frame without probe contact says so
    m = metrics(10, site="gastrocnemius_medialis")
    lifted = Decoded(m.topic, m.header.model_copy(update={"quality": QualitySummary(
        saturated_fraction=0.0, dark_fraction=1.0, thumb_mean_abs_diff=None, duplicate=False, frozen=False,
        saturated=False, no_contact=True)}))  # fmt: skip
    (ev,) = [o for o in node.process("bus", lifted) if o.port == "events"]
    assert ev.header.message.endswith("refused: no probe contact") and node.rejected["capture_refused"] == 2
    node.process("bus", cap)  # and on a featureless frame (a grabber's "no signal" screen)
    q = lifted.header.quality.model_copy(update={"dark_fraction": 0.0, "no_contact": False, "featureless": True})
    blank = Decoded(m.topic, m.header.model_copy(update={"seq": 11, "parent": ("probe", 11), "quality": q}))
    (ev,) = [o for o in node.process("bus", blank) if o.port == "events"]
    assert ev.header.message.endswith("refused: featureless frame (no image)")


def test_a_fourth_capture_starts_a_new_set_of_three(store):
    node = FusionNode(store, RULES, today=lambda: TODAY)
    cap = Decoded("event.control", Event(node="control", level="info", reason="capture", message="c", stream_id="probe",
                                         t_host_s=0.0))  # fmt: skip
    counts = []
    for i, echo in enumerate((70.0, 75.0, 80.0, 40.0, 45.0, 50.0)):
        node.process("bus", cap)
        f = fused_of(node.process("bus", metrics(i, site="gastrocnemius_medialis", echo=echo, age_years=40)))
        counts.append(f.captures)
    assert counts == [1, 2, 3, 1, 2, 3]
    (captured,) = [v for v in f.values if v.source == "captured"]
    assert captured.value == 45.0 and captured.z == pytest.approx(-0.5)  # the mean of the second set only


def test_a_capture_set_never_mixes_raw_and_calibrated_grey_levels(store):
    node = FusionNode(store, RULES, today=lambda: TODAY)
    cap = Decoded("event.control", Event(node="control", level="info", reason="capture", message="c", stream_id="probe",
                                         t_host_s=0.0))  # fmt: skip

    def raw(seq, echo):  # metrics of an uncalibrated device: no calibrated mean
        m = metrics(seq, site="soleus", echo=echo)
        e = m.header.echogenicity.model_copy(update={"calibrated_mean": None, "z_score": None, "abnormal": None})
        return Decoded(m.topic, m.header.model_copy(update={"echogenicity": e}))

    for m in (raw(0, 150.0), raw(1, 150.0)):
        node.process("bus", cap)
        node.process("bus", m)
    node.process("bus", cap)
    outs = node.process("bus", metrics(2, site="soleus", echo=50.0))  # calibrated now: a new set, announced
    assert any(o.port == "events" and o.header.reason == "capture_set_restarted" for o in outs)
    assert fused_of(outs).captures == 1 and not any(v.source == "captured" for v in fused_of(outs).values)


def test_a_captured_echo_replaces_only_the_live_echo_in_the_score():
    live_echo = FusedValue(name="us_echo_calibrated", source="live", modality="US", value=90.0, unit="grey_level", z=4.0, abnormal=True)
    th = FusedValue(name="thickness_mm", source="live", modality="US", value=10.0, unit="mm", z=3.0, abnormal=True)
    cap = FusedValue(name="us_echo_calibrated", source="captured", modality="US", value=50.0, unit="grey_level", z=0.0, abnormal=False)
    a = assess_site("tibialis_anterior", "left", [live_echo, th, cap], RULES)
    assert a.score_inputs == ("live:thickness_mm", "captured:us_echo_calibrated")


def test_a_captured_echo_is_scored_for_the_context_now(store):
    """Age and sex set or corrected after a capture re-score it, as they do the live value (the
    capture kept the z-score of the age at capture time)."""
    by_age = ReferenceTable.model_validate({"source": "test values", "entries": [
        {"biomarker": "us_echo_intensity", "site": "soleus", "abnormal": "high", "mean": m, "sd": sd,
         "age_min_years": lo, "age_max_years": hi} for lo, hi, m, sd in ((18, 60, 60.0, 10.0), (60, 150, 30.0, 5.0))
    ]})  # fmt: skip
    node = FusionNode(store, FusionRules(by_age), today=lambda: TODAY)
    cap = Decoded("event.control", Event(node="control", level="info", reason="capture", message="c", stream_id="probe",
                                         t_host_s=0.0))  # fmt: skip
    for i in range(3):
        node.process("bus", cap)
        node.process("bus", metrics(i, site="soleus", echo=48.0, age_years=54))
    f = fused_of(node.process("bus", metrics(3, site="soleus", echo=48.0, age_years=54)))
    (c,) = [v for v in f.values if v.source == "captured"]
    assert c.z == pytest.approx(-1.2) and not c.abnormal
    f = fused_of(node.process("bus", metrics(4, site="soleus", echo=48.0, age_years=64)))
    (c,) = [v for v in f.values if v.source == "captured"]
    assert c.z == pytest.approx(3.6) and c.abnormal and f.score == pytest.approx(3.6)
    so = next(s for s in f.biopsy if s.site == "soleus")
    assert so.score == pytest.approx(3.6)  # the ranking uses the capture scored for age 64 too


def test_a_raw_capture_does_not_hide_a_scored_live_echo():
    """A capture from an uncalibrated device has no z-score: the calibrated live echo of another
    probe on the same site still counts."""
    live = FusedValue(name="us_echo_calibrated", source="live", modality="US", value=40.0, unit="grey_level", z=-1.0,
                      abnormal=False)  # fmt: skip
    raw = FusedValue(name="us_echo_intensity", source="captured", modality="US", value=150.0, unit="grey_level")
    ff = FusedValue(name="fat_fraction", source="stored", modality="MRI", value=0.3, unit="1", z=12.5, abnormal=True)
    a = assess_site("tibialis_anterior", "left", [live, raw, ff], RULES)
    assert a.score_inputs == ("live:us_echo_calibrated", "fat_fraction") and a.disagreements


def test_stored_echo_values_are_scored_only_in_reference_device_grey_levels():
    recs = [rec("soleus", "us_echo_intensity", 90.0, "grey_level", modality="US"),
            rec("soleus", "us_echo_calibrated", 70.0, "grey_level", modality="US")]  # fmt: skip
    vals = {v.name: v for v in stored_values(recs, "soleus", "left", RULES, 40, "female", TODAY)}
    assert vals["us_echo_intensity"].z is None  # raw grey levels of an unknown device
    assert vals["us_echo_calibrated"].z == pytest.approx(2.0) and vals["us_echo_calibrated"].abnormal


def test_a_site_without_side_and_a_ranking_longer_than_a_message(tmp_path):
    path = tmp_path / "many.db"
    sites = [f"m{k:03d}" for k in range(130)]
    with BiomarkerStore(path) as s:
        s.add([rec(site, "fat_fraction", 0.1, "1", side=side) for site in sites for side in ("left", "right")])
    node = FusionNode(path, RULES, today=lambda: TODAY)
    f = fused_of(node.process("bus", metrics(1, site="m001", side=None)))
    assert len(f.biopsy) == 256 and "biopsy_ranking_cut" in f.flags  # 260 site/side pairs: the message still goes
    assert "side_not_set" in f.flags and not any(v.source == "stored" for v in f.values)
    assert ClinicalContext(site="M. Tibialis anterior").site == "m_tibialis_anterior"  # free text: the store's form


def test_biopsy_ranking_is_sent_when_changed_or_every_interval(store):
    node = FusionNode(store, RULES, biopsy_every_s=3600, today=lambda: TODAY)
    first = fused_of(node.process("bus", metrics(1)))
    assert len(first.biopsy) == 5
    assert fused_of(node.process("bus", metrics(2))).biopsy is None  # unchanged: not repeated
    assert len(fused_of(node.process("bus", metrics(3, stream="probe2"))).biopsy) == 5  # a new stream gets it
    node.biopsy_every_s = 0.0
    assert fused_of(node.process("bus", metrics(4))).biopsy == first.biopsy  # interval elapsed: sent again


def test_no_context_and_no_biomarkers_still_publish_live_values(store):
    node = FusionNode(store, RULES, today=lambda: TODAY)
    f = fused_of(node.process("bus", metrics(1, site=None, echo=60.0)))
    assert f.flags == ("no_context",) and [v.name for v in f.values] == ["us_echo_intensity", "us_echo_calibrated"]
    f = fused_of(node.process("bus", metrics(2, patient="NEW", echo=60.0)))
    assert f.flags == ("no_biomarkers",) and f.biopsy == () and f.score == pytest.approx(1.0)
    assert [o.header for o in node.process("bus", Decoded("fused.x", f))] == []  # own messages echoed on the bus: ignored
    # a live CSA and thickness carry their measurement's confidence (a low one must not read as a plain number)
    m = metrics(3, patient="NEW").header.model_copy(update={
        "csa": CsaSummary(seed_rc=(1.0, 2.0), tracked=False, area_px=100.0, area_mm2=9.0, perimeter_px=40.0, perimeter_mm=4.0,
                          centroid_rc=(1.0, 2.0), confidence=0.8),
        "thickness": ThicknessSummary(region_rc=(0, 0, 64, 64), thickness_px=40.0, thickness_mm=12.0, confidence=0.13)})
    live = {v.name: v for v in fused_of(node.process("bus", Decoded("metrics.probe", m))).values}
    assert (live["csa_mm2"].confidence, live["thickness_mm"].confidence) == (0.8, 0.13)
    for seq in (10, 13):  # a restarted source may number from anywhere: the restart is no gap, later gaps count
        node.process("bus", Decoded("metrics.probe", metrics(seq, site=None).header.model_copy(update={"session_id": "s2"})))
    assert node.counters["frames_not_seen"] == 2


@pytest.mark.parametrize("damage", ["locked", "corrupt", "missing"])
def test_unusable_store_flags_and_recovers(tmp_path, store, damage):
    clock = [0.0]
    node = FusionNode(store, RULES, check_interval_s=1.0, store_timeout_s=0.01, today=lambda: TODAY)
    node.cache._clock = lambda: clock[0]
    other = None
    if damage == "locked":
        other = sqlite3.connect(store, isolation_level=None)
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
    elif damage == "corrupt":
        store.rename(tmp_path / "saved.db")
        store.write_bytes(b"garbage " * 4096)
    else:
        store.rename(tmp_path / "saved.db")
    outs = node.process("bus", metrics(1, echo=55.0))
    f = fused_of(outs)
    assert f.flags == ("store_unavailable",) and any(v.name == "us_echo_intensity" for v in f.values)
    (ev,) = [o.header for o in outs if o.port == "events"]
    assert ev.level == "error" and ev.reason.startswith("store_") and "P1" not in ev.message
    assert fused_of(node.process("bus", metrics(2, echo=55.0))).flags == ("store_unavailable",)  # no event storm
    if other is not None:
        other.execute("ROLLBACK")
        other.close()
    else:
        store.unlink(missing_ok=True)
        (tmp_path / "saved.db").rename(store)
    clock[0] = 2.0  # next check
    outs = node.process("bus", metrics(3, echo=55.0))
    assert fused_of(outs).flags == ("disagreement",) and [o.header.reason for o in outs if o.port == "events"] == ["store_ok"]


def test_cache_notices_a_store_copied_over_in_place(tmp_path):
    """A restore by copying over the file keeps its inode: size and modification time tell."""
    import shutil

    from mmstream.fusion.cache import PatientCache

    for name, value in (("a.db", 0.1), ("b.db", 0.7)):
        with BiomarkerStore(tmp_path / name) as s:
            s.add([rec("soleus", "fat_fraction", value, "1"), *([rec("soleus", "t2_water_ms", 40.0, "ms")] if value > 0.5 else [])])
        for ext in ("-wal", "-shm"):
            (tmp_path / (name + ext)).unlink(missing_ok=True)
    clock = [0.0]
    cache = PatientCache(tmp_path / "a.db", check_interval_s=0.5, clock=lambda: clock[0])
    assert [r.value for r in cache.records("P1")] == [0.1]
    shutil.copyfile(tmp_path / "b.db", tmp_path / "a.db")  # same inode
    clock[0] = 10.0
    assert sorted(r.value for r in cache.records("P1")) == [0.7, 40.0] and cache.generation >= 1
    cache.close()


def test_cache_reloads_when_another_connection_commits(store):
    clock = [0.0]
    node = FusionNode(store, RULES, check_interval_s=0.5, today=lambda: TODAY)
    node.cache._clock = lambda: clock[0]
    before = fused_of(node.process("bus", metrics(1, site="biceps_brachii")))
    assert before.values == () and node.cache.loads == 1
    fused_of(node.process("bus", metrics(2, site="biceps_brachii")))
    assert node.cache.loads == 1  # served from the cache
    with BiomarkerStore(store) as s:
        s.add([rec("biceps_brachii", "fat_fraction", 0.3, "1")])
    clock[0] = 1.0
    after = fused_of(node.process("bus", metrics(3, site="biceps_brachii")))
    assert [v.value for v in after.values] == [0.3] and node.cache.loads == 2
    assert any(c.site == "biceps_brachii" for c in after.biopsy)


def test_recordings_keep_the_biomarker_snapshots_fusion_uses(store, tmp_path):
    """``/biomarkers``: each patient's stored records when the patient's metrics first reach a file,
    and again after the store changed; no source file paths."""
    from mmstream.codec import buffer_specs
    from mmstream.config import RecorderSection
    from mmstream.fusion.cache import PatientCache
    from mmstream.messages import Frame
    from mmstream.recording.reader import SessionReader
    from mmstream.recording.recorder import Recorder

    clock = [0.0]
    cache = PatientCache(store, check_interval_s=0.5, clock=lambda: clock[0])
    recorder = Recorder(RecorderSection(directory=tmp_path, discover_s=0.0), "sess", expected_streams=("probe",), biomarkers=cache)
    recorder.start_recording()
    img = np.zeros((16, 16), np.uint8)
    h = Frame(stream_id="probe", session_id="s", seq=0, buffers=buffer_specs(image=img))
    recorder.process("frames", Decoded("frame.probe", h, {"image": img}))
    for seq, patient in ((1, "P1"), (2, "P1"), (3, "NEW")):
        recorder.process("bus", metrics(seq, patient=patient))
    with BiomarkerStore(store) as s:
        s.add([rec("biceps_brachii", "fat_fraction", 0.3, "1")])
    clock[0] = 1.0
    recorder.process("bus", metrics(4))
    with SessionReader(recorder.stop_recording()["files"][0]) as r:
        snaps = r.biomarkers()
    assert [(x["patient_id"], len(x["records"])) for x in snaps] == [("P1", 7), ("NEW", 0), ("P1", 8)]
    assert snaps[2]["store_generation"] > snaps[0]["store_generation"]
    assert {x["biomarker"] for x in snaps[0]["records"]} == {"fat_fraction", "t2_water_ms"}
    assert not any("source_file" in x for s in snaps for x in s["records"]) and recorder.counters["biomarker_snapshots"] == 3


def test_fused_messages_reach_external_subscribers(store, sim_probe):
    cfg = load_config(None, endpoints=RANDOM_TCP, biomarkers={"store": store, "check_interval_s": 0.05})
    g = Graph(cfg)
    node = attach_fusion(g)
    assert isinstance(node, FusionNode) and attach_fusion(Graph(load_config(None, endpoints=RANDOM_TCP))) is None
    with g:
        sub = make_socket("sub", g.endpoints["metrics"], bind=False, subscribe=("fused.",))
        ctx = ClinicalContext(patient_id="P1", site="tibialis_anterior", side="left")
        assert request(g.endpoints["control"], command="set_context", stream_id="probe", clinical=ctx).ok
        got = []
        with FrameSender(g.endpoints["ingest"], "probe") as sender:
            deadline = time.monotonic() + 15
            while len(got) < 3 and time.monotonic() < deadline:
                sender.send(sim_probe.frame(len(got)).to_source())
                try:
                    got.append(decode(sub.recv(timeout_ms=200)).header)
                except TransportTimeout:
                    continue  # slow-joiner: the subscription may not have reached the publisher yet
                while (parts := sub.try_recv()) is not None:
                    got.append(decode(parts).header)
            assert request(g.endpoints["control"], command="capture", stream_id="probe").ok
            wait_for(lambda: node._pending.waiting("probe") or node.counters["captures"], what="capture event on the bus")
        sub.close()
    assert len(got) >= 3 and all(isinstance(h, Fused) for h in got)
    f = got[-1]
    assert (f.patient_id, f.site, f.side) == ("P1", "tibialis_anterior", "left")
    assert [(v.name, v.value) for v in f.values if v.source == "stored"] == [("fat_fraction", 0.2)]
    assert any(v.source == "live" and v.name == "us_echo_intensity" for v in f.values)
    assert len(got[0].biopsy) == 5 and f.stamps["fused"] >= f.stamps["published"]
    assert all(h.biopsy is None or h.biopsy == got[0].biopsy for h in got[1:])  # re-sent only when changed or 1 s old
    assert g.publisher.counters["fused"] >= 3


def test_cli_biopsy_prints_the_ranking(store, tmp_path, capsys):
    from mmstream.cli import main

    ref = tmp_path / "ref.json"
    ref.write_text(REF.model_dump_json())
    assert main(["biopsy", "P1", "--db", str(store), "--reference", str(ref), "--end-stage-fat-fraction", "0.6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["rank", "site", "side", "category", "score"]
    assert [ln.split()[1] for ln in lines[1:]] == ["rectus_femoris", "tibialis_anterior", "vastus_lateralis",
                                                   "gastrocnemius_medialis", "soleus"]  # fmt: skip
    assert main(["biopsy", "NOBODY", "--db", str(store)]) == 1
    assert "no biomarkers stored" in capsys.readouterr().err
    assert main(["biopsy", "P1", "--db", str(store), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert {c["category"] for c in __import__("json").loads(out)} == {"unknown"} and "no reference table" in err
    for bad in ("60", "nan", "-1", "0"):  # a percent typo, nan, a negative limit, zero: refused, never the rule silently off
        assert main(["biopsy", "P1", "--db", str(store), "--end-stage-fat-fraction", bad]) == 2
        assert "is not a fraction in (0, 1]" in capsys.readouterr().err


def test_service_refuses_example_reference_files(store):
    from pathlib import Path

    from mmstream.errors import ConfigError

    example = Path(__file__).resolve().parents[1] / "examples" / "echo_reference.example.toml"
    cfg = load_config(None, endpoints=RANDOM_TCP, biomarkers={"store": store, "echo_reference": example})
    with pytest.raises(ConfigError) as e:
        Graph(cfg)
    assert e.value.reason == "example_file"


def test_service_with_a_corrupt_store_keeps_publishing(tmp_path, sim_probe):
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"\x00not a database\x00" * 512)
    g = Graph(load_config(None, endpoints=RANDOM_TCP, biomarkers={"store": bad}))
    node = attach_fusion(g)
    with g:
        sub = make_socket("sub", g.endpoints["metrics"], bind=False, subscribe=("fused.", "metrics.", "event.fusion"))
        ctx = ClinicalContext(patient_id="P1", site="soleus")
        with FrameSender(g.endpoints["ingest"], "probe", clinical=ctx) as sender:
            seen: dict[str, list] = {"fused": [], "metrics": [], "event": []}
            deadline = time.monotonic() + 15
            while not (seen["fused"] and seen["event"]) and time.monotonic() < deadline:
                sender.send(sim_probe.frame(len(seen["metrics"])).to_source())
                try:
                    h = decode(sub.recv(timeout_ms=200)).header
                except TransportTimeout:
                    continue
                seen[h.msg_type].append(h)
        sub.close()
    assert seen["metrics"] and seen["fused"][-1].flags == ("store_unavailable",)
    assert seen["event"][0].reason == "store_corrupt" and "P1" not in seen["event"][0].message
    assert node.status()["store_error"] == "corrupt" and node.counters["store_corrupt"] >= 1


SIDELESS = [  # an end-stage left vastus lateralis, one of its records without a side; a moderate left soleus
    rec("vastus_lateralis", "fat_fraction", 0.8, "1"),
    rec("vastus_lateralis", "t2_water_ms", 40.0, "ms", side=None),
    rec("soleus", "fat_fraction", 0.2, "1"),
    rec("rectus_femoris", "fat_fraction", 0.3, "1", side=None),  # a site known only without a side
]
VL_REF = ReferenceTable.model_validate({"source": "test values", "entries": [
    *REF.model_dump()["entries"],
    *({"biomarker": b, "site": "vastus_lateralis", "abnormal": "high", "mean": m, "sd": sd}
      for b, m, sd in (("fat_fraction", 0.05, 0.02), ("t2_water_ms", 30.0, 2.0)))]})  # fmt: skip


def test_a_side_less_record_joins_the_sided_sites_it_is_never_ranked_alone(tmp_path, capsys):
    """The end-stage left vastus lateralis used to be ranked first through its side-less T2 copy,
    and listed twice. A site without a side is ranked only when it has no sided record; the CLI and
    the fusion node rank with the same function."""
    from mmstream.cli import main

    db = tmp_path / "bio.db"
    with BiomarkerStore(db) as s:
        s.add(SIDELESS)
    ref = tmp_path / "ref.json"
    ref.write_text(VL_REF.model_dump_json())
    assert main(["biopsy", "P1", "--db", str(db), "--reference", str(ref), "--end-stage-fat-fraction", "0.6"]) == 0
    rows = [ln.split()[:4] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [["1", "soleus", "left", "affected"], ["2", "rectus_femoris", "affected", "12.5"],
                    ["3", "vastus_lateralis", "left", "end_stage"]]  # fmt: skip
    from mmstream.fusion import rank_patient

    rules = FusionRules(VL_REF, end_stage_fat_fraction=0.6)
    ranked = rank_patient(SIDELESS, rules, None, None, TODAY)
    assert [(c.site, c.side, c.category) for c in ranked] == [
        ("soleus", "left", "affected"), ("rectus_femoris", None, "affected"), ("vastus_lateralis", "left", "end_stage")]
    vl_values = stored_values(SIDELESS, "vastus_lateralis", "left", rules, None, None, TODAY)
    vl = assess_site("vastus_lateralis", "left", vl_values, rules)
    assert vl.score_inputs == ("fat_fraction", "t2_water_ms")  # the side-less T2 is in the left leg's assessment
    node = FusionNode(db, rules, today=lambda: TODAY)
    f = fused_of(node.process("bus", metrics(1, site="soleus")))
    assert f.biopsy == ranked


def test_a_capture_without_a_side_joins_the_sided_site_as_a_record_would(tmp_path):
    """Three images captured with no side set, at a site with left records: the left site's
    ranking and fused message use them (as a side-less record), unless the left has its own."""
    db = tmp_path / "bio.db"
    with BiomarkerStore(db) as s:
        s.add([rec("gastrocnemius_medialis", "fat_fraction", 0.06, "1")])  # normal from MRI alone
    node = FusionNode(db, RULES, biopsy_every_s=0.0, today=lambda: TODAY)
    cap = Decoded("event.control", Event(node="control", level="info", reason="capture", message="c", stream_id="probe",
                                         t_host_s=0.0))  # fmt: skip
    for i in range(3):
        node.process("bus", cap)
        node.process("bus", metrics(i, site="gastrocnemius_medialis", side=None, echo=75.0, age_years=40))
    f = fused_of(node.process("bus", metrics(3, site="gastrocnemius_medialis", echo=50.0, age_years=40)))  # side left
    assert [(c.site, c.side, c.category) for c in f.biopsy] == [("gastrocnemius_medialis", "left", "affected")]
    assert [v.value for v in f.values if v.source == "captured"] == [75.0]
    for i in range(4, 7):  # the left leg's own capture takes its place
        node.process("bus", cap)
        f = fused_of(node.process("bus", metrics(i, site="gastrocnemius_medialis", echo=50.0, age_years=40)))
    assert [v.value for v in f.values if v.source == "captured"] == [50.0] and f.biopsy[0].category == "normal"
