"""The volume sources a configuration asks for (``[volumes]``), started and stopped together.

Inside the service (:class:`mmstream.service.Service`) volumes go to the graph's ingest endpoint
and events to its event bus; standalone (``mmstream volumes scp|watch``) volumes go to the
configured ingest endpoint of a running service and events to the log.
"""

from mmstream.config import VolumesSection
from mmstream.errors import ConfigError

from .deid import Pseudonymizer
from .outlet import Outlet
from .scp import ScpSettings, StorageScp
from .watch import FolderWatcher, WatchSettings

_MB = 1024 * 1024


class VolumeSources:
    """SCP and/or watch folder sharing one :class:`Outlet` and one pseudonym table."""

    def __init__(self, section: VolumesSection, ingest_endpoint: str | None, events_endpoint: str | None = None,
                 *, scp: bool | None = None, watch: bool | None = None):  # fmt: skip
        self.section = section
        self.want_scp = section.scp.enabled if scp is None else scp
        self.want_watch = section.watch.enabled if watch is None else watch
        self.outlet = Outlet(ingest_endpoint, events_endpoint)
        self.deid: Pseudonymizer | None = None
        self.scp: StorageScp | None = None
        self.watcher: FolderWatcher | None = None

    @property
    def active(self) -> bool:
        return self.want_scp or self.want_watch

    def start(self) -> "VolumeSources":
        sec = self.section
        self.outlet.start()
        try:
            if sec.deid.enabled:
                self.deid = Pseudonymizer(sec.deid.mapping_db, sec.deid.prefix)
            if self.want_scp:
                s = sec.scp
                self.scp = StorageScp(ScpSettings(
                    store_dir=s.store_dir, ae_title=s.ae_title, host=s.host, port=s.port,
                    allowed_calling_aets=tuple(s.allowed_calling_aets), max_object_bytes=int(s.max_object_mb * _MB),
                    idle_s=s.series_idle_s, assemble_on_release=s.assemble_on_release, max_voxels=sec.max_voxels,
                    max_associations=s.max_associations,
                ), self.outlet, self.deid).start()  # fmt: skip
            if self.want_watch:
                w = sec.watch
                if not w.folder.is_dir():  # never a local folder created where a share should be mounted
                    raise ConfigError(f"volumes.watch.folder {w.folder} is not an existing directory (create it, or "
                                      "mount the share, first)")  # fmt: skip
                self.watcher = FolderWatcher(WatchSettings(
                    folder=w.folder, poll_s=w.poll_s, stable_polls=w.stable_polls, idle_s=w.series_idle_s,
                    max_file_bytes=int(w.max_file_mb * _MB), max_voxels=sec.max_voxels,
                ), self.outlet, self.deid)  # fmt: skip
                self.watcher.start()
        except BaseException:
            self.stop()
            raise
        return self

    def status(self) -> dict:
        out = self.outlet.status()
        if self.scp is not None:
            out["scp"] = {"port": self.scp.port, "pending_series": len(self.scp.collector.pending())}
        if self.watcher is not None:
            out["watch"] = {"folder": str(self.section.watch.folder), "pending_series": len(self.watcher.collector.pending())}
        return out

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.outlet.stop()
        if self.deid is not None:
            self.deid.close()
