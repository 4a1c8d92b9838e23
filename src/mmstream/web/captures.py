"""Three-image protocol as the page shows it: the numbers of each captured frame of a (patient,
site, side) and their mean.

The protocol itself belongs to the service (``capture`` control command; the fusion node takes the
frame and keeps the site's value, :mod:`mmstream.calibration`); this book only mirrors, for the
screen, which frames were taken, with the same rule: a fourth capture starts a new set of
:data:`~mmstream.calibration.CAPTURE_FRAMES`. Held in memory, never written.
"""

import math
import threading

from mmstream.calibration import CAPTURE_FRAMES

FIELDS = ("echo_mean", "echo_calibrated", "csa_mm2", "csa_px", "thickness_mm", "thickness_px")


def capture_numbers(ov: dict) -> dict:
    """The numbers of one overlay (``metrics`` message) that a capture keeps; None where absent."""
    e, c, t = ov.get("echogenicity") or {}, ov.get("csa") or {}, ov.get("thickness") or {}
    return {
        "stream_id": ov["stream_id"],
        "seq": ov["seq"],
        "echo_mean": e.get("mean"),
        "echo_calibrated": e.get("calibrated_mean"),  # in the reference device's grey levels, what fusion keeps
        "csa_mm2": c.get("area_mm2"),
        "csa_px": c.get("area_px"),
        "thickness_mm": t.get("thickness_mm"),
        "thickness_px": t.get("thickness_px"),
    }


class CaptureBook:
    """Captures per context key ``(patient_id, site, side)``; thread-safe."""

    def __init__(self, per_site: int = CAPTURE_FRAMES):
        self.per_site = per_site
        self.version = 0  # grows with every capture
        self._lock = threading.Lock()
        self._by_key: dict[tuple, list[dict]] = {}

    def add(self, key: tuple, numbers: dict) -> None:
        """Add a capture (a full set is started anew, and so is a set whose device calibration
        changed, as the fusion node does: never a mean of raw and calibrated grey levels)."""
        with self._lock:
            caps = self._by_key.setdefault(key, [])
            calibrated = numbers.get("echo_calibrated") is not None
            if len(caps) >= self.per_site or (caps and (caps[0].get("echo_calibrated") is not None) != calibrated):
                caps.clear()
            caps.append(numbers)
            self.version += 1

    def summary(self, key: tuple) -> dict:
        """``captures``, ``mean`` of each field over the captures that have it (None if none),
        ``complete`` once ``per_site`` captures are in."""
        with self._lock:
            caps = list(self._by_key.get(key, ()))
        mean = {}
        for f in FIELDS:
            vals = [c[f] for c in caps if c.get(f) is not None and math.isfinite(c[f])]
            mean[f] = sum(vals) / len(vals) if vals else None
        return {"type": "captures", "captures": caps, "mean": mean, "per_site": self.per_site,
                "complete": len(caps) >= self.per_site}  # fmt: skip
