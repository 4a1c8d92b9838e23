"""Format dispatch and spacing resolution behind :func:`mmstream.io.read_frames`."""

from __future__ import annotations

import os
from collections.abc import Iterator

from mmstream.errors import InputError, ReadError, SpacingError

from . import dicom, images, metaimage
from ._common import DEFAULT_MAX_PIXELS, ImageFrame, check_file, read_error, validate_spacing
from ._opened import OpenedFile
from .plus_config import load_plus_config


def _detect(path) -> tuple[str, object]:
    p = check_file(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(256)
    except OSError as exc:
        raise read_error(p, f"cannot read file ({exc.strerror or exc})", "unreadable") from exc
    if dicom.sniff(head):
        return "dicom", p
    kind = images.sniff(head)
    if kind is not None:
        return "image", p
    ext = "".join(p.suffixes[-1:]).lower()
    if ext in metaimage.EXTENSIONS:
        if metaimage.sniff(head):
            return "metaimage", p
        raise read_error(p, f"file has a {ext} extension but does not start with a MetaImage header",
                         "unknown_format")
    if ext in dicom.EXTENSIONS and dicom.sniff_no_preamble(head):
        return "dicom", p
    if ext in images.EXTENSIONS or ext in dicom.EXTENSIONS:
        raise read_error(p, f"file has a {ext} extension but not the matching file signature "
                         "(corrupt or not that format)", "unknown_format")
    raise read_error(p, "unknown image format (supported: PNG, JPEG, TIFF, BMP, DICOM, MetaImage .mha/.mhd)",
                     "unknown_format")


def _check_max_pixels(max_pixels) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise InputError(f"max_pixels must be a positive int, got {max_pixels!r}")
    return max_pixels


def open_file(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedFile:
    """Validate the header of any supported file and return its lazy frame source."""
    max_pixels = _check_max_pixels(max_pixels)
    kind, p = _detect(path)
    if kind == "dicom":
        return dicom.open_dicom(p, max_pixels=max_pixels)
    if kind == "image":
        return images.open_image(p, max_pixels=max_pixels)
    return metaimage.open_metaimage(p, max_pixels=max_pixels)


def count_frames(path) -> int:
    """Number of frames in ``path`` from its header alone (no pixel decoding).

    Raises
    ------
    ReadError
        The file is missing, empty, of unknown format or has a malformed header.
    """
    kind, p = _detect(path)
    if kind == "metaimage":
        return metaimage.count_frames(p)
    if kind == "image":
        return images.count_frames(p)
    return dicom.count_frames(p)


def read_frames(
    path: str | os.PathLike,
    *,
    spacing_mm: tuple[float, float] | None = None,
    plus_config: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict_spacing: bool = False,
) -> Iterator[ImageFrame]:
    """Read the 2-D grey frames of an image file, lazily.

    The header is parsed and validated when this function is called (so a bad file raises here);
    pixels are decoded one frame at a time as the iterator is consumed.

    Parameters
    ----------
    path : str or PathLike
        PNG, JPEG, TIFF (multi-page = frames), BMP, DICOM (single/multi-frame, compressed), or
        MetaImage ``.mha``/``.mhd`` (2-D, or 3-D = stack of frames, e.g. PLUS ``.igs.mha``).
    spacing_mm : (float, float), optional
        ``(row_mm, col_mm)`` overriding whatever the file says; ``spacing_source == "config"``.
    plus_config : str or PathLike, optional
        PLUS config XML whose ``OutputImageSpacingMmPerPixel`` gives the spacing
        (``spacing_source == "plus_config"``) and whose Image-to-Probe transform goes to
        ``meta["image_to_probe"]``; its ``OutputImageSizePixel`` must match the frames.
        Ignored for spacing when ``spacing_mm`` is given.
    max_pixels : int
        Largest accepted frame (rows * cols), checked from the header before decoding.
    strict_spacing : bool
        If True, raise :class:`~mmstream.errors.SpacingError` up front when the spacing cannot be
        determined (reason e.g. ``"ambiguous_regions"``, ``"no_spacing"``). If False (default) such
        frames come back with ``spacing_mm=None``, ``spacing_source="unknown"`` and the reason in
        ``meta["spacing_error"]``; :meth:`ImageFrame.require_spacing` raises it later when needed.

    Yields
    ------
    ImageFrame
        ``image`` is ``(rows, cols)`` uint8; ``meta`` holds ``source``, ``format``, ``n_frames`` and
        format-specific JSON-serialisable extras.

    Raises
    ------
    ReadError
        With ``reason`` in ``not_found, not_a_file, empty_file, unreadable, unknown_format, bad_header,
        truncated, corrupt, size_mismatch, too_large, empty_image, path_traversal, no_pixel_data,
        unsupported, unsupported_element_type, unsupported_dtype, unsupported_bit_depth,
        unsupported_layout, invalid_spacing, bad_plus_config``.
    SpacingError
        Invalid caller/config spacing, config size mismatch, or (``strict_spacing``) unknown spacing.
    """
    opened = open_file(path, max_pixels=max_pixels)
    base = dict(opened.meta)
    spacing, source = opened.spacing_mm, opened.spacing_source
    if spacing_mm is not None or plus_config is not None:
        file_error = base.pop("spacing_error", None)
        base.pop("spacing_detail", None)
        if spacing is not None:
            base["file_spacing_mm"] = list(spacing)
            base["file_spacing_source"] = source
        elif file_error is not None:
            base["file_spacing_error"] = file_error
    if plus_config is not None:
        cfg = load_plus_config(plus_config)
        base["plus_config"] = cfg.path
        if cfg.image_to_probe is not None:
            base["image_to_probe"] = cfg.image_to_probe
        if cfg.output_size_rc is not None and opened.shape is not None and cfg.output_size_rc != opened.shape:
            raise SpacingError(
                f"{opened.path}: PLUS config {cfg.path} describes {cfg.output_size_rc[0]} x {cfg.output_size_rc[1]} "
                f"images (rows x cols), the file holds {opened.shape[0]} x {opened.shape[1]}",
                reason="config_mismatch",
            )
        if spacing_mm is None:
            spacing, source = cfg.spacing_mm, "plus_config"
    if spacing_mm is not None:
        spacing, source = validate_spacing(spacing_mm, what=f"{opened.path}: spacing_mm"), "config"
    if spacing is None and strict_spacing:
        raise SpacingError(
            f"{opened.path}: pixel spacing unknown ({base.get('spacing_detail', 'no spacing in the file')})",
            reason=str(base.get("spacing_error", "no_spacing")),
        )
    return _frames(opened, base, spacing, source)


def _frames(opened: OpenedFile, base: dict, spacing, source) -> Iterator[ImageFrame]:
    expected = opened.shape
    for raw in opened.frames():
        shape = (int(raw.image.shape[0]), int(raw.image.shape[1]))
        if expected is not None and shape != expected:
            raise ReadError(f"{opened.path}: frame {raw.index} decoded as {shape}, header says {expected}",
                            reason="size_mismatch")
        meta = dict(base)
        meta.update(raw.meta)
        yield ImageFrame(image=raw.image, spacing_mm=spacing, spacing_source=source, index=raw.index,
                         t_s=raw.t_s, meta=meta)
