"""Helpers for the source tests: run a driver in a thread and poll (never sleep-and-hope); small
synthetic DICOM cine files."""

import threading

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from test_graph import wait_for  # one polling helper for every test

__all__ = ["Running", "us_dataset", "us_region", "wait_for", "write_cine"]


class Running:
    """A source's ``source_frames()`` consumed in a thread; ``frames`` fills as they come."""

    def __init__(self, source):
        self.source = source
        self.frames: list = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for f in self.source.source_frames():
                self.frames.append(f)
        except BaseException as exc:  # kept for the test to assert on
            self.error = exc

    def wait_frames(self, n, timeout_s=10.0):
        wait_for(lambda: len(self.frames) >= n, timeout_s, f"{n} frames (have {len(self.frames)})")
        return self.frames[:n]

    def stop(self):
        self.source.close()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "source did not stop"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def us_region(r0, c0, r1, c1, delta_cm, data_type=1):
    """A SequenceOfUltrasoundRegions item: half-open (r0, c0, r1, c1), square pixels of ``delta_cm``;
    data type 1 = tissue (B-mode), 3 = colour flow."""
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, data_type, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = c0, r0, c1 - 1, r1 - 1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
    r.PhysicalDeltaX = r.PhysicalDeltaY = delta_cm
    return r


def us_dataset(ts=ExplicitVRLittleEndian) -> Dataset:
    """An empty ultrasound multi-frame data set with its file meta (new UIDs) in transfer syntax ``ts``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    return ds


def write_cine(path, n=6, rows=40, cols=50, regions=(), frame_time_ms=25.0, ts=ExplicitVRLittleEndian,
               pixel_bytes=None):
    """A small multi-frame US file; frame k is filled with grey level 10 * k (+ column ramp)."""
    ds = us_dataset(ts)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
    if regions:
        ds.SequenceOfUltrasoundRegions = Sequence(list(regions))
    frames = np.stack([np.full((rows, cols), 10 * k, np.uint8) + np.arange(cols, dtype=np.uint8) for k in range(n)])
    ds.PixelData = frames.tobytes() if pixel_bytes is None else pixel_bytes
    ds.save_as(path, enforce_file_format=True)
    return frames
