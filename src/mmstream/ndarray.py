"""NumPy arrays as pydantic fields, kept out of per-element validation.

Validation checks shape, dtype and finiteness once (no per-element model), JSON serialisation writes
nested lists and JSON input is turned back into a read-only array.

- ``Points``: float64 array of shape (K, 2) holding (row, col) pairs in pixels (contours, polylines).
- ``Counts``: int64 array of shape (N,) (histograms).
"""

from typing import Annotated

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema


def _to_points(value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        arr = np.zeros((0, 2), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"expected (row, col) points of shape (K, 2), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("points must be finite")
    arr.setflags(write=False)
    return arr


def _to_counts(value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"expected a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError("counts must be >= 0")
    arr.setflags(write=False)
    return arr


def _array_field(validator, serialize, schema: dict):
    return Annotated[
        np.ndarray,
        PlainValidator(validator),
        PlainSerializer(serialize, when_used="json"),
        WithJsonSchema(schema),
    ]


Points = _array_field(
    _to_points,
    lambda a: np.round(a, 3).tolist(),
    {
        "type": "array",
        "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "description": "(row, col) points in pixels, shape (K, 2)",
    },
)
Counts = _array_field(
    _to_counts,
    lambda a: a.tolist(),
    {"type": "array", "items": {"type": "integer", "minimum": 0}},
)
