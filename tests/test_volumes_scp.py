"""DICOM Storage SCP against real peers (dcmtk storescu, pynetdicom's SCU): series in, volume
messages out on a real ZeroMQ socket; every refusal answered with the right DICOM status or
rejection, counted and announced, and the SCP keeps serving."""

import logging
import os
import sqlite3
import stat
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage, UltrasoundImageStorage
from test_graph import wait_for
from volume_makers import ENHANCED_MR, make_enhanced, make_series

from mmstream.codec import decode
from mmstream.transport import make_socket
from mmstream.volumes import Outlet, Pseudonymizer, ScpSettings, StorageScp

pytestmark = pytest.mark.timeout(60)
STORESCU = "/usr/bin/storescu"


class Sink:
    """Stands in for the service: PULL sockets for volumes and for events."""

    def __init__(self):
        self.vol = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
        self.ev = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
        self.events = []

    def volume(self, timeout_ms=10000):
        return decode(self.vol.recv(timeout_ms=timeout_ms))

    def reasons(self):
        while (parts := self.ev.try_recv()) is not None:
            self.events.append(decode(parts).header)
        return [e.reason for e in self.events]

    def close(self):
        self.vol.close()
        self.ev.close()


@pytest.fixture()
def scp_factory(tmp_path):
    made = []

    def make(**kw):
        sink = Sink()
        outlet = Outlet(sink.vol.last_endpoint, sink.ev.last_endpoint).start()
        deid = kw.pop("deid", None)
        settings = ScpSettings(store_dir=tmp_path / "store", port=0, **kw)
        scp = StorageScp(settings, outlet, deid).start()
        made.append((scp, outlet, sink))
        return scp, sink

    yield make
    for scp, outlet, sink in made:
        scp.stop()
        outlet.stop()
        sink.close()


def storescu(port, paths, aet="SCANNER"):
    return subprocess.run([STORESCU, "-R", "-aet", aet, "-aec", "MMSTREAM", "127.0.0.1", str(port), *map(str, paths)],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "TCP_NODELAY": "1"})  # fmt: skip


def scu(port, contexts=((MRImageStorage, None),), aet="PYSCU"):
    ae = AE(ae_title=aet)
    for uid, ts in contexts:
        ae.add_requested_context(uid, ts) if ts else ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="MMSTREAM")
    return assoc


def _assert_serves(scp, sink, tmp_path):
    """A good series still goes through after whatever came before."""
    truth = make_series(tmp_path / "good", n=3)
    assert storescu(scp.port, truth["paths"]).returncode == 0
    msg = sink.volume()
    np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])


def test_storescu_series_becomes_one_volume_message(scp_factory, tmp_path):
    scp, sink = scp_factory(allowed_calling_aets=("SCANNER",))
    truth = make_series(tmp_path / "in", n=6, slopes=[1, 2, 1, 1, 3, 1])
    r = storescu(scp.port, truth["paths"])
    assert r.returncode == 0, r.stderr
    msg = sink.volume()
    h = msg.header
    assert msg.topic == f"volume.{h.volume_id}" and h.series_uid == truth["series_uid"] and h.rescaled
    np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])
    np.testing.assert_allclose(h.origin_lps_mm, truth["origin"], atol=1e-9)
    np.testing.assert_allclose(np.reshape(h.direction_lps, (3, 3)), truth["direction"], atol=1e-9)
    np.testing.assert_allclose(h.spacing_mm, truth["spacing"])
    stored = sorted((tmp_path / "store" / truth["series_uid"]).glob("*.dcm"))
    assert len(stored) == 6 and h.clinical.patient_id is None  # no pseudonym without de-identification
    assert wait_for(lambda: "volume_assembled" in sink.reasons(), 5, "assembled event")


def test_pynetdicom_scu_enhanced_multiframe(scp_factory, tmp_path):
    scp, sink = scp_factory()
    truth = make_enhanced(tmp_path / "e.dcm")
    assoc = scu(scp.port, contexts=(("1.2.840.10008.5.1.4.1.1.4.1", None),))
    assert assoc.is_established
    status = assoc.send_c_store(pydicom.dcmread(truth["path"]))
    assoc.release()
    assert status.Status == 0x0000
    msg = sink.volume()
    np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])
    np.testing.assert_allclose(msg.header.origin_lps_mm, truth["origin"], atol=1e-9)


def test_unknown_calling_ae_is_rejected_and_counted(scp_factory, tmp_path):
    scp, sink = scp_factory(allowed_calling_aets=("SCANNER",))
    truth = make_series(tmp_path / "in", n=2)
    r = storescu(scp.port, truth["paths"], aet="INTRUDER")
    assert r.returncode != 0 and "calling ae title not recogni" in r.stderr.lower()
    assoc = scu(scp.port, aet="ALSOBAD")
    assert assoc.is_rejected
    assert wait_for(lambda: scp.outlet.rejected["unknown_calling_ae"] == 2, 5, "two rejections")
    assert wait_for(lambda: "unknown_calling_ae" in sink.reasons(), 5, "event")
    _assert_serves(scp, sink, tmp_path)


def test_associations_over_the_limit_are_counted_as_such_not_as_unknown_calling_ae(scp_factory, tmp_path):
    """pynetdicom's 'local limit exceeded' rejections were counted as unknown_calling_ae."""
    scp, sink = scp_factory(max_associations=1)
    first = scu(scp.port, aet="FIRST")
    assert first.is_established
    second = scu(scp.port, aet="SECOND")
    assert second.is_rejected
    rj = second.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, presentation, local limit
    assert wait_for(lambda: "too_many_associations" in sink.reasons(), 5, "event")
    assert scp.outlet.rejected == {"too_many_associations": 1}
    msg = next(e.message for e in sink.events if e.reason == "too_many_associations")
    assert "Local limit exceeded" in msg and "max_associations is 1" in msg
    first.release()
    assert wait_for(lambda: not [a for a in scp._server.active_associations], 5, "first released")
    _assert_serves(scp, sink, tmp_path)


def test_contexts_refused_for_wrong_sop_class_and_unsupported_transfer_syntax(scp_factory, tmp_path):
    scp, sink = scp_factory()
    jpeg_ls = "1.2.840.10008.1.2.4.80"  # no decoder installed: not offered
    assoc = scu(scp.port, contexts=((UltrasoundImageStorage, None), (ENHANCED_MR, [jpeg_ls]), (MRImageStorage, None)))
    assert assoc.is_established and [str(c.abstract_syntax) for c in assoc.accepted_contexts] == [MRImageStorage]
    ds = pydicom.dcmread(make_enhanced(tmp_path / "e.dcm")["path"])
    ds.file_meta.TransferSyntaxUID = jpeg_ls
    with pytest.raises(ValueError):
        assoc.send_c_store(ds)
    assoc.release()
    counted = {"sop_class_not_supported": 1, "transfer_syntax_rejected": 1}  # counted as the SCP accepts
    assert wait_for(lambda: {k: scp.outlet.rejected[k] for k in counted} == counted, 5, "rejected contexts")
    assert wait_for(lambda: {"sop_class_not_supported", "transfer_syntax_rejected"} <= set(sink.reasons()), 5, "events")
    _assert_serves(scp, sink, tmp_path)


def _write_raw(path, meta_sop, body: bytes, sop_uid="1.2.3.4"):
    """A Part 10 file whose data set is ``body`` verbatim (explicit VR little endian)."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = meta_sop, sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    from pydicom.filewriter import write_file_meta_info

    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)
        f.write(body)


def _encoded(ds) -> bytes:
    """The data set encoded explicit VR little endian, without file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def test_bad_objects_get_failure_statuses_and_the_scp_keeps_serving(scp_factory, tmp_path, monkeypatch):
    scp, sink = scp_factory(max_object_bytes=4000)
    truth = make_series(tmp_path / "in", n=1, rows=6, cols=7)
    good = pydicom.dcmread(truth["paths"][0])
    cases = {}
    # corrupt: a sequence of undefined length whose item never ends
    unterminated = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff\x10\x00\x10\x00PN\x04\x00ab"
    _write_raw(tmp_path / "corrupt.dcm", MRImageStorage, unterminated)
    cases["corrupt_dataset"] = (tmp_path / "corrupt.dcm", 0xC210)
    # truncated pixel data: half of Rows x Columns x 2 bytes
    trunc = pydicom.dcmread(truth["paths"][0])
    trunc.PixelData = trunc.PixelData[:40]
    _write_raw(tmp_path / "trunc.dcm", MRImageStorage, _encoded(trunc), trunc.SOPInstanceUID)
    cases["truncated_pixel_data"] = (tmp_path / "trunc.dcm", 0xC210)
    # missing mandatory attribute
    miss = pydicom.dcmread(truth["paths"][0])
    del miss.Rows
    _write_raw(tmp_path / "miss.dcm", MRImageStorage, _encoded(miss), miss.SOPInstanceUID)
    cases["missing_tags"] = (tmp_path / "miss.dcm", 0xA900)
    # data set says MR, the request says CT
    _write_raw(tmp_path / "ct.dcm", "1.2.840.10008.5.1.4.1.1.2", _encoded(good), good.SOPInstanceUID)
    cases["sop_class_mismatch"] = (tmp_path / "ct.dcm", 0xA900)
    # oversized
    big = pydicom.dcmread(truth["paths"][0])
    big.Rows, big.Columns, big.PixelData = 64, 64, np.zeros((64, 64), np.uint16).tobytes()
    _write_raw(tmp_path / "big.dcm", MRImageStorage, _encoded(big), big.SOPInstanceUID)
    cases["too_large"] = (tmp_path / "big.dcm", 0xA700)

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the files' bytes verbatim
    explicit = ["1.2.840.10008.1.2.1"]  # the files' own transfer syntax: sent without conversion
    assoc = scu(scp.port, contexts=((MRImageStorage, explicit), ("1.2.840.10008.5.1.4.1.1.2", explicit)))
    got = {reason: assoc.send_c_store(path).Status for reason, (path, _) in cases.items()}
    assoc.release()
    assert got == {reason: status for reason, (_, status) in cases.items()}
    for reason in cases:
        assert scp.outlet.rejected[reason] == 1, reason
    assert wait_for(lambda: set(cases) <= set(sink.reasons()), 5, "one event per refusal")
    assert not list((tmp_path / "store").rglob("*.dcm"))  # nothing refused was stored
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    _assert_serves(scp, sink, tmp_path)


def test_series_assembled_after_idle_timeout_without_release(scp_factory, tmp_path):
    scp, sink = scp_factory(assemble_on_release=False, idle_s=0.3)
    truth = make_series(tmp_path / "in", n=3)
    assert storescu(scp.port, truth["paths"]).returncode == 0
    msg = sink.volume(timeout_ms=5000)
    assert msg.header.series_uid == truth["series_uid"] and scp.collector.pending() == []


def test_series_that_cannot_be_assembled_is_reported(scp_factory, tmp_path):
    scp, sink = scp_factory()
    truth = make_series(tmp_path / "in", n=4, gaps=[2.5, 2.5, 5.0])
    assert storescu(scp.port, truth["paths"]).returncode == 0  # every instance is fine on its own
    assert wait_for(lambda: "series_nonuniform_spacing" in sink.reasons(), 5, "series event")
    assert scp.outlet.rejected["series_nonuniform_spacing"] == 1
    assert len(list((tmp_path / "store").rglob("*.dcm"))) == 4  # kept on disk for a person to look at
    _assert_serves(scp, sink, tmp_path)


def test_deidentification_replaces_name_and_id_and_keeps_them_out_of_logs(scp_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    deid = Pseudonymizer(tmp_path / "map.sqlite")
    scp, sink = scp_factory(deid=deid)
    a = make_series(tmp_path / "a", n=2, patient=("Doe^Jane", "PID-0001"))
    b = make_series(tmp_path / "b", n=2, patient=("Doe^Jane", "PID-0001"))
    c = make_series(tmp_path / "c", n=2, patient=("Roe^Rick", "PID-0002"))
    ids = []
    for t in (a, b, c):
        assert storescu(scp.port, t["paths"]).returncode == 0
        ids.append(sink.volume().header.clinical.patient_id)
    assert ids[0] == ids[1] != ids[2] and all(i.startswith("P") and len(i) == 13 for i in ids)
    for f in (tmp_path / "store").rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        assert ds.PatientID in ids and str(ds.PatientName) == ds.PatientID and ds.PatientIdentityRemoved == "YES"
    rows = dict(sqlite3.connect(tmp_path / "map.sqlite").execute("SELECT patient_id, pseudonym FROM pseudonyms"))
    assert rows == {"PID-0001": ids[0], "PID-0002": ids[2]}
    text = caplog.text + " ".join(e.message for e in sink.events) + " ".join(sink.reasons())
    assert "Doe" not in text and "PID-000" not in text and "Roe" not in text


def test_deidentification_removes_the_other_identifiers_of_the_patient(scp_factory, tmp_path):
    """Stored files kept the patient's other IDs, address, phone or mother's birth name when one was left off the list."""
    earlier = Dataset()
    earlier.PatientID = "OLD-0077"
    extra = {"OtherPatientIDs": "OLD-0001", "OtherPatientNames": "Doe^J", "OtherPatientIDsSequence": [earlier],
             "PatientAddress": "1 Main St", "PatientTelephoneNumbers": "555-0100", "PatientMotherBirthName": "Roe^Mary"}
    scp, sink = scp_factory(deid=Pseudonymizer(tmp_path / "map.sqlite"))
    assert storescu(scp.port, make_series(tmp_path / "a", n=2, extra=extra)["paths"]).returncode == 0
    sink.volume()
    stored = [pydicom.dcmread(f) for f in (tmp_path / "store").rglob("*.dcm")]
    assert len(stored) == 2
    for ds in stored:
        assert [kw for kw in extra if kw in ds] == []
        text = str(ds)
        assert not [v for v in ("Doe", "OLD-00", "Main St", "555-", "Roe") if v in text], text


def test_a_pseudonym_follows_the_patient_id_not_the_name(tmp_path):
    """Two patients sharing a name got one pseudonym, or one patient's name spelled anew a second one."""
    deid = Pseudonymizer(tmp_path / "map.sqlite")
    jane = deid.pseudonym("PID-0001", "Doe^Jane")
    assert deid.pseudonym("PID-0001", "DOE^JANE") == jane  # the same patient, her name written another way
    assert deid.pseudonym("PID-0002", "Doe^Jane") != jane  # another patient of the same name


def test_the_pseudonym_table_is_readable_by_its_owner_only(tmp_path):
    """The table linking pseudonyms to patient names and IDs was readable by other users of the machine."""
    deid = Pseudonymizer(tmp_path / "map.sqlite")
    deid.pseudonym("PID-0001", "Doe^Jane")
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.glob("map.sqlite*")}  # the table and its log
    assert "map.sqlite" in modes and {name: oct(m) for name, m in modes.items() if m & 0o077} == {}


@pytest.mark.shared_data
def test_real_scanner_files_through_storescu(scp_factory, shared_data):
    """Real PET (TCIA) and MR files: two PET series become two PT volumes in modality units; the
    anonymised enhanced MR without functional groups and the Siemens mosaic are stored but reported."""
    scp, sink = scp_factory()
    d = shared_data / "volumes"
    pets = [d / "tcia_via_suyashkumar_dicom" / f"PET_ACRIN-FLT-Breast_{i}.dcm" for i in (1, 2)]
    r = storescu(scp.port, [*pets, d / "pydicom" / "emri_small.dcm", d / "nibabel" / "0.dcm"])
    assert r.returncode == 0, r.stderr
    vols = sorted((sink.volume() for _ in pets), key=lambda m: m.header.series_uid)
    expected = sorted((pydicom.dcmread(p) for p in pets), key=lambda ds: ds.SeriesInstanceUID)
    for msg, ds in zip(vols, expected):
        assert msg.header.modality == "PT" and msg.header.rescaled and msg.header.series_uid == ds.SeriesInstanceUID
        np.testing.assert_allclose(msg.arrays["voxels"][0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                                   rtol=1e-6)  # fmt: skip
        np.testing.assert_allclose(msg.header.origin_lps_mm, [float(v) for v in ds.ImagePositionPatient])
    assert wait_for(lambda: {"series_missing_tags", "series_mosaic_unsupported"} <= set(sink.reasons()), 10, "reports")
    assert scp.outlet.counters["instances_stored"] == 4
