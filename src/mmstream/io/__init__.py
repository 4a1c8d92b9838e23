"""File readers: 2-D grey frames with pixel spacing from PNG/JPEG/TIFF/BMP, DICOM and MetaImage.

Public API
----------
:class:`ImageFrame`
    One frame: ``image`` (rows, cols) uint8, ``spacing_mm`` (row_mm, col_mm) or None,
    ``spacing_source``, ``index``, ``t_s``, ``meta``.
:func:`read_frames`
    Lazy iterator of :class:`ImageFrame` (header validated at call time).
:func:`count_frames`
    Frame count from the header alone.

Every failure raises :class:`mmstream.errors.ReadError` or :class:`mmstream.errors.SpacingError`
with a message naming the file and a short ``reason``.
"""

from ._common import DEFAULT_MAX_PIXELS, SPACING_SOURCES, ImageFrame, rgb_to_grey, to_grey_u8
from .reader import count_frames, read_frames

__all__ = ["DEFAULT_MAX_PIXELS", "SPACING_SOURCES", "ImageFrame", "count_frames", "read_frames", "rgb_to_grey", "to_grey_u8"]
