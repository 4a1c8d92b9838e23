"""tools/accuracy_thickness.py --clicks: thickness from one observer's clicks against the other two."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import accuracy_thickness as A  # noqa: E402


@pytest.mark.shared_data
@pytest.mark.jit_only
def test_clicked_thickness_is_as_good_as_an_observer(shared_data):
    """The README's figures (dataset 1, 153 images x 3 observers): a click on both lines 4.39 px
    against the other two observers, a click on the deep line 4.93, the observer's own 4.67."""
    out = A.evaluate_clicked(shared_data)
    s = out["summary"]
    assert out["images"] == 153 and {v["n"] for v in s.values()} == {459}
    assert s["observer"]["mae_px"] == pytest.approx(4.67, abs=0.01)  # the human disagreement, as thickness.json
    assert s["both lines"]["mae_px"] < s["observer"]["mae_px"]
    assert s["deep line"]["mae_px"] < s["observer"]["mae_px"] + 0.3
    assert s["both lines"]["failures"] <= s["observer"]["failures"]
    assert s["both lines"]["refused"] == s["deep line"]["refused"] == 0  # the observers' points are never refused
