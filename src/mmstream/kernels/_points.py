"""Points given to the kernels by a user (a click): checked once, the same way everywhere."""

import numpy as np

from mmstream.errors import InputError


def check_point(point, what: str) -> tuple[float, float]:
    """``point`` as (row, col) floats; InputError unless it is two finite
    numbers (not strings, not booleans)."""
    try:
        if isinstance(point, (str, bytes)) or any(isinstance(v, (str, bytes, bool, np.bool_)) for v in point):
            raise TypeError("not numbers")
        r, c = (float(v) for v in point)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{what} must be a (row, col) pair of numbers, got {point!r}") from exc
    if not (np.isfinite(r) and np.isfinite(c)):
        raise InputError(f"{what} {point!r} is not finite")
    return r, c
