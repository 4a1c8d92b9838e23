"""MetaImage sequence source: PLUS Toolkit ``.igs.mha`` / ``.mhd`` files streamed frame by frame.

Reading is :mod:`mmstream.io.metaimage` (strict header, zlib inflated one frame at a time, per-frame
``Seq_FrameNNNN_*`` fields). This driver keeps, per frame:

* ``t_device_s``: the raw PLUS ``Timestamp`` (seconds, PLUS's clock); a frame without one is sent
  with ``t_device_s = None`` (unknown, not interpolated). A file without them (its first frame has
  none, e.g. an ITK-written stack) or whose Timestamps do not increase is timed at ``fps``, as
  :class:`~mmstream_drivers.filesource.FileSequenceSource` describes;
* ``transforms``: every ``<From>To<To>Transform`` whose status is not ``INVALID``, named
  ``<from>_to_<to>`` (``ProbeToTracker`` -> ``probe_to_tracker``), 4x4 row-major; the PLUS config's
  Image-to-Probe calibration as ``image_to_probe`` unless the frame carries its own;
* ``annotations``: ``frame_number``, ``unfiltered_timestamp_s`` and numeric custom fields;
  ``metadata``: text custom fields.

Frames whose ``ImageStatus`` is ``INVALID`` (PLUS: no image was acquired) are skipped and counted.
Spacing: ``spacing_row_mm``/``spacing_col_mm`` options, else ``plus_config`` (the XML's
``OutputImageSpacingMmPerPixel``), else the file's ``ElementSpacing``; PLUS's placeholder ``1 1``
is reported as unknown.
"""

from collections.abc import Iterator

from mmstream.io import DEFAULT_MAX_PIXELS, ImageFrame, read_frames
from mmstream.source import SourceFrame
from mmstream_drivers.fields import sort_fields
from mmstream_drivers.filesource import FileSequenceSource
from mmstream_drivers.options import config_spacing, option_errors


class MetaImageSequenceSource(FileSequenceSource):
    """Stream a PLUS MetaImage sequence.

    Parameters
    ----------
    path : str
        ``.mha`` or ``.mhd`` (with its data file beside it).
    plus_config : str, optional
        PLUS configuration XML giving the spacing and the Image-to-Probe calibration.
    spacing_row_mm, spacing_col_mm : float, optional
        Spacing from the config (overrides file and PLUS config).
    fps, realtime, loop, max_frame_pixels
        See :class:`~mmstream_drivers.filesource.FileSequenceSource`.
    """

    name = "mha"

    def __init__(
        self,
        path: str,
        *,
        plus_config: str | None = None,
        spacing_row_mm: float | None = None,
        spacing_col_mm: float | None = None,
        fps: float = 30.0,
        realtime: bool = True,
        loop: bool = False,
        max_frame_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.plus_config = plus_config or None
        with option_errors(self.name):
            self.spacing_mm = config_spacing(spacing_row_mm, spacing_col_mm)
        super().__init__(path, fps=fps, realtime=realtime, loop=loop, max_frame_pixels=max_frame_pixels)

    def open(self) -> Iterator[ImageFrame]:
        return read_frames(self.path, spacing_mm=self.spacing_mm, plus_config=self.plus_config,
                           max_pixels=self.max_frame_pixels)

    def convert(self, frame: ImageFrame, t_device_s: float | None) -> SourceFrame | None:
        meta = frame.meta
        if str(meta.get("image_status", "OK")).upper() == "INVALID":
            self.health.error("invalid_image", f"{self.path}: frame {frame.index} has ImageStatus INVALID; skipped",
                              level="warning")
            return None
        raw: dict[str, object] = {f"{name}Transform": m for name, m in (meta.get("transforms") or {}).items()}
        raw.update({f"{name}TransformStatus": s for name, s in (meta.get("transform_status") or {}).items()})
        raw.update(meta.get("frame_fields") or {})
        if "frame_number" in meta:
            raw["frame_number"] = meta["frame_number"]
        if "unfiltered_timestamp_s" in meta:
            raw["unfiltered_timestamp_s"] = meta["unfiltered_timestamp_s"]
        fields = sort_fields(raw)
        if "image_to_probe" not in fields.transforms and meta.get("image_to_probe") is not None:
            fields.add_transform("image_to_probe", tuple(v for row in meta["image_to_probe"] for v in row))
        for name in meta.get("invalid_fields") or ():
            self.health.error("invalid_field", f"{self.path}: frame {frame.index}: field {name} is malformed; "
                              "left out", level="warning")
        if fields.invalid_transforms:
            self.health.count("invalid_transforms", fields.invalid_transforms)
        if fields.dropped:
            self.health.count("fields_dropped", fields.dropped)
        return SourceFrame(
            image=frame.image,
            t_device_s=t_device_s,
            spacing_mm=frame.spacing_mm,
            spacing_source=frame.spacing_source,
            transforms=fields.transforms,
            annotations=fields.annotations,
            metadata=fields.metadata,
        )


__all__ = ["MetaImageSequenceSource"]
