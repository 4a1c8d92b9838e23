"""Reference tables and device calibration: file format, refusal of examples and bad files,
z-scores (mean/SD and regression), lookups, the unknown cases, the three-image mean, and the live
z-score in the analyzer's metrics."""

import json
from pathlib import Path

import numpy as np
import pytest

from mmstream.calibration import (
    ABNORMAL_Z, Device, DeviceCalibration, EchoReferences, ReferenceEntry, ReferenceTable, capture_mean,
    load_echo_references, load_model, z_score,
)  # fmt: skip
from mmstream.codec import Decoded, buffer_specs
from mmstream.config import BiomarkersSection
from mmstream.errors import ConfigError
from mmstream.messages import ClinicalContext, Frame, ImagingSettings
from mmstream.nodes import Analyzer, StreamConfig, StreamSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEV = Device(scanner="s1", probe="p1", preset="msk")
OTHER = Device(scanner="s2", probe="p2", preset="msk")


def table(**kw) -> ReferenceTable:
    entries = kw.pop("entries", [
        {"biomarker": "us_echo_intensity", "site": "biceps_brachii", "abnormal": "high", "mean": 50.0, "sd": 10.0,
         "age_min_years": 18, "age_max_years": 60},
        {"biomarker": "us_echo_intensity", "site": "biceps_brachii", "sex": "male", "abnormal": "high", "mean": 40.0,
         "sd": 5.0, "age_min_years": 18, "age_max_years": 60},
        {"biomarker": "us_echo_intensity", "site": "tibialis_anterior", "abnormal": "high",
         "regression": {"intercept": 30.0, "age_years": 0.5, "male": 2.0, "residual_sd": 4.0}},
        {"biomarker": "thickness_mm", "site": "biceps_brachii", "abnormal": "low", "mean": 30.0, "sd": 3.0},
    ])  # fmt: skip
    return ReferenceTable.model_validate({"source": "test values", "grey_level_device": DEV.model_dump(), "entries": entries, **kw})


def test_example_files_parse_but_are_refused_as_clinical_data():
    t = load_model(EXAMPLES / "echo_reference.example.toml", ReferenceTable, allow_example=True)
    c = load_model(EXAMPLES / "device_calibration.example.toml", DeviceCalibration, allow_example=True)
    assert t.example and c.example and "EXAMPLE" in t.source and "EXAMPLE" in c.source
    for f, m in (("echo_reference.example.toml", ReferenceTable), ("device_calibration.example.toml", DeviceCalibration)):
        with pytest.raises(ConfigError) as e:
            load_model(EXAMPLES / f, m)
        assert e.value.reason == "example_file"
    with pytest.raises(ConfigError):
        load_echo_references(BiomarkersSection(echo_reference=EXAMPLES / "echo_reference.example.toml"))


@pytest.mark.parametrize(
    "doc,needle",
    [({"entries": []}, "entries"), ({"source": ""}, "source"),
     ({"entries": [{"biomarker": "us_echo_intensity", "site": "x", "abnormal": "high", "mean": 1.0}]}, "mean and sd"),
     ({"entries": [{"biomarker": "us_echo_intensity", "site": "x", "abnormal": "high", "mean": 1.0, "sd": -1}]}, "sd"),
     ({"entries": [{"biomarker": "us_echo_intensity", "site": "x", "abnormal": "up", "mean": 1.0, "sd": 1}]}, "abnormal"),
     ({"entries": [{"biomarker": "b", "site": "x", "abnormal": "high", "mean": 1.0, "sd": 1, "age_max_years": 50},
                   {"biomarker": "b", "site": "x", "abnormal": "high", "mean": 1.0, "sd": 1, "age_min_years": 40}]}, "overlapping"),
     ({"entries": [{"biomarker": "b", "site": "x", "abnormal": "high", "mean": 1.0, "sd": 1,
                    "regression": {"intercept": 1, "residual_sd": 1}}]}, "either")],
)  # fmt: skip
def test_invalid_reference_files_name_the_problem(tmp_path, doc, needle):
    f = tmp_path / "ref.json"
    f.write_text(json.dumps({"source": "a study", "entries": [], **doc}))
    with pytest.raises(ConfigError) as e:
        load_model(f, ReferenceTable)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_unparseable_and_missing_files(tmp_path):
    (tmp_path / "bad.toml").write_text("source = [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_model(tmp_path / "bad.toml", ReferenceTable)
    with pytest.raises(ConfigError, match="cannot read"):
        load_model(tmp_path / "none.toml", ReferenceTable)


def test_lookup_and_z_scores():
    t = table()
    female = t.lookup("us_echo_intensity", "biceps_brachii", 30, "female")
    male = t.lookup("us_echo_intensity", "biceps_brachii", 30, "male")
    assert (female.mean, male.mean) == (50.0, 40.0)  # a sex-specific entry wins over 'any'
    assert t.lookup("us_echo_intensity", "biceps_brachii", 70, "female") is None  # outside the age range
    assert t.lookup("us_echo_intensity", "biceps_brachii", None, "female") is None  # age needed for a range
    assert t.lookup("us_echo_intensity", "soleus", 30, "female") is None
    z = z_score(70.0, female, 30, "female")
    assert (z.z, z.oriented, z.abnormal) == (2.0, 2.0, True)  # >= 2 SD is abnormal
    assert not z_score(69.9, female, 30, "female").abnormal
    reg = t.lookup("us_echo_intensity", "tibialis_anterior", 40, "male")
    assert reg.expected(40, "male") == (30 + 20 + 2, 4.0)
    assert t.lookup("us_echo_intensity", "tibialis_anterior", 40, None) is None  # the regression needs the sex
    thin = z_score(21.0, t.lookup("thickness_mm", "biceps_brachii", None, None), None, None)
    assert thin.z == -3.0 and thin.oriented == 3.0 and thin.abnormal  # 'low' is the abnormal direction
    assert ABNORMAL_Z == 2.0


@pytest.mark.parametrize("value, z", [(20.0, -3.0), (80.0, 3.0)], ids=["below", "above"])
def test_both_direction_is_abnormal_on_either_side(value, z):
    """With the 'both' direction taken one-sided, a value 3 SD below the mean passed as normal."""
    both = ReferenceEntry(biomarker="b", site="x", abnormal="both", mean=50.0, sd=10.0)
    got = z_score(value, both, None, None)
    assert (got.z, got.oriented, got.abnormal) == (z, 3.0, True)


def test_adjacent_age_ranges_are_accepted_and_the_boundary_age_takes_the_upper_one():
    """Age ranges are [min, max): adjacent ones were refused as overlapping, or age 60 given the 18-60 entry."""
    entry = {"biomarker": "us_echo_intensity", "site": "biceps_brachii", "abnormal": "high", "sd": 10.0}
    t = table(entries=[{**entry, "mean": 50.0, "age_min_years": 18, "age_max_years": 60},
                       {**entry, "mean": 60.0, "age_min_years": 60, "age_max_years": 80}])  # fmt: skip
    assert [t.lookup("us_echo_intensity", "biceps_brachii", age, "female").mean for age in (18, 59.9, 60, 79.9)] == \
        [50.0, 50.0, 60.0, 60.0]
    assert t.lookup("us_echo_intensity", "biceps_brachii", 80, "female") is None


def test_calibration_and_why_a_z_score_is_unknown():
    cal = DeviceCalibration(source="phantom", reference_device=DEV, devices=[{"device": OTHER.model_dump(), "gain": 2.0, "offset": -10}])
    refs = EchoReferences(table(), cal)
    a = refs.assess(30.0, "roi", "biceps_brachii", 30, "female", OTHER)  # 2 * 30 - 10 = 50 on the reference device
    assert a.calibrated_mean == 50.0 and a.z.z == 0.0 and a.unavailable is None
    same = refs.assess(70.0, "csa", "biceps_brachii", 30, "female", DEV)
    assert same.calibrated_mean == 70.0 and same.z.abnormal
    unknown = Device(scanner="s9", probe="p", preset="q")
    cases = [((30.0, "roi", "biceps_brachii", 30, "female", unknown), "uncalibrated_device"),
             ((30.0, "roi", "biceps_brachii", 30, "female", None), "uncalibrated_device"),
             ((30.0, "frame", "biceps_brachii", 30, "female", DEV), "whole_frame"),
             ((30.0, "roi", None, 30, "female", DEV), "no_site"),
             ((30.0, "roi", "soleus", 30, "female", DEV), "no_reference"),
             ((None, "roi", "soleus", 30, "female", DEV), "no_value"),
             ((float("nan"), "roi", "biceps_brachii", 30, "female", DEV), "no_value")]  # fmt: skip
    for args, why in cases:
        got = refs.assess(*args)
        assert got.unavailable == why and got.z is None
    assert EchoReferences(table()).assess(30.0, "roi", "biceps_brachii", 30, "female", OTHER).unavailable == "uncalibrated_device"
    elsewhere = EchoReferences(table(), DeviceCalibration(source="phantom", reference_device=OTHER,  # not the table's
                                                          devices=[{"device": unknown.model_dump(), "gain": 2.0}]))
    for device in (unknown, OTHER):  # their grey levels converted to another device's are not the table's
        assert elsewhere.assess(30.0, "roi", "biceps_brachii", 30, "female", device).unavailable == "uncalibrated_device"
    no_device = ReferenceTable.model_validate({**table().model_dump(), "grey_level_device": None})
    cal = DeviceCalibration.model_validate({"source": "phantom", "reference_device": OTHER.model_dump(),
                                            "devices": [{"device": DEV.model_dump(), "gain": 1.0, "offset": 0.0}]})  # fmt: skip
    for device in (DEV, OTHER):  # a table measured on an unnamed device: no z-score for any device
        assert EchoReferences(no_device, cal).assess(30.0, "roi", "biceps_brachii", 30, "female", device).z is None


def test_three_image_protocol_mean():
    assert capture_mean([10.0, 11.0, 15.0]) == 12.0
    with pytest.raises(ValueError):
        capture_mean([10.0, 11.0])


@pytest.mark.parametrize("sex, z", [("female", 2.0), ("male", 6.0)])
def test_analyzer_adds_live_z_score_to_metrics(tmp_path, sex, z):
    """A man is scored against the male entry (40 +- 5), not the 'any' one (50 +- 10) a woman gets."""
    ctx = ClinicalContext(patient_id="P1", site="biceps_brachii", age_years=30, sex=sex)
    settings = StreamSettings(StreamConfig(roi=(10, 10, 50, 50), metrics=("echogenicity",), clinical=ctx))
    an = Analyzer(settings, echo=EchoReferences(table()))
    img = np.full((64, 64), 69, np.uint8)
    img[1::2] = 71  # mean 70 in the ROI; a uniform frame would be featureless (not measured)
    im = ImagingSettings(scanner=DEV.scanner, probe=DEV.probe, preset=DEV.preset)
    h = Frame(stream_id="s", session_id="x", seq=0, imaging=im, buffers=buffer_specs(image=img))
    e = an.process("frames", Decoded("frame.s", h, {"image": img}))[0].header.echogenicity
    assert (e.mean, e.calibrated_mean, e.z_score, e.abnormal, e.z_unavailable) == (70.0, 70.0, z, True, None)
    h2 = h.model_copy(update={"seq": 1, "imaging": ImagingSettings()})
    e2 = an.process("frames", Decoded("frame.s", h2, {"image": img}))[0].header.echogenicity
    assert e2.z_score is None and e2.z_unavailable == "uncalibrated_device"
    plain = Analyzer(settings).process("frames", Decoded("frame.s", h, {"image": img}))[0].header.echogenicity
    assert plain.z_score is None and plain.z_unavailable is None  # no reference configured: no claim at all


def test_pending_captures_take_the_first_frame_analysed_after_each_command():
    from mmstream.calibration import PendingCaptures

    p = PendingCaptures()
    assert not p.take("s", {"analysis_start": 5.0}) and p.waiting("s") == 0  # nothing asked
    p.ask("s", 10.0)
    p.ask("s", 12.0)
    assert not p.take("s", {"analysis_start": 9.5})  # analysed before the command
    assert not p.take("other", {"analysis_start": 11.0})  # another stream
    assert p.take("s", {"analysis_start": 10.0}) and p.waiting("s") == 1
    assert not p.take("s", {"analysis_start": 11.0})  # before the second command
    assert p.take("s", {}) and p.waiting("s") == 0  # no stamp (e.g. a replayed message): taken
    p.ask("idle", 100.0)  # a command on a stream that then sends nothing for long lapses
    assert not p.take("idle", {"analysis_start": 100.0 + 11.0}) and p.waiting("idle") == 0
    for k in range(20):
        p.ask("s", 200.0 + k)
    assert p.waiting("s") == 8  # bounded


def test_an_entry_may_give_the_abnormal_cut_off_of_its_own_source():
    from mmstream.calibration import ReferenceEntry, z_score

    default = ReferenceEntry(biomarker="fat_fraction", site="soleus", abnormal="high", mean=0.05, sd=0.02)
    own = default.model_copy(update={"abnormal_z": 3.0})
    assert z_score(0.10, default, None, None).abnormal  # z 2.5 >= 2
    assert not z_score(0.10, own, None, None).abnormal  # z 2.5 < 3: that source's limit
    assert z_score(0.12, own, None, None).abnormal
    with pytest.raises(ValueError):
        ReferenceEntry(biomarker="fat_fraction", site="soleus", abnormal="high", mean=0.05, sd=0.02, abnormal_z=0)
