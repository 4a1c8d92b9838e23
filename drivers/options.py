"""Checking driver options: they come from a TOML config as numbers, strings and booleans."""

from contextlib import contextmanager

from mmstream.errors import ConfigError, SpacingError
from mmstream.io._common import validate_spacing  # the analysis's bounds: a source never sends what it refuses


@contextmanager
def option_errors(driver: str):
    """Turn a wrongly typed option (``int("abc")``, ``"0" >= 0``) into ConfigError naming the driver."""
    try:
        yield
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf), int(1e400)
        raise ConfigError(f"{driver} source: invalid option ({exc})") from exc


def config_spacing(spacing_row_mm, spacing_col_mm) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` from two options given together, None when neither is given."""
    if spacing_row_mm is None and spacing_col_mm is None:
        return None
    if spacing_row_mm is None or spacing_col_mm is None:
        raise SpacingError("give both spacing_row_mm and spacing_col_mm, or neither", reason="invalid_spacing")
    return validate_spacing((spacing_row_mm, spacing_col_mm), what="spacing_row_mm, spacing_col_mm")
