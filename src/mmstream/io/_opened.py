"""The per-format reader contract: open eagerly (validate header), decode frames lazily."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RawFrame:
    """One decoded frame before the dispatcher attaches spacing."""

    index: int
    image: np.ndarray  # (M, N) uint8, C-contiguous
    t_s: float | None = None
    meta: dict[str, object] = field(default_factory=dict)


@dataclass
class OpenedFile:
    """What a format reader knows after parsing the header, before decoding any pixels.

    ``spacing_mm is None`` means the file gives no usable spacing; ``meta["spacing_error"]`` then holds
    the short reason (``"no_spacing"``, ``"ambiguous_regions"``, ...) and ``meta["spacing_detail"]``
    a human sentence.
    """

    path: Path
    format: str
    n_frames: int
    shape: tuple[int, int] | None  # (rows, cols) of every frame when the header says
    spacing_mm: tuple[float, float] | None
    spacing_source: str
    meta: dict[str, object]
    frames: Callable[[], Iterator[RawFrame]]
