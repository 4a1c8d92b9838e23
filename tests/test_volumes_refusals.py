"""Refusals that stay local to one input: a DICOM series that cannot be built or published (real
pynetdicom peer, real watch folder), a non-regular file in the watch folder (FIFOs, sockets, a link
to /dev/zero), a file header with a non-finite geometry (files written byte by byte), and a
``--volume-id`` the wire does not accept."""

import gzip
import json
import os
import re
import socket
import struct

import numpy as np
import pydicom
import pytest
from test_graph import wait_for
from test_volumes_scp import Sink, scp_factory, scu  # noqa: F401 - scp_factory is a fixture
from test_volumes_watch import _sform, watcher  # noqa: F401 - watcher is a fixture
from volume_makers import make_series, write_nifti1

from mmstream.cli import main
from mmstream.errors import InputError, ReadError
from mmstream.volumes import LoadedVolume, load_volume
from mmstream.volumes.watch import PROCESSED, REJECTED

pytestmark = pytest.mark.timeout(60)


def _send(port, paths) -> list[int]:
    assoc = scu(port)
    assert assoc.is_established
    statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in paths]
    assoc.release()
    return statuses


@pytest.fixture()
def fail_series(monkeypatch):
    """Make building the volume message of one series (by SeriesInstanceUID) raise an unexpected
    error: stands for any failure after a series was assembled."""
    failing = set()
    real = LoadedVolume.to_message

    def to_message(self, volume_id=None):
        if self.series_uid in failing:
            raise RuntimeError("injected failure")
        return real(self, volume_id)

    monkeypatch.setattr(LoadedVolume, "to_message", to_message)
    return failing


# -- a series that cannot be published: the SCP ----------------------------------------------------
@pytest.mark.parametrize("on_release", [True, False], ids=["on_release", "idle_flusher"])
def test_scp_modality_with_a_space_gives_a_valid_volume_id(scp_factory, tmp_path, on_release):  # noqa: F811
    """'M R' is legal CS text; the volume id keeps only its letters ('mr-<hash>'), the wire keeps it whole."""
    scp, sink = scp_factory(assemble_on_release=on_release, idle_s=0.3)
    odd = make_series(tmp_path / "odd", n=3, modality="M R")
    assert _send(scp.port, odd["paths"]) == [0, 0, 0]
    msg = sink.volume()
    assert re.fullmatch(r"mr-[0-9a-f]{16}", msg.header.volume_id) and msg.header.modality == "M R"
    np.testing.assert_allclose(msg.arrays["voxels"], odd["voxels"])
    good = make_series(tmp_path / "good", n=2)
    assert _send(scp.port, good["paths"]) == [0, 0]
    assert sink.volume().header.series_uid == good["series_uid"]


@pytest.mark.parametrize("on_release", [True, False], ids=["on_release", "idle_flusher"])
def test_scp_series_failing_to_publish_is_refused_alone(scp_factory, tmp_path, fail_series, on_release):  # noqa: F811
    scp, sink = scp_factory(assemble_on_release=on_release, idle_s=0.3)
    bad = make_series(tmp_path / "bad", n=2)
    fail_series.add(bad["series_uid"])
    assert _send(scp.port, bad["paths"]) == [0, 0]
    assert wait_for(lambda: "series_internal_error" in sink.reasons(), 5, "the refusal announced")
    assert scp.outlet.rejected["series_internal_error"] == 1
    ev = next(e for e in sink.events if e.reason == "series_internal_error")
    assert ev.level == "error" and "RuntimeError: injected failure" in ev.message
    assert len(list((tmp_path / "store" / bad["series_uid"]).glob("*.dcm"))) == 2  # kept for a person to look at
    good = make_series(tmp_path / "good", n=2)
    assert _send(scp.port, good["paths"]) == [0, 0]
    assert sink.volume().header.series_uid == good["series_uid"]  # the flusher thread is still at work
    assert scp._flusher.is_alive() and scp.collector.pending() == []


# -- a series that cannot be published: the watch folder -------------------------------------------
def test_watch_modality_with_a_space_and_a_good_series_in_one_poll(watcher, tmp_path):  # noqa: F811
    w, sink = watcher()
    odd = make_series(tmp_path / "in" / "odd", n=3, modality="M R")
    good = make_series(tmp_path / "in" / "good", n=2)
    for _ in range(2):
        w.poll_once()
    got = {m.header.series_uid: m.header for m in (sink.volume(), sink.volume())}
    assert set(got) == {odd["series_uid"], good["series_uid"]}
    assert re.fullmatch(r"mr-[0-9a-f]{16}", got[odd["series_uid"]].volume_id)


def test_watch_series_failing_to_publish_is_refused_alone(watcher, tmp_path, fail_series):  # noqa: F811
    w, sink = watcher()
    bad = make_series(tmp_path / "in" / "bad", n=2)
    good = make_series(tmp_path / "in" / "good", n=2)
    fail_series.add(bad["series_uid"])
    for _ in range(2):
        w.poll_once()  # assembles both series in this poll: raises nothing
    assert sink.volume().header.series_uid == good["series_uid"]
    assert w.outlet.rejected["series_internal_error"] == 1 and "watch_failed" not in w.outlet.rejected
    assert wait_for(lambda: "series_internal_error" in sink.reasons(), 5, "the refusal announced")
    assert len(list((tmp_path / "in" / PROCESSED / bad["series_uid"]).glob("*.dcm"))) == 2


def test_cli_send_of_a_series_with_a_spaced_modality(tmp_path, capsys):
    sink = Sink()
    try:
        make_series(tmp_path / "s", n=2, modality="M R")
        assert main(["volumes", "send", str(tmp_path / "s"), "--endpoint", sink.vol.last_endpoint]) == 0
        vid = json.loads(capsys.readouterr().out)["volume_id"]
        assert re.fullmatch(r"mr-[0-9a-f]{16}", vid) and sink.volume().header.volume_id == vid
    finally:
        sink.close()


# -- non-regular files in the watch folder ---------------------------------------------------------
def test_watch_skips_fifos_devices_and_sockets_once_and_still_loads(watcher, tmp_path):  # noqa: F811
    """Each of these blocked the watcher for ever (a FIFO never reaches end of file, /dev/zero never
    ends); now each is announced once, left in place, and the good file beside them is loaded."""
    w, sink = watcher()
    d = tmp_path / "in"
    os.symlink("/dev/zero", d / "DOE_z.dcm")  # a link to a device
    os.mkfifo(d / "DOE_p.nii")  # read by ITK
    os.mkfifo(d / "DOE_h.mhd")  # a header is read to find its data file
    os.mkfifo(d / "DOE_x")  # no suffix: sniffed for the DICOM magic
    os.symlink(d / "DOE_p.nii", d / "DOE_l.nrrd")  # a link to a FIFO
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "DOE_s.nrrd"))
    (d / "m.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
                             "ElementDataFile = DOE_m.raw\n")  # fmt: skip
    os.mkfifo(d / "DOE_m.raw")  # the data file of a regular header
    write_nifti1(d / "ok.nii", np.zeros((2, 3, 4), np.int16), _sform())
    try:
        for _ in range(3):
            w.poll_once()
    finally:
        sock.close()
    assert sink.volume().arrays["voxels"].shape == (4, 3, 2)
    assert (d / PROCESSED / "ok.nii").exists()
    special = [p.name for p in d.iterdir() if p.name.startswith("DOE_")]
    assert len(special) == 7 and w.outlet.rejected["not_regular_file"] == 7  # once each, over three polls
    assert w.outlet.rejected["not_found"] == 1 and (d / REJECTED / "m.mhd").exists()  # its data file is no file
    assert wait_for(lambda: sink.reasons().count("not_regular_file") == 7, 5, "one event each")
    assert not [e.message for e in sink.events if "DOE" in e.message]  # file names may identify the patient
    os.unlink(d / "DOE_x")  # gone, then back: announced again
    w.poll_once()
    os.mkfifo(d / "DOE_x")
    w.poll_once()
    assert w.outlet.rejected["not_regular_file"] == 8


# -- non-finite geometry in file headers -----------------------------------------------------------
def _metaimage(path, geometry: str):
    path.write_bytes(f"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_UCHAR\n{geometry}"
                     "ElementDataFile = LOCAL\n".encode() + bytes(120))  # fmt: skip


def _nrrd(path, geometry: str):
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 5 6\nencoding: raw\n{geometry}\n".encode() + bytes(120))


def _nifti(path, offset: int, gz=False, **kw):
    """A NIfTI-1 file with the float32 at byte ``offset`` of its header set to NaN."""
    write_nifti1(path, np.zeros((4, 5, 6), np.int16), _sform(), **kw)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, offset, float("nan"))
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))


LPS = "space: left-posterior-superior\n"
NON_FINITE = {
    "mha_offset_nan": ("a.mha", lambda p: _metaimage(p, "Offset = nan 0 0\n"), "Offset"),
    "mha_origin_inf": ("a.mha", lambda p: _metaimage(p, "Origin = 0 inf 0\n"), "Origin"),
    "mha_position_text": ("a.mha", lambda p: _metaimage(p, "Position = 0 0 abc\n"), "Position"),
    "mha_spacing_nan": ("a.mha", lambda p: _metaimage(p, "ElementSpacing = 1 nan 1\n"), "ElementSpacing"),
    "mha_spacing_zero": ("a.mha", lambda p: _metaimage(p, "ElementSpacing = 1 0 1\n"), "ElementSpacing"),
    "mha_matrix_nan": ("a.mha", lambda p: _metaimage(p, "TransformMatrix = 1 0 0 0 nan 0 0 0 1\n"), "TransformMatrix"),
    "mha_offset_short": ("a.mha", lambda p: _metaimage(p, "Offset = 1 2\n"), "Offset has 2 values"),
    "nrrd_origin_nan": ("a.nrrd", lambda p: _nrrd(p, LPS + "space origin: (nan,0,0)\n"), "space origin"),
    "nrrd_directions_inf": ("a.nrrd", lambda p: _nrrd(p, LPS + "space directions: (1,0,0) (0,inf,0) (0,0,1)\n"),
                            "space directions"),  # fmt: skip
    "nrrd_spacings_nan": ("a.nrrd", lambda p: _nrrd(p, "spacings: 1 nan 1\n"), "spacings"),
    "nifti_pixdim_nan": ("a.nii", lambda p: _nifti(p, 80), "pixdim"),
    "nifti_sform_nan": ("a.nii", lambda p: _nifti(p, 280 + 12), "sform"),
    "nifti_qoffset_nan": ("a.nii", lambda p: _nifti(p, 268, qform_code=1, sform_code=0), "qform"),
    "nifti_gz_quatern_nan": ("a.nii.gz", lambda p: _nifti(p, 256, gz=True, qform_code=1), "qform"),
}


@pytest.mark.parametrize("case", NON_FINITE, ids=list(NON_FINITE))
def test_non_finite_header_geometry_is_refused(tmp_path, case):
    """ITK reads these without complaint but makes the value up (MetaImage nan or text -> 0, NRRD
    spacing nan -> 1 mm, NIfTI-1 pixdim nan -> 1 mm, quaternion or qoffset nan -> 0)."""
    name, write, what = NON_FINITE[case]
    write(tmp_path / name)
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path / name)
    assert exc.value.reason == "invalid_geometry" and what in str(exc.value)


def test_finite_headers_and_nrrd_nan_spacing_of_a_non_spatial_axis_still_load(tmp_path):
    _metaimage(tmp_path / "a.mha", "ElementSpacing = 0.5 1 2\nOffset = -1.5 2 1e3\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n")
    vol = load_volume(tmp_path / "a.mha")
    assert vol.spacing_mm == (2.0, 1.0, 0.5) and vol.origin_lps_mm == (-1.5, 2.0, 1000.0)
    (tmp_path / "t.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 4\nsizes: 4 5 6 2\nencoding: raw\n"
                                      b"spacings: 0.5 1 2 nan\nkinds: domain domain domain time\n\n" + bytes(240))  # fmt: skip
    assert load_volume(tmp_path / "t.nrrd", index_4d=1).spacing_mm == (2.0, 1.0, 0.5)


def test_non_finite_geometry_reaching_a_loaded_volume_is_refused():
    ok = {"voxels": np.zeros((2, 2, 2)), "spacing_mm": (1.0, 1.0, 1.0), "origin_lps_mm": (0.0, 0.0, 0.0),
          "direction_lps": np.eye(3)}  # fmt: skip
    LoadedVolume(**ok)
    nan_direction = np.eye(3)
    nan_direction[2, 2] = np.nan
    for bad in ({"origin_lps_mm": (0.0, np.nan, 0.0)}, {"origin_lps_mm": (np.inf, 0.0, 0.0)},
                {"spacing_mm": (1.0, np.nan, 1.0)}, {"direction_lps": nan_direction}):  # fmt: skip
        with pytest.raises(InputError) as exc:
            LoadedVolume(**{**ok, **bad})
        assert exc.value.reason == "invalid_geometry", bad


def test_watch_refuses_a_non_finite_header_and_loads_the_file_beside_it(watcher, tmp_path):  # noqa: F811
    w, sink = watcher()
    _metaimage(tmp_path / "in" / "nan.mha", "Offset = nan 0 0\n")
    write_nifti1(tmp_path / "in" / "ok.nii", np.zeros((2, 3, 4), np.int16), _sform())
    for _ in range(2):
        w.poll_once()
    assert sink.volume().header.source == "nifti:ras2lps"
    assert w.outlet.rejected["invalid_geometry"] == 1 and (tmp_path / "in" / REJECTED / "nan.mha").exists()


def test_cli_load_refuses_a_non_finite_origin_in_one_line(tmp_path, capsys):
    _metaimage(tmp_path / "nan.mha", "Offset = nan 0 0\n")
    assert main(["volumes", "load", str(tmp_path / "nan.mha")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mmstream volumes load: error: {tmp_path / 'nan.mha'}: invalid_geometry: ") and "Offset" in err
    assert len(err.strip().splitlines()) == 1


# -- --volume-id -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["bad id", "-x", "", "a" * 65, "é"])
def test_cli_send_refuses_a_volume_id_that_is_not_an_identifier(tmp_path, capsys, bad):
    write_nifti1(tmp_path / "a.nii", np.zeros((2, 2, 2), np.int16), _sform())
    with pytest.raises(SystemExit) as exc:  # a usage error before anything is loaded or sent
        main(["volumes", "send", str(tmp_path / "a.nii"), "--endpoint", "tcp://127.0.0.1:9", f"--volume-id={bad}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --volume-id: " in err and "is not an identifier" in err
    assert "Traceback" not in err and "ValidationError" not in err


def test_volume_message_refuses_a_bad_id_with_a_typed_error(tmp_path):
    write_nifti1(tmp_path / "a.nii", np.zeros((2, 2, 2), np.int16), _sform())
    with pytest.raises(InputError) as exc:
        load_volume(tmp_path / "a.nii").to_message("bad id")
    assert exc.value.reason == "invalid_volume" and "volume_id" in str(exc.value)


def test_watch_events_name_no_folder_a_header_gives_for_its_data(watcher, tmp_path):  # noqa: F811
    """A header's data file named with folders ('../JANE_DOE/x.raw'): the refusal event shows no part
    of that name (folder names often carry the patient's name)."""
    w, sink = watcher()
    inn = tmp_path / "in"
    hdr = "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementSpacing = 1 1 1\nElementType = MET_SHORT\nElementDataFile = {}\n"
    (inn / "MARY_ROE").mkdir()  # a data file that is no regular file, in a named folder: not_found
    os.mkfifo(inn / "MARY_ROE" / "d.raw")
    (inn / "c.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nspacings: 1 1 1\nencoding: raw\n"
                                "endian: little\ndata file: MARY_ROE/d.raw\n\n")  # fmt: skip
    (inn / "sub").mkdir()
    (inn / "JANE_DOE").mkdir()
    (inn / "JANE_DOE" / "x.raw").write_bytes(np.zeros((2, 3, 4), "<i2").tobytes())
    (inn / "sub" / "b.mhd").write_text(hdr.format("../JANE_DOE/x.raw"))  # path_traversal
    (inn / "O'BRIEN_\"J\"").mkdir()  # both quotes: the message's repr escapes one
    (inn / "sub" / "c.mhd").write_text(hdr.format("../O'BRIEN_\"J\"/y.raw"))
    for _ in range(2):
        w.poll_once()
    assert wait_for(lambda: {"not_found", "path_traversal"} <= set(sink.reasons()), 5, "both refusals announced")
    text = " ".join(e.message for e in sink.events)
    assert "ElementDataFile <file>" in text and "data file <file>" in text
    assert not any(s in text for s in ("JANE", "DOE", "MARY", "ROE", "BRIEN", "d.raw", "x.raw", "y.raw"))


def test_watch_file_that_cannot_be_sent_is_rejected_once(watcher, tmp_path, monkeypatch):  # noqa: F811
    """A loaded file whose volume message cannot be built or sent is moved to rejected/ and counted
    once (it used to raise on every poll and stay in the folder)."""
    from mmstream.volumes import Outlet

    w, sink = watcher()
    write_nifti1(tmp_path / "in" / "a.nii", np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))

    def broken(self, vol, volume_id=None):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(Outlet, "volume", broken)
    for _ in range(3):
        w.poll_once()
    assert w.outlet.rejected["internal_error"] == 1 and not (tmp_path / "in" / "a.nii").exists()
    assert (tmp_path / "in" / REJECTED / "a.nii").exists()


@pytest.mark.parametrize("line", ["ElementDataFile:= ../JANE_DOE/x.raw", "ElementDataFile\x00 = ../JANE_DOE/x.raw",
                                  "Offset: = nan nan nan"])  # fmt: skip
def test_metaimage_keys_itk_would_read_differently_are_refused(tmp_path, line):
    """ITK ends a key at ':' or NUL: such a line is refused, never read as an unknown key while ITK
    takes it as ElementDataFile (a data file outside the folder) or Offset (a NaN origin); the
    message does not quote the value (it may name a patient's folder)."""
    (tmp_path / "JANE_DOE").mkdir()
    (tmp_path / "JANE_DOE" / "x.raw").write_bytes(np.ones((2, 3, 4), "<i2").tobytes())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "local.raw").write_bytes(np.zeros((2, 3, 4), "<i2").tobytes())
    (tmp_path / "in" / "a.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementSpacing = 1 1 1\n"
                                           f"ElementType = MET_SHORT\n{line}\nElementDataFile = local.raw\n")  # fmt: skip
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path / "in" / "a.mhd")
    assert exc.value.reason == "bad_header" and "JANE" not in str(exc.value) and "nan" not in str(exc.value)


def test_a_refused_series_names_its_files_by_a_hash(tmp_path, monkeypatch):
    """Exported file names carry the patient's, received ones their SOP instance UID: a series that
    cannot be assembled is reported with its files as <file HASH> (SCP and watch folder alike)."""
    from mmstream.privacy import file_tag
    from mmstream.volumes import collector as collector_module

    def refuse(paths, **kw):
        raise ReadError(f"{paths[1].name}: 3 samples per pixel; scalar images only", reason="unsupported_pixel")

    monkeypatch.setattr(collector_module, "load_dicom_series", refuse)
    got = []
    col = collector_module.SeriesCollector(lambda vol: None, lambda uid, exc: got.append(exc), idle_s=0.0)
    for k in range(2):
        col.add("1.2.3", f"1.2.3.{k}", tmp_path / f"Doe_Jane_1961_{k}.dcm")
    assert col.flush() == 0
    (exc,) = got
    assert exc.reason == "unsupported_pixel" and "Doe" not in str(exc)
    assert str(exc).startswith(file_tag("Doe_Jane_1961_1.dcm"))


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_a_truncated_nifti_is_refused_not_filled_with_zeros(tmp_path, gz):
    """ITK reads a cut single-file NIfTI and fills the missing voxels with zeros: refused."""
    path = tmp_path / "whole.nii"
    write_nifti1(path, np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), _sform())
    data = path.read_bytes()
    cut = tmp_path / ("cut.nii.gz" if gz else "cut.nii")
    (gzip.open if gz else open)(cut, "wb").write(data[: len(data) - 100])
    with pytest.raises(ReadError) as exc:
        load_volume(cut)
    assert exc.value.reason == "truncated" and "need 592" in str(exc.value)
    assert load_volume(path).voxels.size == 120  # the whole file loads
