"""DICOM cine source: a multi-frame ultrasound file streamed frame by frame.

Decoding is :mod:`mmstream.io.dicom` (pydicom 3 + pylibjpeg: JPEG baseline/extended/lossless, RLE,
JPEG 2000, native; YBR and RGB -> grey with the BT.601 luma, PALETTE COLOR through its LUT; frame
times from FrameTimeVector, FrameTime or CineRate, relative to the first frame). This driver adds:

* **B-mode region**: spacing from ``SequenceOfUltrasoundRegions``; the frame is cropped to the
  B-mode region when there is exactly one (``crop_to_region``), or to B-mode region number
  ``region_index`` (0-based, among the B-mode regions) when there are several. B-mode regions with
  different spacings are refused (``SpacingError("ambiguous_regions")``) unless the config gives the
  spacing: mmstream does not guess.
* **timing**: the file's frame times; a file without usable timing is paced at ``fps`` (see
  :class:`~mmstream_drivers.filesource.FileSequenceSource`).
* ``realtime`` (paced by frame times) or as fast as the service's ingest takes frames; ``loop``.
"""

from collections.abc import Iterator

from mmstream.errors import ReadError, SpacingError
from mmstream.io import DEFAULT_MAX_PIXELS, ImageFrame, read_frames
from mmstream.source import SourceFrame
from mmstream_drivers.filesource import FileSequenceSource
from mmstream_drivers.options import config_spacing, option_errors

_META_TEXT = ("modality", "manufacturer", "transfer_syntax", "photometric", "frame_time_source")


class DicomCineSource(FileSequenceSource):
    """Stream a (multi-frame) DICOM ultrasound file.

    Parameters
    ----------
    path : str
        The DICOM file.
    fps, realtime, loop, max_frame_pixels
        See :class:`~mmstream_drivers.filesource.FileSequenceSource`.
    spacing_row_mm, spacing_col_mm : float, optional
        Spacing from the config (overrides the file; ``spacing_source = "config"``).
    crop_to_region : bool
        Crop to the B-mode region (default True).
    region_index : int
        Which B-mode region to use when the file has several (-1: none chosen).
    """

    name = "dicom"

    def __init__(
        self,
        path: str,
        *,
        fps: float = 30.0,
        realtime: bool = True,
        loop: bool = False,
        max_frame_pixels: int = DEFAULT_MAX_PIXELS,
        spacing_row_mm: float | None = None,
        spacing_col_mm: float | None = None,
        crop_to_region: bool = True,
        region_index: int = -1,
    ):
        with option_errors(self.name):
            self.spacing_mm = config_spacing(spacing_row_mm, spacing_col_mm)
            self.crop_to_region = bool(crop_to_region)
            self.region_index = int(region_index)
        self.region_rc: tuple[int, int, int, int] | None = None
        super().__init__(path, fps=fps, realtime=realtime, loop=loop, max_frame_pixels=max_frame_pixels)

    def open(self) -> Iterator[ImageFrame]:
        frames = read_frames(self.path, spacing_mm=self.spacing_mm, max_pixels=self.max_frame_pixels)
        try:
            first = next(frames, None)  # header checked by read_frames; decoding frame 0 checks the pixels
        except ReadError as exc:
            if isinstance(exc.__cause__, NotImplementedError):  # pydicom has no decoder for the syntax
                raise ReadError(f"{self.path}: transfer syntax not supported ({exc.__cause__})",
                                reason="unsupported_transfer_syntax") from exc
            raise
        if first is None:
            return iter(())
        meta = first.meta
        if first.spacing_mm is None and meta.get("spacing_error") == "ambiguous_regions":
            raise SpacingError(f"{self.path}: {meta.get('spacing_detail')}; give spacing_row_mm/spacing_col_mm "
                               "in the source options", reason="ambiguous_regions")
        self.region_rc = self._region(meta, first.shape)
        return _chain(first, frames)

    def _region(self, meta, shape) -> tuple[int, int, int, int] | None:
        regions = [r for r in meta.get("us_regions") or () if r.get("bmode")]
        if not self.crop_to_region or not regions:
            return None
        if self.region_index >= 0:
            if self.region_index >= len(regions):
                raise SpacingError(f"{self.path}: region_index {self.region_index} but the file has "
                                   f"{len(regions)} B-mode regions", reason="no_such_region")
            chosen = regions[self.region_index]
        elif len(regions) == 1:
            chosen = regions[0]
        else:
            return None  # several same-spacing views (dual B-mode): keep the whole frame
        if chosen.get("problem") is not None or chosen.get("region_rc") is None:
            return None  # an unusable region is not a crop either (spacing is unknown, see the event)
        r0, c0, r1, c1 = (int(v) for v in chosen["region_rc"])
        return (r0, c0, min(r1, shape[0]), min(c1, shape[1]))

    def convert(self, frame: ImageFrame, t_device_s: float | None) -> SourceFrame:
        image = frame.image
        if self.region_rc is not None:
            r0, c0, r1, c1 = self.region_rc
            image = image[r0:r1, c0:c1]
        meta = frame.meta
        text = {k: str(meta[k]) for k in _META_TEXT if meta.get(k) is not None}
        annotations = {"file_frame": float(frame.index)}
        if self.region_rc is not None:
            annotations.update(region_row0=float(self.region_rc[0]), region_col0=float(self.region_rc[1]))
        return SourceFrame(
            image=image,
            t_device_s=t_device_s,
            spacing_mm=frame.spacing_mm,
            spacing_source=frame.spacing_source,
            annotations=annotations,
            metadata=text,
        )


def _chain(first: ImageFrame, rest: Iterator[ImageFrame]) -> Iterator[ImageFrame]:
    yield first
    yield from rest


__all__ = ["DicomCineSource"]
