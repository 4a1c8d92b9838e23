"""DICOM Storage SCP (pynetdicom): receives series from a scanner or PACS and publishes volumes.

Each accepted instance is checked, stored as ``<store_dir>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(de-identified first when a :class:`~mmstream.volumes.deid.Pseudonymizer` is given) and registered
with a :class:`~mmstream.volumes.collector.SeriesCollector`, which assembles the series into a
volume when the association is released or the series has been idle for ``idle_s``.

Refusals (each counted under ``rejected[reason]`` and announced as an event; the SCP keeps serving):

==========================  =================================================================
reason                      DICOM answer
==========================  =================================================================
``unknown_calling_ae``      association rejected (A-ASSOCIATE-RJ, permanent, calling AE title
                            not recognised) when an allow-list is configured
``too_many_associations``   association rejected (A-ASSOCIATE-RJ, transient, local limit
                            exceeded): ``max_associations`` associations are already open
``association_rejected``    association rejected for another reason pynetdicom gives (the
                            event says its result, source and reason)
``sop_class_not_supported`` presentation context rejected (abstract syntax not supported)
``transfer_syntax_rejected`` presentation context rejected (transfer syntaxes not supported)
``too_large``               C-STORE status 0xA700 (Refused: out of resources)
``corrupt_dataset``         C-STORE status 0xC210 (Cannot understand): the dataset does not decode
``truncated_pixel_data``    C-STORE status 0xC210: pixel data shorter than Rows x Columns x frames
``missing_tags``            C-STORE status 0xA900 (Data set does not match SOP class): a mandatory
                            attribute is absent
``sop_class_mismatch``      C-STORE status 0xA900: the dataset's SOPClassUID differs from the
                            request's
``store_failed``            C-STORE status 0xA701 (out of resources): the file could not be written
==========================  =================================================================
"""

import threading
from dataclasses import dataclass
from pathlib import Path

from mmstream.errors import ConfigError, MmstreamError, ReadError

from .collector import IdleFlusher, SeriesCollector
from .deid import Pseudonymizer
from .dicom_series import check_instance
from .outlet import Outlet

STORAGE_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2", "EnhancedCT": "1.2.840.10008.5.1.4.1.1.2.1",
    "MR": "1.2.840.10008.5.1.4.1.1.4", "EnhancedMR": "1.2.840.10008.5.1.4.1.1.4.1",
    "PET": "1.2.840.10008.5.1.4.1.1.128", "EnhancedPET": "1.2.840.10008.5.1.4.1.1.130",
    "LegacyConvertedEnhancedCT": "1.2.840.10008.5.1.4.1.1.2.2",
    "LegacyConvertedEnhancedMR": "1.2.840.10008.5.1.4.1.1.4.4",
    "LegacyConvertedEnhancedPET": "1.2.840.10008.5.1.4.1.1.128.1",
}  # fmt: skip
# transfer syntaxes pydicom decodes with the installed plugins (pylibjpeg: JPEG, JPEG 2000, RLE)
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
)  # fmt: skip
VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4, -> the reason counted
_REJECTIONS = {(0x01, 0x01, 0x03): "unknown_calling_ae", (0x02, 0x03, 0x02): "too_many_associations"}


@dataclass(frozen=True)
class ScpSettings:
    """What the SCP listens on and accepts. ``allowed_calling_aets`` empty: any calling AE title."""

    store_dir: Path
    ae_title: str = "MMSTREAM"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    max_object_bytes: int = 512 * 1024 * 1024
    idle_s: float = 5.0
    assemble_on_release: bool = True
    max_voxels: int = 64 * 1024 * 1024
    max_associations: int = 10  # open at once (pynetdicom's default); one thread, and one object in memory, each


class StorageScp:
    """A running Storage SCP: ``start()``, ``port`` (the bound port), ``stop()``; counters in ``outlet``."""

    def __init__(self, settings: ScpSettings, outlet: Outlet, pseudonymizer: Pseudonymizer | None = None):
        self.settings = settings
        self.outlet = outlet
        self.deid = pseudonymizer
        self.collector = SeriesCollector(self._publish, self._series_failed, idle_s=settings.idle_s,
                                         max_voxels=settings.max_voxels)  # fmt: skip
        self._flusher = IdleFlusher(self.collector)
        self._server = None
        self._assoc_series: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    # --- outcomes -------------------------------------------------------------------------------------
    def _publish(self, vol) -> None:
        vid = self.outlet.volume(vol)
        self.outlet.event("info", "volume_assembled",
                          f"{vol.modality} volume {vid}: {vol.voxels.shape[0]} slices, spacing {vol.spacing_mm} mm")  # fmt: skip

    def _series_failed(self, series_uid: str, exc: MmstreamError) -> None:
        self.outlet.event("error", f"series_{exc.reason}", f"series not assembled or not sent: {exc}", reject=True)

    def _refuse(self, reason: str, status: int, message: str) -> int:
        self.outlet.event("warning", reason, message, reject=True)
        return status

    # --- pynetdicom handlers ------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        try:
            return self._store(event)
        except Exception as exc:  # a bug must answer a failure status, never kill the association thread
            return self._refuse("internal_error", 0xC211, f"{type(exc).__name__}: {exc}")

    def _store(self, event) -> int:
        raw = event.request.DataSet
        size = raw.getbuffer().nbytes if raw is not None else 0
        if size > self.settings.max_object_bytes:
            return self._refuse("too_large", 0xA700, f"object of {size} bytes over {self.settings.max_object_bytes}")
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            for _ in ds.iterall():  # pydicom decodes lazily: force every element now
                pass
        except Exception as exc:  # pydicom raises many types on corrupt input
            return self._refuse("corrupt_dataset", 0xC210, f"dataset does not decode ({type(exc).__name__})")
        try:
            series, sop = check_instance(ds)
        except ReadError as exc:
            status = 0xC210 if exc.reason == "truncated_pixel_data" else 0xA900
            return self._refuse(exc.reason, status, str(exc))
        if str(ds.SOPClassUID) != str(event.request.AffectedSOPClassUID):
            return self._refuse("sop_class_mismatch", 0xA900, "dataset SOPClassUID differs from the request's")
        pseudonym = self.deid.apply(ds) if self.deid is not None else None
        path = self.settings.store_dir / series / f"{sop}.dcm"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            if pseudonym is None:
                tmp.write_bytes(event.encoded_dataset(include_meta=True))
            else:
                ds.save_as(tmp, enforce_file_format=True)
            tmp.replace(path)
        except OSError as exc:
            return self._refuse("store_failed", 0xA701, f"cannot store the instance: {exc.strerror}")
        self.outlet.count("instances_stored")
        self.collector.add(series, sop, path, pseudonym)
        with self._lock:
            self._assoc_series.setdefault(id(event.assoc), set()).add(series)
        return 0x0000

    def _on_accepted(self, event) -> None:
        """Count rejected presentation contexts; one event per association that had any."""
        self.outlet.count("associations")
        by_reason: dict[str, list[str]] = {}
        for cx in event.assoc.rejected_contexts:
            reason = {0x03: "sop_class_not_supported", 0x04: "transfer_syntax_rejected"}.get(cx.result, "context_rejected")
            by_reason.setdefault(reason, []).append(str(cx.abstract_syntax))
        storage = [cx for cx in event.assoc.accepted_contexts if str(cx.abstract_syntax) != VERIFICATION]
        for reason, uids in by_reason.items():
            # SCUs such as storescu propose every storage class: a warning only when nothing was usable
            self.outlet.event("info" if storage else "warning", reason,
                              f"{len(uids)} presentation context(s) rejected ({reason}), e.g. {', '.join(uids[:3])}; "
                              f"{len(storage)} storage context(s) accepted", reject=True)  # fmt: skip

    def _on_rejected(self, event) -> None:
        """Count an A-ASSOCIATE-RJ by its (result, source, diagnostic), as pynetdicom sent it."""
        rj = event.assoc.acceptor.primitive
        rsd = (rj.result, rj.result_source, rj.diagnostic)
        reason = _REJECTIONS.get(rsd, "association_rejected")
        limit = f"; max_associations is {self.settings.max_associations}" if reason == "too_many_associations" else ""
        self.outlet.event("warning", reason, f"association from calling AE {event.assoc.requestor.ae_title!r} rejected "
                          f"({rj.result_str}, {rj.source_str}: {rj.reason_str}{limit})", reject=True)  # fmt: skip

    def _on_ended(self, event) -> None:
        with self._lock:
            series = self._assoc_series.pop(id(event.assoc), set())
        if series and self.settings.assemble_on_release:
            self.collector.flush(sorted(series))

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> "StorageScp":
        from pynetdicom import AE, evt

        s = self.settings
        s.store_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=s.ae_title)
        for uid in STORAGE_SOP_CLASSES.values():
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        if s.allowed_calling_aets:
            ae.require_calling_aet = list(s.allowed_calling_aets)
        ae.maximum_associations = s.max_associations
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_RELEASED, self._on_ended),
                    (evt.EVT_ABORTED, self._on_ended)]  # fmt: skip
        try:
            self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(f"cannot listen for DICOM on {s.host}:{s.port}: {exc.strerror}") from None
        self._flusher.start()
        return self

    @property
    def port(self) -> int | None:
        """The TCP port listened on (None when stopped)."""
        if self._server is not None:
            self._port = self._server.server_address[1]
        return getattr(self, "_port", None)

    def stop(self) -> None:
        """Stop listening; series still pending are assembled and sent."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._flusher.stop()
        self.collector.flush()
