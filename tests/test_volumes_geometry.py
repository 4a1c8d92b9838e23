"""Where ITK's reading is not the file's: NIfTI-1 sform versus qform and pixdim, scl_slope 0,
sequences of 2-D frames taken for volumes, NRRD left-anterior-superior space; and two DICOM cases
(a single enhanced frame, several images per position). Files are written byte by byte (or come
from /work/shared/data); the expected geometry is computed from the header."""

import json

import numpy as np
import pytest
from test_volumes_watch import watcher  # noqa: F401 - a fixture
from volume_makers import make_enhanced, make_series, write_nifti1

from mmstream.cli import main
from mmstream.errors import ReadError
from mmstream.volumes import load_volume
from mmstream.volumes.watch import REJECTED

pytestmark = pytest.mark.timeout(60)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
QFORM = (0.0, 0.0, 0.0, -40.0, -50.0, -60.0)  # identity rotation, offset (-40, -50, -60): 93 mm from the sform


def _sform(scale=(2.0, 2.0, 3.0), deg=20.0, offset=(1.0, 2.0, 3.0)) -> np.ndarray:
    t = np.deg2rad(deg)
    a = np.eye(4)
    a[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag(scale)
    a[:3, 3] = offset
    return a


def _centre(vol, i, j, k) -> np.ndarray:
    s_k, s_j, s_i = vol.spacing_mm
    return np.asarray(vol.origin_lps_mm) + vol.direction_lps @ np.array([i * s_i, j * s_j, k * s_k])


# -- NIfTI-1: the sform when sform_code > 0 -----------------------------------------------------------
@pytest.mark.parametrize("codes", [(1, 2), (2, 4), (1, 3), (2, 1), (1, 1)], ids=lambda c: f"q{c[0]}s{c[1]}")
def test_nifti_sform_is_used_whatever_the_codes_and_a_disagreeing_qform_is_said(tmp_path, codes):
    """ITK 5.4 reads the qform for (q1, s2), (q2, s4), (q1, s3): the volume was 93 mm away from the sform."""
    sform = _sform()
    write_nifti1(tmp_path / "a.nii", np.zeros((6, 5, 4), np.int16), sform, qform_code=codes[0], sform_code=codes[1],
                 pixdim=(2.0, 2.0, 3.0), quatern=QFORM)  # fmt: skip
    vol = load_volume(tmp_path / "a.nii")
    for ijk in [(0, 0, 0), (5, 4, 3), (5, 0, 3)]:
        np.testing.assert_allclose(_centre(vol, *ijk), RAS_TO_LPS @ (sform @ (*ijk, 1.0))[:3], atol=1e-4)
    assert vol.spacing_mm == pytest.approx((3.0, 2.0, 2.0))
    assert f"sform (qform_code {codes[0]}, sform_code {codes[1]})" in vol.conversion
    assert f"the qform (qform_code {codes[0]}) disagrees by up to 93.1 mm" in vol.conversion


def test_nifti_qform_agreeing_with_the_sform_is_not_reported(tmp_path):
    sform = np.diag([2.0, 2.0, 3.0, 1.0])
    sform[:3, 3] = QFORM[3:]
    write_nifti1(tmp_path / "a.nii", np.zeros((3, 3, 3), np.int16), sform, qform_code=1, quatern=QFORM)
    vol = load_volume(tmp_path / "a.nii")
    assert "disagrees" not in vol.conversion and "pixdim" not in vol.conversion
    assert vol.origin_lps_mm == pytest.approx((40.0, 50.0, -60.0))


def test_nifti_sheared_sform_is_refused_not_replaced_by_the_qform(tmp_path):
    """ITK read the qform when the sform was sheared, and the record said 'sform'."""
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    write_nifti1(tmp_path / "a.nii", np.zeros((3, 3, 3), np.int16), sheared, qform_code=1)
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path / "a.nii")
    assert exc.value.reason == "invalid_geometry" and "sheared" in str(exc.value)


@pytest.mark.parametrize("pixdim", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)], ids=["pixdim1", "pixdim0"])
def test_nifti_sform_scales_are_the_spacing_and_the_volume_in_mm3(tmp_path, capsys, pixdim):
    """pixdim 1 mm beside an sform of 3 x 3 x 4 mm: ITK mixed the sform's direction with pixdim's
    spacing and volume_mm3 was 24 (or none, pixdim 0) instead of 864."""
    sform = np.diag([3.0, 3.0, 4.0, 1.0])
    sform[:3, 3] = (1, 2, 3)
    mask = np.zeros((6, 5, 4), np.int16)
    mask[1:5, 1:4, 1:3] = 1  # 24 voxels
    write_nifti1(tmp_path / "img.nii", np.full((6, 5, 4), 100, np.int16), sform, sform_code=2, pixdim=pixdim)
    write_nifti1(tmp_path / "mask.nii", mask, sform, sform_code=2, pixdim=pixdim)
    vol = load_volume(tmp_path / "img.nii")
    assert vol.spacing_mm == (4.0, 3.0, 3.0) and "the sform's used" in vol.conversion
    np.testing.assert_allclose(_centre(vol, 5, 4, 3), RAS_TO_LPS @ (sform @ (5, 4, 3, 1.0))[:3])
    assert main(["biomarkers", "compute", "stats", str(tmp_path / "img.nii"), str(tmp_path / "mask.nii"), "--patient", "P1",
                 "--site", "soleus", "--date", "2026-01-05", "--modality", "MRI"]) == 0  # fmt: skip
    rows = {r["biomarker"]: r["value"] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["volume_mm3"] == pytest.approx(24 * 3 * 3 * 4)


def test_nifti_sform_in_metres_is_scaled_to_mm(tmp_path):
    sform = np.diag([0.002, 0.002, 0.003, 1.0])
    sform[:3, 3] = (0.01, 0.02, 0.03)
    write_nifti1(tmp_path / "a.nii", np.zeros((2, 2, 2), np.int16), sform, xyzt_units=1)
    vol = load_volume(tmp_path / "a.nii")
    assert vol.spacing_mm == pytest.approx((3.0, 2.0, 2.0)) and vol.origin_lps_mm == pytest.approx((-10.0, -20.0, 30.0))


def test_nifti_slope_zero_means_no_scaling(tmp_path):
    """nifti1.h: scl_slope 0 is no scaling; ITK added scl_inter (100) and said rescaled False."""
    raw = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    write_nifti1(tmp_path / "a.nii", raw, np.eye(4), slope=0.0, inter=100.0)
    vol = load_volume(tmp_path / "a.nii")
    assert vol.voxels.dtype == np.int16 and not vol.rescaled
    np.testing.assert_array_equal(vol.voxels, raw.transpose(2, 1, 0))
    write_nifti1(tmp_path / "f.nii", raw.astype(np.float32) + 0.1, np.eye(4), slope=0.0, inter=100.0)
    with pytest.raises(ReadError) as exc:  # float data: ITK's raw + 100 cannot be undone exactly
        load_volume(tmp_path / "f.nii")
    assert exc.value.reason == "unsupported_scaling"


# -- sequences of 2-D frames --------------------------------------------------------------------------
def _mha(path, extra: str) -> None:
    path.write_bytes(("ObjectType = Image\nNDims = 3\nBinaryData = True\nElementSpacing = 0.3 0.3 1\n"
                      f"DimSize = 6 4 5\n{extra}ElementType = MET_UCHAR\nElementDataFile = LOCAL\n").encode() + bytes(120))  # fmt: skip


def _nrrd(path, kinds: str, third: str = "(0,0,1)") -> None:
    path.write_bytes((f"NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\nsizes: 6 4 5\n"
                      f"space directions: (0.3,0,0) (0,0.3,0) {third}\nkinds: {kinds}\nencoding: raw\n\n").encode() + bytes(120))  # fmt: skip


FRAMES = {
    "mha_kinds_list": ("a.mha", lambda p: _mha(p, "Kinds = domain domain list\n"), "Kinds = domain domain list"),
    "mha_plus_fields": ("a.mha", lambda p: _mha(p, "Seq_Frame0000_Timestamp = 1.5\n"), "Seq_Frame"),
    "nrrd_time": ("a.nrrd", lambda p: _nrrd(p, "domain domain time"), "kind 'time'"),
    "nrrd_list": ("a.nrrd", lambda p: _nrrd(p, "domain list domain"), "axis 1"),
    "nrrd_none": ("a.nrrd", lambda p: _nrrd(p, "domain domain domain", "none"), "space direction 'none'"),
}


@pytest.mark.parametrize("case", FRAMES, ids=list(FRAMES))
def test_a_sequence_of_frames_is_not_a_volume(tmp_path, case):
    """ITK loaded these as 1 mm slices, and a mask gave a volume_mm3."""
    name, write, what = FRAMES[case]
    write(tmp_path / name)
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path / name)
    assert exc.value.reason == "not_3d" and what in str(exc.value) and "sequence of 2-D frames" in str(exc.value)


def test_spatial_kinds_still_load(tmp_path):
    _mha(tmp_path / "a.mha", "Kinds = domain domain domain\n")
    _nrrd(tmp_path / "a.nrrd", "space space space")
    assert load_volume(tmp_path / "a.mha").spacing_mm == (1.0, 0.3, 0.3)
    assert load_volume(tmp_path / "a.nrrd").spacing_mm == (1.0, 0.3, 0.3)


@pytest.mark.shared_data
def test_real_plus_sequence_is_refused_with_where_to_read_it(shared_data):
    with pytest.raises(ReadError) as exc:
        load_volume(shared_data / "pluslibdata/BoneUltrasound_L14.igs.mha")
    assert exc.value.reason == "not_3d" and "'mha' source" in str(exc.value)


def test_watch_folder_rejects_a_sequence_of_frames(watcher, tmp_path):  # noqa: F811
    w, sink = watcher()
    _mha(tmp_path / "in" / "frames.mha", "Kinds = domain domain list\n")
    for _ in range(2):
        w.poll_once()
    assert w.outlet.rejected["not_3d"] == 1
    assert (tmp_path / "in" / REJECTED / "frames.mha.why.txt").read_text().startswith("not_3d: ")


# -- NRRD spaces --------------------------------------------------------------------------------------
def test_nrrd_left_anterior_superior_is_converted(tmp_path):
    head = ("NRRD0004\ntype: uint8\ndimension: 3\nspace: left-anterior-superior\nsizes: 2 3 4\n"
            "space directions: (0.3,0.4,0) (-0.64,0.48,0) (0,0,2.5)\nspace origin: (10,-20,30)\nencoding: raw\n\n")  # fmt: skip
    (tmp_path / "a.nrrd").write_bytes(head.encode() + bytes(24))
    vol = load_volume(tmp_path / "a.nrrd")
    flip = np.diag([1.0, -1.0, 1.0])  # LAS -> LPS: y negated
    assert vol.source == "nrrd:las2lps" and vol.origin_lps_mm == pytest.approx((10.0, 20.0, 30.0))
    np.testing.assert_allclose(_centre(vol, 1, 2, 3) - vol.origin_lps_mm, flip @ (0.3 - 1.28, 0.4 + 0.96, 7.5), atol=1e-9)
    (tmp_path / "t.nrrd").write_bytes(head.replace("superior\n", "superior-time\n").encode() + bytes(24))
    with pytest.raises(ReadError) as exc:  # ITK leaves the -time spaces unconverted
        load_volume(tmp_path / "t.nrrd")
    assert exc.value.reason in ("unsupported_space", "unreadable")


# -- DICOM --------------------------------------------------------------------------------------------
def test_single_enhanced_frame_takes_its_slice_spacing_from_the_functional_groups(tmp_path):
    """SliceThickness in SharedFunctionalGroupsSequence > PixelMeasuresSequence (where the Enhanced
    MR IOD puts it), none at the top level: was refused as missing_tags."""
    truth = make_enhanced(tmp_path / "e.dcm", n=1)
    vol = load_volume(tmp_path / "e.dcm")
    assert vol.spacing_mm == pytest.approx(truth["spacing"]) and vol.meta["k_spacing_from"] == "SliceThickness"


def test_several_images_per_position_are_named_as_such(tmp_path):
    """4 positions x 2 echoes was '5 slices share a position'."""
    make_series(tmp_path, n=8, gaps=[0.0, 2.5, 0.0, 2.5, 0.0, 2.5, 0.0])
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path)
    assert exc.value.reason == "duplicate_positions" and "8 images at 4 positions" in str(exc.value)
