"""Synthetic B-mode scene of a limb in transverse-oblique view, with its ground truth.

The scene, from the skin down (depths in mm, all configurable in :class:`SceneSpec`): skin line,
subcutaneous fat with bright septa, the superficial aponeurosis, a pennate muscle with fascicle
striations, the deep aponeurosis (both slightly tilted), an intermuscular plane holding a peripheral
nerve (bright epineurial rim around dark fascicles) beside an anechoic vessel with posterior
enhancement, and a bone surface with its acoustic shadow.

Speckle is a low-pass filtered complex Gaussian field (fully developed speckle: Rayleigh envelope)
drawn once on a canvas larger than the frame, so it moves with the tissue when the probe slides or
the patient breathes; each frame adds fresh electronic noise, depth attenuation with partial
time-gain compensation, and log compression to 8 bits.

The numbers are a plausible phantom for testing, not anatomy reference values.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["SceneSpec", "SceneTruth", "BModeScene"]


@dataclass(frozen=True)
class SceneSpec:
    """Geometry and imaging parameters of the synthetic scene (lengths in mm, angles in degrees)."""

    shape: tuple[int, int] = (512, 512)
    spacing_mm: tuple[float, float] = (0.1, 0.1)
    skin_mm: float = 1.2
    fat_mm: float = 5.0
    superficial_apo_mm: float = 5.5
    deep_apo_mm: float = 22.0
    apo_thickness_mm: float = 0.8
    apo_tilt_deg: float = 2.0
    pennation_deg: float = 18.0
    fascicle_period_mm: float = 1.6
    nerve_center_mm: tuple[float, float] = (29.0, 20.0)
    nerve_semi_axes_mm: tuple[float, float] = (2.6, 4.0)
    nerve_rim_mm: float = 0.5
    vessel_center_mm: tuple[float, float] = (29.5, 31.0)
    vessel_radius_mm: float = 2.4
    bone_mm: float = 42.0
    attenuation_db_per_mm: float = 0.5
    tgc_fraction: float = 0.8
    dynamic_range_db: float = 50.0
    noise_db: float = 1.5
    margin_mm: float = 8.0


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of one frame, in pixels of that frame ((row, col) axes)."""

    spacing_mm: tuple[float, float]
    nerve_center_rc: tuple[float, float]
    nerve_semi_axes_px: tuple[float, float]
    nerve_area_px: float
    nerve_area_mm2: float
    superficial_row: np.ndarray = field(repr=False)  # (W,) inner (deep) edge of the superficial aponeurosis
    deep_row: np.ndarray = field(repr=False)  # (W,) inner (superficial) edge of the deep aponeurosis
    thickness_px: float = 0.0  # median over columns of deep_row - superficial_row
    thickness_mm: float = 0.0


class BModeScene:
    """A synthetic B-mode scene rendered at any probe offset.

    Parameters
    ----------
    spec : SceneSpec
    seed : int
        Seed of the speckle and noise generators (same seed, same frames in the same order of
        renders: each render draws its noise from the generator).
    """

    def __init__(self, spec: SceneSpec = SceneSpec(), seed: int = 0):
        self.spec = spec
        self._rng = np.random.default_rng(seed)
        h, w = spec.shape
        sr, sc = spec.spacing_mm
        self._margin = (int(round(spec.margin_mm / sr)), int(round(spec.margin_mm / sc)))
        mr, mc = self._margin
        canvas = (h + 2 * mr, w + 2 * mc)
        # world coordinates of canvas pixels in mm; frame pixel (r, c) at offset (0, 0) sits at
        # canvas (r + mr, c + mc), i.e. world (r * sr, c * sc)
        rows_mm = (np.arange(canvas[0]) - mr) * sr
        cols_mm = (np.arange(canvas[1]) - mc) * sc
        self._world_db = self._render_world(rows_mm[:, None], cols_mm[None, :])
        depth_mm = np.arange(h) * sr
        self._attenuation_db = (
            spec.attenuation_db_per_mm * (1.0 - spec.tgc_fraction) * 2.0 * depth_mm
        ).astype(np.float32)[:, None]

    # -- geometry shared by rendering and truth --------------------------------------------
    def _apo_mm(self, base_mm: float, cols_mm):
        return base_mm + np.tan(np.deg2rad(self.spec.apo_tilt_deg)) * (cols_mm - 25.0)

    def _render_world(self, r, c) -> np.ndarray:
        """Echo level (dB, 0 = brightest) of the world at (r, c) mm, speckle included."""
        s = self.spec
        refl = np.full(np.broadcast_shapes(r.shape, c.shape), -30.0, np.float32)
        refl[:] = np.where(r < s.skin_mm, -4.0, refl)
        fat = (r >= s.skin_mm) & (r < s.superficial_apo_mm)
        refl[:] = np.where(fat, -38.0, refl)
        septa = fat & (np.abs(np.sin((r * 1.3 + c * 0.35) * 0.9)) < 0.06)
        refl[:] = np.where(septa, -14.0, refl)
        sup = self._apo_mm(s.superficial_apo_mm, c)
        deep = self._apo_mm(s.deep_apo_mm, c)
        t = s.apo_thickness_mm
        muscle = (r >= sup) & (r < deep - t)
        pen = np.deg2rad(s.pennation_deg)
        stria = np.cos(2 * np.pi * (r * np.cos(pen) - c * np.sin(pen)) / s.fascicle_period_mm)
        refl[:] = np.where(muscle, np.float32(-31.0) + 10.0 * (stria > 0.85), refl)
        refl[:] = np.where((r >= sup - t) & (r < sup), -6.0, refl)
        refl[:] = np.where((r >= deep - t) & (r < deep), -6.0, refl)
        # intermuscular plane and second muscle below the deep aponeurosis
        refl[:] = np.where((r >= deep) & (r < s.bone_mm), -28.0 + 3.0 * (stria > 0.8), refl)
        # nerve: bright rim, moderately bright interior with dark fascicles
        (nr, nc), (ar, ac) = s.nerve_center_mm, s.nerve_semi_axes_mm
        q = ((r - nr) / ar) ** 2 + ((c - nc) / ac) ** 2
        rim_in = ((r - nr) / (ar - s.nerve_rim_mm)) ** 2 + ((c - nc) / (ac - s.nerve_rim_mm)) ** 2
        refl[:] = np.where(q < 1.0, -8.0, refl)
        fasc = np.zeros(refl.shape, bool)
        frng = np.random.default_rng(12345)  # fixed fascicle layout, independent of the speckle seed
        for _ in range(int(4 * ar * ac)):
            fr_, fc_ = frng.uniform(-1, 1, 2) * (ar - s.nerve_rim_mm, ac - s.nerve_rim_mm)
            fasc |= np.hypot(r - nr - fr_, c - nc - fc_) < frng.uniform(0.3, 0.55)
        fasc &= rim_in < 1.0
        refl[:] = np.where((rim_in < 1.0) & ~fasc, -20.0, refl)
        refl[:] = np.where(fasc, -36.0, refl)
        # vessel: anechoic lumen, posterior enhancement
        (vr, vc), vrad = s.vessel_center_mm, s.vessel_radius_mm
        dv = np.hypot(r - vr, c - vc)
        behind = (np.abs(c - vc) < vrad) & (r > vr) & (r < s.bone_mm)
        refl[:] = np.where(behind, refl + 4.0, refl)
        refl[:] = np.where(dv < vrad, -55.0, refl)
        # bone surface and acoustic shadow
        bone = s.bone_mm + 1.5 * np.sin(c / 9.0)
        refl[:] = np.where((r >= bone) & (r < bone + 0.7), -1.0, refl)
        refl[:] = np.where(r >= bone + 0.7, -60.0, refl)
        # fully developed speckle: Rayleigh envelope of a band-limited complex Gaussian field
        field_ = self._rng.standard_normal((2, *refl.shape)).astype(np.float32)
        sr, sc = s.spacing_mm
        sig = (0.1 / sr, 0.2 / sc)  # speckle cell ~0.25 mm axial, 0.5 mm lateral
        env = np.hypot(
            cv2.GaussianBlur(field_[0], (0, 0), sigmaX=sig[1], sigmaY=sig[0]),
            cv2.GaussianBlur(field_[1], (0, 0), sigmaX=sig[1], sigmaY=sig[0]),
        )
        env /= np.sqrt(np.mean(env**2))
        return refl + 20.0 * np.log10(env + 1e-3)

    # -- frames ----------------------------------------------------------------------------
    def render(self, offset_mm: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, SceneTruth]:
        """Frame seen with the probe moved by ``offset_mm`` (row, col) relative to the tissue.

        Returns
        -------
        frame : ndarray of shape (H, W), uint8
        truth : SceneTruth
        """
        s = self.spec
        h, w = s.shape
        sr, sc = s.spacing_mm
        dr, dc = offset_mm[0] / sr, offset_mm[1] / sc
        mr, mc = self._margin
        m = np.float32([[1, 0, mc + dc], [0, 1, mr + dr]])
        db = cv2.warpAffine(
            self._world_db, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        db -= self._attenuation_db
        db += self._rng.normal(0.0, s.noise_db, size=db.shape).astype(np.float32)
        top = 6.0  # dB above the mean echo of a bright reflector mapped to white
        frame = np.clip((db - (top - s.dynamic_range_db)) * (255.0 / s.dynamic_range_db), 0, 255)
        return frame.astype(np.uint8), self.truth(offset_mm)

    def truth(self, offset_mm: tuple[float, float] = (0.0, 0.0)) -> SceneTruth:
        """Ground truth for a frame rendered at ``offset_mm``."""
        s = self.spec
        sr, sc = s.spacing_mm
        cols_mm = np.arange(s.shape[1]) * sc + offset_mm[1]
        sup = (self._apo_mm(s.superficial_apo_mm, cols_mm) - offset_mm[0]) / sr
        deep = (self._apo_mm(s.deep_apo_mm, cols_mm) - s.apo_thickness_mm - offset_mm[0]) / sr
        (nr, nc), (ar, ac) = s.nerve_center_mm, s.nerve_semi_axes_mm
        thickness_px = float(np.median(deep - sup))
        return SceneTruth(
            spacing_mm=s.spacing_mm,
            nerve_center_rc=(float((nr - offset_mm[0]) / sr), float((nc - offset_mm[1]) / sc)),
            nerve_semi_axes_px=(ar / sr, ac / sc),
            nerve_area_px=float(np.pi * ar * ac / (sr * sc)),
            nerve_area_mm2=float(np.pi * ar * ac),
            superficial_row=sup,
            deep_row=deep,
            thickness_px=thickness_px,
            thickness_mm=thickness_px * sr,
        )
