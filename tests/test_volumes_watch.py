"""Watch folder: files become volumes once their size is stable; bad files are moved aside, counted
and announced; DICOM files are collected into series. ``poll_once`` is driven directly (no sleeps)."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from test_volumes_scp import Sink
from volume_makers import make_series, write_nifti1

from mmstream.volumes import FolderWatcher, Outlet, Pseudonymizer, WatchSettings
from mmstream.volumes.watch import PROCESSED, REJECTED

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def watcher(tmp_path):
    made = []

    def make(deid=None, **kw):
        sink = Sink()
        outlet = Outlet(sink.vol.last_endpoint, sink.ev.last_endpoint).start()
        w = FolderWatcher(WatchSettings(folder=tmp_path / "in", stable_polls=1, idle_s=0.0, **kw), outlet, deid)
        (tmp_path / "in").mkdir(exist_ok=True)
        made.append((w, outlet, sink))
        return w, sink

    yield make
    for w, outlet, sink in made:
        w.stop()
        outlet.stop()
        sink.close()


def _sform():
    a = np.diag([0.5, 0.5, 2.0, 1.0])
    a[:3, 3] = (10, 20, 30)
    return a


def test_file_waits_until_its_size_is_stable(watcher, tmp_path):
    w, sink = watcher()
    write_nifti1(tmp_path / "whole.nii", np.arange(27, dtype=np.int16).reshape(3, 3, 3), _sform())
    data = (tmp_path / "whole.nii").read_bytes()
    target = tmp_path / "in" / "a.nii"
    target.write_bytes(data[: len(data) // 2])  # a copy in progress
    w.poll_once()
    target.write_bytes(data)  # the copy grows: still not stable
    w.poll_once()
    assert target.exists() and w.outlet.counters["files_loaded"] == 0
    w.poll_once()  # unchanged for one poll: complete
    msg = sink.volume()
    assert msg.header.source == "nifti:ras2lps" and msg.arrays["voxels"].shape == (3, 3, 3)
    np.testing.assert_allclose(msg.header.origin_lps_mm, (-10, -20, 30))
    assert not target.exists() and (tmp_path / "in" / PROCESSED / "a.nii").exists()


def test_metaimage_header_moves_with_its_data_file(watcher, tmp_path):
    w, sink = watcher()
    img = sitk.GetImageFromArray(np.ones((2, 3, 4), np.uint8))
    img.SetSpacing((0.25, 0.5, 3.0))
    sitk.WriteImage(img, str(tmp_path / "in" / "m.mhd"))
    for _ in range(2):
        w.poll_once()
    msg = sink.volume()
    assert msg.header.spacing_mm == (3.0, 0.5, 0.25)
    assert sorted(p.name for p in (tmp_path / "in" / PROCESSED).iterdir()) == ["m.mhd", "m.raw"]


def test_bad_files_are_moved_aside_counted_and_announced(watcher, tmp_path):
    w, sink = watcher(max_file_bytes=10_000)
    (tmp_path / "in" / "broken.nii").write_bytes(b"\x5c\x01" + b"\x00" * 400)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "huge.nrrd").write_bytes(b"NRRD0004\n" + b"\x00" * 20_000)
    (tmp_path / "in" / "noheader.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00x")
    for _ in range(2):
        w.poll_once()
    rejected = sorted(p.name for p in (tmp_path / "in" / REJECTED).iterdir() if not p.name.endswith(".why.txt"))
    assert rejected == ["broken.nii", "huge.nrrd", "noheader.dcm", "notes.txt"]
    assert (tmp_path / "in" / REJECTED / "huge.nrrd.why.txt").read_text().startswith("too_large: ")
    r = w.outlet.rejected
    assert r["unreadable"] == 1 and r["unknown_format"] == 1 and r["too_large"] == 1
    assert r["missing_tags"] + r["unreadable"] == 2  # the DICOM stub: no usable data set
    wanted = {"unreadable", "unknown_format", "too_large"}
    from test_graph import wait_for

    assert wait_for(lambda: wanted <= set(sink.reasons()), 5, "events")
    assert not any(n in e.message for e in sink.events for n in ("broken", "notes", "huge", "noheader"))  # names may identify
    # and the watcher keeps going
    write_nifti1(tmp_path / "in" / "ok.nii", np.zeros((2, 2, 2), np.int16), _sform())
    for _ in range(2):
        w.poll_once()
    assert sink.volume().arrays["voxels"].shape == (2, 2, 2)


def test_headers_naming_data_outside_the_folder_are_refused(watcher, tmp_path):
    """A MetaImage or NRRD header must not make the service read (and send) another file: an
    absolute or ``../`` data file, or a LIST, is refused and moved aside, the outside file untouched;
    events name neither the file nor its sub-folder (a patient's name, here)."""
    w, sink = watcher()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"TOP-SECRET" * 3)
    folder = tmp_path / "in" / "DOE_JOHN_19700101"
    folder.mkdir()
    head = "ObjectType = Image\nNDims = 3\nDimSize = 3 2 5\nElementType = MET_UCHAR\nElementDataFile = {}\n"
    (folder / "abs.mhd").write_text(head.format(secret))
    (folder / "up.mhd").write_text(head.format("../../secret.bin"))
    (folder / "list.mhd").write_text(head.format("LIST 2D") + f"{secret}\n")
    (folder / "up.nhdr").write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 5 2 3\nencoding: raw\n"
                                    "data file: ../../secret.bin\n\n")
    for _ in range(2):
        w.poll_once()
    rejected = sorted(p.name for p in (tmp_path / "in" / REJECTED).iterdir() if not p.name.endswith(".why.txt"))
    assert rejected == ["abs.mhd", "list.mhd", "up.mhd", "up.nhdr"] and secret.exists()
    assert w.outlet.rejected["path_traversal"] == 3 and w.outlet.rejected["unsupported"] == 1
    from test_graph import wait_for

    assert wait_for(lambda: len(sink.reasons()) == 4, 5, "events")
    assert sink.vol.try_recv() is None  # nothing sent
    assert not any("DOE_JOHN" in e.message or str(tmp_path / "in") in e.message for e in sink.events)


def test_data_file_names_with_spaces_or_starting_with_list_still_load(tmp_path):
    from mmstream.volumes.files import load_image_file

    for name in ("T1 dixon fat", "listeria"):
        img = sitk.GetImageFromArray(np.ones((2, 3, 4), np.uint8))
        sitk.WriteImage(img, str(tmp_path / f"{name}.mhd"))
        assert load_image_file(tmp_path / f"{name}.mhd").voxels.shape == (2, 3, 4)


def test_a_dimension_product_beyond_int64_is_too_large(tmp_path):
    from mmstream.errors import ReadError
    from mmstream.volumes.files import load_image_file

    p = tmp_path / "wrap.mha"
    p.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2097152 2097152 4194304\nElementType = MET_UCHAR\n"
                  b"ElementDataFile = LOCAL\n" + b"\0" * 64)  # fmt: skip
    with pytest.raises(ReadError) as ei:  # the product is 2**64: it wrapped to 0 in int64
        load_image_file(p)
    assert ei.value.reason == "too_large"


def test_dicom_files_are_collected_into_a_series_and_deidentified(watcher, tmp_path):
    deid = Pseudonymizer(tmp_path / "map.sqlite", prefix="STUDY")
    w, sink = watcher(deid=deid)
    truth = make_series(tmp_path / "in" / "export", n=4, patient=("Doe^Jane", "PID-7"))
    for _ in range(2):
        w.poll_once()
    msg = sink.volume()
    np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])
    assert msg.header.clinical.patient_id.startswith("STUDY")
    kept = list((tmp_path / "in" / PROCESSED / truth["series_uid"]).glob("*.dcm"))
    assert len(kept) == 4 and not any(p.exists() for p in truth["paths"])
    assert all(pydicom.dcmread(p).PatientID == msg.header.clinical.patient_id for p in kept)
    assert "Doe" not in " ".join(e.message for e in sink.events)


def test_running_thread_polls_by_itself(watcher, tmp_path):
    from test_graph import wait_for

    w, sink = watcher(poll_s=0.05)
    w.start()
    write_nifti1(tmp_path / "in" / "t.nii", np.zeros((2, 3, 4), np.int16), _sform())
    assert sink.volume(timeout_ms=5000).arrays["voxels"].shape == (4, 3, 2)
    assert wait_for(lambda: (tmp_path / "in" / PROCESSED / "t.nii").exists(), 5, "moved")


def test_collector_forgets_published_series_after_retention(tmp_path):
    from mmstream.volumes.collector import SeriesCollector

    got, errors = [], []
    col = SeriesCollector(got.append, lambda s, e: errors.append(e), idle_s=0.0, retain_s=10.0)
    truth = make_series(tmp_path, n=2)
    for p in truth["paths"]:
        col.add(truth["series_uid"], pydicom.dcmread(p).SOPInstanceUID, p)
    assert col.flush(col.due()) == 1 and len(got) == 1 and not errors
    import time

    assert col.due(time.monotonic() + 5) == [] and col.known() == 1  # kept for late instances
    assert col.due(time.monotonic() + 11) == [] and col.known() == 0  # then forgotten
