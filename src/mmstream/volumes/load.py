"""``load_volume(path)``: any supported file, or a folder of DICOM files, as a :class:`LoadedVolume`."""

from collections import defaultdict
from pathlib import Path

from mmstream.errors import InputError, ReadError
from mmstream.io.dicom import sniff, sniff_no_preamble

from .dicom_series import load_dicom_series, read_dataset
from .files import DEFAULT_MAX_VOXELS, file_format, load_image_file
from .model import LoadedVolume


def dicom_files_by_series(folder: Path) -> dict[str, list[Path]]:
    """DICOM files directly in ``folder`` grouped by SeriesInstanceUID (unreadable files skipped)."""
    import pydicom

    groups: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and file_format(p) == "dicom":
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            except Exception:  # noqa: BLE001 - a stray unreadable file is skipped here; load reports it
                continue
            groups[str(ds.get("SeriesInstanceUID", ""))].append(p)
    return dict(groups)


def load_volume(path: Path, *, series_uid: str | None = None, index_4d: int | None = None,
                max_voxels: int = DEFAULT_MAX_VOXELS) -> LoadedVolume:  # fmt: skip
    """Load a NIfTI/MetaImage/NRRD file, one DICOM file, or a folder holding one DICOM series.

    A folder with several series needs ``series_uid``. Raises InputError or ReadError with a reason.
    """
    path = Path(path)
    if path.is_dir():
        groups = dicom_files_by_series(path)
        if series_uid is not None:
            if series_uid not in groups:
                raise InputError(f"{path}: no DICOM series {series_uid} (the folder holds {len(groups)}: "
                                 f"{', '.join(sorted(groups)) or 'none'})", reason="series_count")  # fmt: skip
            groups = {series_uid: groups[series_uid]}
        if len(groups) != 1:
            raise InputError(f"{path}: {len(groups)} DICOM series found; give exactly one (series_uid, --series-uid)",
                             reason="series_count")  # fmt: skip
        return load_dicom_series(next(iter(groups.values())), max_voxels=max_voxels)
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder", reason="not_found")
    fmt = file_format(path)
    if fmt == "dicom":
        with open(path, "rb") as fh:
            head = fh.read(132)
        if not head:
            raise ReadError(f"{path.name}: empty file", reason="empty_file")
        if not (sniff(head) or sniff_no_preamble(head)):  # e.g. a text file named .dcm
            raise ReadError(f"{path.name}: not a DICOM file (no 'DICM' marker at byte 128)", reason="unknown_format")
        read_dataset(path)  # a clear error for an unreadable file before series logic
        return load_dicom_series([path], max_voxels=max_voxels)
    if fmt is None:
        raise ReadError(f"{path.name}: not a NIfTI, MetaImage, NRRD or DICOM file", reason="unknown_format")
    return load_image_file(path, index_4d=index_4d, max_voxels=max_voxels)
