"""Simulated probe: a synthetic B-mode scene swept slowly across, with breathing motion.

Every frame comes with its ground truth (:class:`~mmstream_drivers.sim.bmode.SceneTruth`: nerve
area, aponeurosis rows, thickness), so tests and demos can check the live metrics.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mmstream.messages import ImagingSettings
from mmstream.source import SourceFrame
from mmstream_drivers.health import SourceHealth
from mmstream_drivers.sim.bmode import BModeScene, SceneSpec, SceneTruth

__all__ = ["SimProbe", "SimFrame", "SceneSpec", "SceneTruth", "BModeScene"]


@dataclass(frozen=True)
class SimFrame:
    """One simulated frame: ``image`` (H, W) uint8, its index, device time and ground truth."""

    image: np.ndarray
    index: int
    t_device_s: float
    truth: SceneTruth

    def to_source(self) -> SourceFrame:
        """The frame as sent on the wire; the scalar ground truth rides along as annotations."""
        t = self.truth
        return SourceFrame(
            image=self.image,
            t_device_s=self.t_device_s,
            spacing_mm=t.spacing_mm,
            spacing_source="simulated",
            imaging=ImagingSettings(depth_mm=self.image.shape[0] * t.spacing_mm[0], probe="simulated", preset="msk"),
            annotations={
                "truth_nerve_area_mm2": t.nerve_area_mm2,
                "truth_nerve_row": t.nerve_center_rc[0],
                "truth_nerve_col": t.nerve_center_rc[1],
                "truth_thickness_mm": t.thickness_mm,
            },
        )


class SimProbe:
    """Simulated probe producing frames at ``fps`` (device clock; pacing is the caller's job).

    Parameters
    ----------
    spec : SceneSpec
        Scene geometry, frame size and pixel spacing.
    fps : float
        Frame rate of the device clock ``t_device_s = index / fps``.
    seed : int
        Same seed, same frames, rendered in the same order: each render draws the next frame's
        electronic noise, so ``frame(0)`` after ``frame(5)`` is not a fresh probe's ``frame(0)``.
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
        self.health = SourceHealth(f"source-{self.name}")

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

    def source_frames(self, count: int | None = None) -> Iterator[SourceFrame]:
        """The driver interface: frames as :class:`~mmstream.source.SourceFrame`, truth annotated
        (counted as ``frames`` in :attr:`health`)."""
        for f in self.frames(count):
            self.health.count("frames")
            yield f.to_source()
