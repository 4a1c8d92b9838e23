"""Three-image protocol: the operator captures three frames per (patient, site, side); the view
shows each capture's numbers and their mean.

Held in memory by the web server (never written with patient identifiers); each capture is also
published as a ``capture`` event (numbers, site and side, no patient id), so a running recording
keeps it.
"""

import math
import threading

CAPTURES_PER_SITE = 3
FIELDS = ("echo_mean", "csa_mm2", "csa_px", "thickness_mm", "thickness_px")


def capture_numbers(ov: dict) -> dict:
    """The numbers of one overlay (``metrics`` message) that a capture keeps; None where absent."""
    e, c, t = ov.get("echogenicity") or {}, ov.get("csa") or {}, ov.get("thickness") or {}
    return {
        "stream_id": ov["stream_id"],
        "seq": ov["seq"],
        "echo_mean": e.get("mean"),
        "csa_mm2": c.get("area_mm2"),
        "csa_px": c.get("area_px"),
        "thickness_mm": t.get("thickness_mm"),
        "thickness_px": t.get("thickness_px"),
    }


class CaptureBook:
    """Captures per context key ``(patient_id, site, side)``; thread-safe."""

    def __init__(self, per_site: int = CAPTURES_PER_SITE):
        self.per_site = per_site
        self._lock = threading.Lock()
        self._by_key: dict[tuple, list[dict]] = {}

    def add(self, key: tuple, numbers: dict) -> dict:
        """Add a capture; refused (ValueError) once the site has ``per_site`` of them."""
        with self._lock:
            caps = self._by_key.setdefault(key, [])
            if len(caps) >= self.per_site:
                raise ValueError(f"{self.per_site} captures already taken here: clear them to start again")
            caps.append(numbers)
        return self.summary(key)

    def clear(self, key: tuple) -> dict:
        with self._lock:
            self._by_key.pop(key, None)
        return self.summary(key)

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
