"""tools/train_thickness.py: the candidates' ceiling (the pair nearest the target) it reports."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_thickness as TT  # noqa: E402

from mmstream_drivers.sim import SceneSpec, SimProbe  # noqa: E402


def _sim_sample(**target):
    f = SimProbe(SceneSpec(), seed=3).frame(10)
    c = f.image.shape[1] // 2
    rows = (float(f.truth.superficial_row[c]), float(f.truth.deep_row[c]))
    kind = {"rows": rows} if target.get("rows") else {"thickness": rows[1] - rows[0] + target.get("offset", 0.0)}
    return TT.Sample(f.image, "g", "sim", c, region=(0, 0, *f.image.shape), **kind), rows


def test_ceiling_is_the_pair_nearest_the_truth_and_no_choice_beats_it_on_thickness_targets():
    s, rows = _sim_sample(rows=True)
    assert s.ij and abs(s.ceiling_error()) < 2.0  # the simulator's true lines are among the candidates
    t, _ = _sim_sample(offset=7.0)  # a thickness-only target 7 px off every true pair
    all_errors = t.rows[:, 1] - t.rows[:, 0] - t.truth_thickness
    assert t.ceiling_error() == all_errors[np.argmin(np.abs(all_errors))]
    model = TT.fit([s])
    assert abs(t.ceiling_error()) <= abs(t.thickness_error(model))
