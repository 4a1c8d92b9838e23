"""Watch folder: NIfTI, MetaImage, NRRD and DICOM files dropped into a folder become volumes.

The folder is polled every ``poll_s`` (no inotify: it also works on network shares). A file is
complete when its size and modification time have not changed for ``stable_polls`` polls. Then:

* NIfTI / MetaImage / NRRD: loaded (:func:`~mmstream.volumes.files.load_image_file`), sent, and
  moved to ``processed/`` (a ``.mhd``/``.nhdr`` header with its data file, which must be complete too).
* DICOM: checked, de-identified when configured, moved to ``processed/<SeriesInstanceUID>/`` and
  collected; the series is assembled once it has been idle for ``idle_s`` (as in the SCP).
* Anything else, or a file that fails to load or to be sent: moved to ``rejected/``, counted under
  ``rejected[reason]`` and announced as an event. Nothing is deleted.
* Not a regular file (FIFO, device, socket, or a symlink to one): never opened (reading it could
  block the watcher or never end), left in place, counted and announced once as ``not_regular_file``.

Data files named by a header (``.raw``, ``.zraw``, ``.img``, ...) wait for their header.
"""

import hashlib
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from mmstream.errors import MmstreamError
from mmstream.privacy import redact_paths

from .collector import SeriesCollector
from .deid import Pseudonymizer
from .dicom_series import check_instance, read_dataset
from .files import file_format, load_image_file
from .outlet import Outlet

PROCESSED, REJECTED = "processed", "rejected"
COMPANION_SUFFIXES = (".raw", ".zraw", ".img", ".gz.raw", ".raw.gz")


@dataclass(frozen=True)
class WatchSettings:
    folder: Path
    poll_s: float = 1.0
    stable_polls: int = 2
    idle_s: float = 5.0
    max_file_bytes: int = 2 * 1024**3
    max_voxels: int = 64 * 1024 * 1024


def companion(header: Path) -> Path | None:
    """The data file a ``.mhd`` (``ElementDataFile``) or ``.nhdr`` (``data file:``) header names, if any."""
    name = header.name.lower()
    if not name.endswith((".mhd", ".nhdr")):
        return None
    try:
        text = header.read_text(errors="replace")[:65536]
    except OSError:
        return None
    pattern = r"^ElementDataFile\s*=\s*(.+)$" if name.endswith(".mhd") else r"^data ?file\s*:\s*(.+)$"
    m = re.search(pattern, text, flags=re.M | re.I)
    if not m or m.group(1).strip() in ("LOCAL", "") or m.group(1).strip().upper().startswith("LIST"):
        return None
    return header.parent / m.group(1).strip()


def _tag(path: Path) -> str:
    """How events name a file: a hash of its name and its suffix (``3fa2c1d0.nii``), since exported
    file names often carry the patient's name."""
    name = path.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
    return hashlib.sha256(path.name.encode()).hexdigest()[:8] + suffix


class FolderWatcher(threading.Thread):
    """Polls ``settings.folder`` until :meth:`stop`; ``poll_once()`` is the unit of work (tests call it)."""

    def __init__(self, settings: WatchSettings, outlet: Outlet, pseudonymizer: Pseudonymizer | None = None):
        super().__init__(name="mmstream-volumes-watch", daemon=True)
        self.settings, self.outlet, self.deid = settings, outlet, pseudonymizer
        self.collector = SeriesCollector(self._publish, self._series_failed, idle_s=settings.idle_s,
                                         max_voxels=settings.max_voxels)  # fmt: skip
        self._seen: dict[Path, tuple[int, int, int]] = {}  # path -> (size, mtime_ns, polls unchanged)
        self._irregular: set[Path] = set()  # non-regular files already announced
        self._stop_evt = threading.Event()

    def _publish(self, vol) -> None:
        vid = self.outlet.volume(vol)
        self.outlet.event("info", "volume_assembled", f"{vol.modality} volume {vid} from the watch folder")

    def _series_failed(self, series_uid: str, exc: MmstreamError) -> None:
        why = self._scrub(str(exc))
        self.outlet.event("error", f"series_{exc.reason}", f"series not assembled or not sent: {why}", reject=True)

    def _scrub(self, text: str) -> str:
        """``text`` without the paths below the watched folder: folder and file names often carry the
        patient's name, and events leave the machine."""
        for root in sorted({str(self.settings.folder), str(self.settings.folder.resolve())}, key=len, reverse=True):
            text = re.sub(re.escape(root) + r"[^\s'\"]*", "<path>", text)
        return text

    def _stable(self, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            self._seen.pop(path, None)
            return False
        prev = self._seen.get(path)
        polls = prev[2] + 1 if prev and prev[:2] == (st.st_size, st.st_mtime_ns) else 0
        self._seen[path] = (st.st_size, st.st_mtime_ns, polls)
        return polls >= self.settings.stable_polls

    def _move(self, path: Path, sub: str, name: str | None = None) -> Path:
        dest_dir = self.settings.folder / sub
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / (name or path.name)
        n = 1
        while dest.exists():
            dest = dest_dir / f"{dest.stem}-{n}{dest.suffix}"
            n += 1
        shutil.move(str(path), dest)
        self._seen.pop(path, None)
        return dest

    def _reject(self, paths: list[Path], exc: MmstreamError, data: Path | None = None) -> None:
        """Move the files to ``rejected/`` with a ``<name>.why.txt`` note. The event names the file by
        a hash only, and neither it nor its ``data`` file by name: exported file and folder names
        often carry the patient's name."""
        moved = [self._move(p, REJECTED) for p in paths if p.exists()]
        why = self._scrub(str(exc))
        for name in [p.name for p in (paths[0], data) if p is not None]:
            why = why.replace(name, "<file>")
        why = redact_paths(why, ())  # the data file's name as the header gives it, folders included
        if moved:
            moved[0].with_name(moved[0].name + ".why.txt").write_text(f"{exc.reason}: {exc}\n")
        self.outlet.event("warning", exc.reason, f"file {_tag(paths[0])} moved to {REJECTED}/: {why}", reject=True)

    def _candidates(self) -> list[Path]:
        """Regular files (or symlinks to one) below the folder, not descending into ``processed/``,
        ``rejected/`` or hidden folders. Other files are refused once each (``not_regular_file``)."""
        root = self.settings.folder
        out, irregular = [], set()
        for dirpath, dirnames, filenames in os.walk(root):
            top = Path(dirpath) == root
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (top and d in (PROCESSED, REJECTED)))
            for path in (Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")):
                try:
                    regular = stat.S_ISREG(path.stat().st_mode)
                except OSError:  # gone, or a dangling symlink: nothing to read (yet)
                    continue
                if regular:
                    out.append(path)
                else:
                    irregular.add(path)
        for path in sorted(irregular - self._irregular):
            self.outlet.event("warning", "not_regular_file", f"file {_tag(path)} is not a regular file (FIFO, device, "
                              "socket or a link to one): not read, left in place", reject=True)  # fmt: skip
        self._irregular = irregular
        return out

    def poll_once(self) -> None:
        """One scan: handle every file that has become stable, then assemble idle DICOM series."""
        files = self._candidates()
        referenced = {c for p in files if (c := companion(p)) is not None}
        stable = {p: self._stable(p) for p in files}
        for path in files:
            if path in referenced or path.name.lower().endswith(COMPANION_SUFFIXES):
                continue  # moved with its header
            data = companion(path)
            inside = data is not None and data.resolve().is_relative_to(path.parent.resolve())
            if not stable[path] or (inside and not stable.get(data, data in self._irregular)):
                continue  # a data file outside the folder, or not regular, is not waited for: the loader refuses it
            self._handle(path, data)
        due = self.collector.due()
        if due:
            self.collector.flush(due)

    def _handle(self, path: Path, data: Path | None) -> None:
        inside = data is not None and data.resolve().is_relative_to(self.settings.folder.resolve())
        group = [path] + ([data] if inside and data.is_file() else [])  # only regular files inside the folder move
        try:
            if path.stat().st_size > self.settings.max_file_bytes:
                raise MmstreamError(f"{path.stat().st_size} bytes exceed {self.settings.max_file_bytes}", reason="too_large")
            fmt = file_format(path)
            if fmt == "dicom":
                self._take_dicom(path)
                return
            if fmt is None:
                raise MmstreamError("not a NIfTI, MetaImage, NRRD or DICOM file", reason="unknown_format")
            self.outlet.volume(load_image_file(path, max_voxels=self.settings.max_voxels))
        except MmstreamError as exc:
            self._reject(group, exc, data)
            return
        except Exception as exc:  # an unexpected failure on one file must not stop the watcher
            self._reject(group, MmstreamError(f"{type(exc).__name__}: {exc}", reason="internal_error"), data)
            return
        self.outlet.count("files_loaded")
        for p in group:
            self._move(p, PROCESSED)

    def _take_dicom(self, path: Path) -> None:
        ds = read_dataset(path)
        series, sop = check_instance(ds)
        pseudonym = None
        if self.deid is not None:
            pseudonym = self.deid.apply(ds)
            dest = self.settings.folder / PROCESSED / series / f"{sop}.dcm"
            dest.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dest, enforce_file_format=False)
            path.unlink()  # only the de-identified copy is kept
            self._seen.pop(path, None)
        else:
            dest = self._move(path, f"{PROCESSED}/{series}", f"{sop}.dcm")
        self.outlet.count("dicom_files_collected")
        self.collector.add(series, sop, dest, pseudonym)

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # e.g. the folder vanished: report, keep polling
                self.outlet.event("error", "watch_failed", f"{type(exc).__name__}: {self._scrub(str(exc))}", reject=True)
            self._stop_evt.wait(self.settings.poll_s)

    def stop(self) -> None:
        """Stop polling; pending DICOM series are assembled and sent."""
        self._stop_evt.set()
        if self.is_alive():
            self.join(10)
        self.collector.flush()
