"""Shared fixtures: the ``../shared/data`` folder (skip where absent) and simulated frames."""

import os
from pathlib import Path

import numpy as np
import pytest

# services started by tests serve their live view on a random port, not the default 8765
os.environ.setdefault("MMSTREAM_WEB__PORT", "0")

_DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path | None:
    """``$MMSTREAM_SHARED_DATA`` or ``../shared/data`` beside the project; None where absent."""
    path = Path(os.environ.get("MMSTREAM_SHARED_DATA", _DEFAULT_SHARED))
    return path if (path / "README.md").is_file() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "real data folder ../shared/data (or $MMSTREAM_SHARED_DATA) is absent: "
            "this test runs on the project's CI, where it is present"
        )
    return path


@pytest.fixture(scope="session")
def sim_probe():
    from mmstream_drivers.sim import SimProbe

    return SimProbe(fps=30.0, seed=7)


@pytest.fixture()
def rng():
    return np.random.default_rng(20261124)
