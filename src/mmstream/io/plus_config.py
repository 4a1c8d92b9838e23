"""Pixel spacing and Image-to-Probe calibration from a PLUS Toolkit configuration XML.

Reads ``OutputImageSpacingMmPerPixel="x y"`` of the ``ScanConversion`` element(s) -- PLUS gives
(x, y) = (col, row), so ``spacing_mm = (y, x)`` -- and ``OutputImageSizePixel="x y"`` (cols, rows)
to check the images it is applied to. ``CoordinateDefinitions/Transform From="Image" To="Probe"``
becomes ``image_to_probe`` (4x4 nested list, mm per pixel in its scale).

The XML is untrusted: files above :data:`MAX_CONFIG_BYTES` and any DTD/entity declaration are refused
before parsing (no entity expansion, no external fetches).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from mmstream.errors import ReadError, SpacingError
from mmstream.io._common import floats

MAX_CONFIG_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PlusConfig:
    """What mmstream takes from a PLUS config file."""

    path: str
    spacing_mm: tuple[float, float]  # (row_mm, col_mm)
    output_size_rc: tuple[int, int] | None  # (rows, cols)
    image_to_probe: list[list[float]] | None


def load_plus_config(path) -> PlusConfig:
    """Parse a PLUS config XML. ReadError when unreadable/malformed, SpacingError when spacing is bad."""
    p = Path(os.fspath(path))
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ReadError(f"{p}: cannot read PLUS config ({exc.strerror or exc})", reason="bad_plus_config") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ReadError(f"{p}: PLUS config larger than {MAX_CONFIG_BYTES} bytes", reason="bad_plus_config")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise ReadError(f"{p}: PLUS config with DTD/entity declarations refused", reason="bad_plus_config")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ReadError(f"{p}: PLUS config is not well-formed XML ({exc})", reason="bad_plus_config") from exc

    found: list[tuple[list[float], list[float] | None]] = []
    for el in root.iter():
        if "OutputImageSpacingMmPerPixel" in el.attrib:
            sp = floats(el.attrib["OutputImageSpacingMmPerPixel"])
            if sp is None or len(sp) < 2 or not all(math.isfinite(v) and v > 0 for v in sp[:2]):
                raise SpacingError(
                    f"{p}: OutputImageSpacingMmPerPixel = {el.attrib['OutputImageSpacingMmPerPixel']!r} is not "
                    "two finite positive numbers", reason="invalid_spacing")
            size = floats(el.attrib.get("OutputImageSizePixel"))
            found.append((sp[:2], size[:2] if size and len(size) >= 2 else None))
    if not found:
        raise SpacingError(f"{p}: no OutputImageSpacingMmPerPixel in the PLUS config", reason="no_spacing")
    if len({(a, b) for (a, b), _ in found}) > 1:
        raise SpacingError(f"{p}: several ScanConversion elements with different spacings "
                           f"{[s for s, _ in found]}", reason="ambiguous_config")
    (sx, sy), size = found[0]
    size_rc = None
    if size is not None:
        if not all(v > 0 and float(v).is_integer() for v in size):
            raise SpacingError(f"{p}: OutputImageSizePixel {size} is not two positive integers",
                               reason="invalid_config")
        size_rc = (int(size[1]), int(size[0]))

    image_to_probe = None
    for el in root.iter("Transform"):
        if el.attrib.get("From") == "Image" and el.attrib.get("To") == "Probe":
            vals = floats(el.attrib.get("Matrix"))
            if vals is None or len(vals) != 16 or not all(math.isfinite(v) for v in vals):
                raise ReadError(f"{p}: Image-to-Probe Matrix is not 16 finite numbers", reason="bad_plus_config")
            image_to_probe = [vals[0:4], vals[4:8], vals[8:12], vals[12:16]]
            break
    return PlusConfig(path=str(p), spacing_mm=(sy, sx), output_size_rc=size_rc, image_to_probe=image_to_probe)
