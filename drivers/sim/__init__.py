"""Simulated probe: a synthetic B-mode scene swept slowly across, with breathing motion.

Every frame comes with its ground truth (:class:`~mmstream_drivers.sim.bmode.SceneTruth`: nerve
area, aponeurosis rows, thickness), so tests and demos can check the live metrics.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mmstream_drivers.sim.bmode import BModeScene, SceneSpec, SceneTruth

__all__ = ["SimProbe", "SimFrame", "SceneSpec", "SceneTruth", "BModeScene"]


@dataclass(frozen=True)
class SimFrame:
    """One simulated frame: ``image`` (H, W) uint8, its index, device time and ground truth."""

    image: np.ndarray
    index: int
    t_device_s: float
    truth: SceneTruth


class SimProbe:
    """Simulated probe producing frames at ``fps`` (device clock; pacing is the caller's job).

    Parameters
    ----------
    spec : SceneSpec
        Scene geometry, frame size and pixel spacing.
    fps : float
        Frame rate of the device clock ``t_device_s = index / fps``.
    seed : int
        Same seed, same frames.
    sweep_mm, sweep_period_s : float
        Lateral probe sweep amplitude (mm) and period (s).
    breathing_mm, breathing_period_s : float
        Axial breathing motion amplitude (mm) and period (s).
    """

    name = "sim"

    def __init__(
        self,
        spec: SceneSpec = SceneSpec(),
        fps: float = 30.0,
        seed: int = 0,
        sweep_mm: float = 2.0,
        sweep_period_s: float = 10.0,
        breathing_mm: float = 0.4,
        breathing_period_s: float = 4.0,
    ):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.spec = spec
        self.fps = float(fps)
        self.scene = BModeScene(spec, seed=seed)
        self._motion = (sweep_mm, sweep_period_s, breathing_mm, breathing_period_s)

    def offset_mm(self, t_s: float) -> tuple[float, float]:
        """Probe offset (row, col) in mm relative to the tissue at device time ``t_s``."""
        sweep, t_sweep, breath, t_breath = self._motion
        return (
            breath * np.sin(2 * np.pi * t_s / t_breath),
            sweep * np.sin(2 * np.pi * t_s / t_sweep),
        )

    def frame(self, index: int) -> SimFrame:
        """Frame number ``index`` (0-based)."""
        t = index / self.fps
        image, truth = self.scene.render(self.offset_mm(t))
        return SimFrame(image=image, index=index, t_device_s=t, truth=truth)

    def frames(self, count: int | None = None) -> Iterator[SimFrame]:
        """Frames 0, 1, ... (``count`` of them, or endlessly)."""
        i = 0
        while count is None or i < count:
            yield self.frame(i)
            i += 1
