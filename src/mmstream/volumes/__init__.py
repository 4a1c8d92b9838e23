"""Scanner-exported volumes (MRI, PET, CT) in one canonical geometry: LPS millimetres, voxels (K, J, I).

- :func:`load_volume`: NIfTI, MetaImage, NRRD, one DICOM file or a folder with one DICOM series.
- :func:`assemble`: pydicom datasets of one series (single-frame or enhanced multi-frame) -> volume.
- :class:`StorageScp`, :class:`FolderWatcher`: sources that push ``volume`` messages to the service.
- :class:`Pseudonymizer`: optional de-identification with a local SQLite mapping table.

See ``docs/volumes.md``.
"""

from .deid import Pseudonymizer
from .dicom_series import assemble, load_dicom_series
from .load import load_volume
from .model import LoadedVolume
from .outlet import Outlet
from .scp import ScpSettings, StorageScp
from .watch import FolderWatcher, WatchSettings

__all__ = [
    "LoadedVolume", "load_volume", "assemble", "load_dicom_series", "Pseudonymizer", "Outlet", "StorageScp",
    "ScpSettings", "FolderWatcher", "WatchSettings",
]  # fmt: skip
