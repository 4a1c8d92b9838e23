"""Volume loaders: one canonical geometry (LPS mm, voxels (K, J, I)) from NIfTI, NRRD, MetaImage and
DICOM, checked against geometry known by construction and against PyRadiomics' reference values."""

import csv
import gzip
import struct

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from volume_makers import make_enhanced, make_series, oblique_geometry, write_nifti1

from mmstream.codec import decode, encode
from mmstream.errors import InputError, MmstreamError, ReadError
from mmstream.volumes import assemble, load_volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _centre(vol, k, j, i):
    """LPS position of voxel (k, j, i) from the loaded geometry."""
    s_k, s_j, s_i = vol.spacing_mm
    return np.asarray(vol.origin_lps_mm) + vol.direction_lps @ np.array([i * s_i, j * s_j, k * s_k])


# -- NIfTI ---------------------------------------------------------------------------------------
def _oblique_sform(spacing_ijk=(0.7, 1.1, 3.0), origin_ras=(12.0, -30.0, 44.0)):
    row, col, normal = oblique_geometry()
    a = np.eye(4)
    a[:3, :3] = np.column_stack([row, col, normal]) * np.asarray(spacing_ijk)
    a[:3, 3] = origin_ras
    return a


def test_nifti_sform_becomes_lps_with_voxels_k_j_i(tmp_path):
    sform = _oblique_sform()
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (I, J, K) as NIfTI stores it
    write_nifti1(tmp_path / "a.nii", data, sform)
    vol = load_volume(tmp_path / "a.nii")
    assert vol.voxels.shape == (6, 5, 4)
    assert vol.voxels[5, 3, 1] == data[1, 3, 5]
    np.testing.assert_allclose(vol.spacing_mm, (3.0, 1.1, 0.7), rtol=1e-6)
    expected_dir = RAS_TO_LPS @ sform[:3, :3] / np.linalg.norm(sform[:3, :3], axis=0)
    np.testing.assert_allclose(vol.direction_lps, expected_dir, atol=1e-6)
    np.testing.assert_allclose(vol.origin_lps_mm, RAS_TO_LPS @ sform[:3, 3], atol=1e-5)
    # any voxel: the file's affine (RAS) and our geometry (LPS) name the same point
    ras = sform @ np.array([2, 4, 5, 1.0])
    np.testing.assert_allclose(_centre(vol, 5, 4, 2), RAS_TO_LPS @ ras[:3], atol=1e-4)
    assert vol.source == "nifti:ras2lps" and "sform" in vol.conversion and vol.orientation_known
    img = sitk.ReadImage(str(tmp_path / "a.nii"))  # and SimpleITK's own reading agrees
    np.testing.assert_allclose(vol.origin_lps_mm, img.GetOrigin(), atol=1e-5)


def test_nifti_scale_is_applied_and_recorded(tmp_path):
    data = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    write_nifti1(tmp_path / "s.nii", data, _oblique_sform(), slope=0.5, inter=-3.0)
    vol = load_volume(tmp_path / "s.nii")
    assert vol.rescaled
    np.testing.assert_allclose(vol.voxels.transpose(2, 1, 0), data * 0.5 - 3.0)


def test_nifti_without_transform_is_flagged_orientation_unknown(tmp_path):
    write_nifti1(tmp_path / "n.nii", np.zeros((3, 3, 3), np.int16), _oblique_sform(), sform_code=0, qform_code=0)
    vol = load_volume(tmp_path / "n.nii")
    assert vol.source == "nifti:no_xform" and not vol.orientation_known


def test_four_d_needs_a_volume_index(tmp_path):
    vols = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)  # (t, K, J, I)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(v) for v in vols]), str(tmp_path / "t.nii.gz"))
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path / "t.nii.gz")
    assert exc.value.reason == "not_3d"
    vol = load_volume(tmp_path / "t.nii.gz", index_4d=1)
    np.testing.assert_array_equal(vol.voxels, vols[1])


def _big_endian(path):
    """A little-endian NIfTI-1 file of ``write_nifti1`` (float32 voxels) rewritten big-endian."""
    raw = bytearray(path.read_bytes())
    for fmt, offset in (("i", 0), ("8h", 40), ("hh", 70), ("8f", 76), ("fff", 108), ("hh", 252), ("6f", 256), ("12f", 280)):
        struct.pack_into(">" + fmt, raw, offset, *struct.unpack_from("<" + fmt, raw, offset))
    raw[352:] = np.frombuffer(bytes(raw[352:]), "<f4").astype(">f4").tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", ["nii", "nii.gz", "big_endian", "scaled"])
def test_nifti_nan_and_inf_voxels_are_read_as_the_file_holds_them(tmp_path, case):
    """ITK's NIfTI reader (nifti1_io) gives 0 for NaN and inf: a T2 map's failed fits were averaged
    in as 0 ms (30.0 instead of 40.0), where NRRD and MetaImage give NaN."""
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (I, J, K)
    data[1, 2, 3], data[3, 0, 5], data[0, 4, 0] = np.nan, np.inf, -np.inf
    slope, inter = (-2.0, 1.0) if case == "scaled" else (0.0, 0.0)
    write_nifti1(tmp_path / "a.nii", data, np.diag([2.0, 3.0, 4.0, 1.0]), slope=slope, inter=inter)
    path = tmp_path / "a.nii"
    if case == "nii.gz":
        path = tmp_path / "a.nii.gz"
        path.write_bytes(gzip.compress((tmp_path / "a.nii").read_bytes()))
    elif case == "big_endian":
        _big_endian(path)
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.voxels, data.transpose(2, 1, 0) * (slope or 1.0) + inter)  # NaN == NaN here
    assert vol.voxels[3, 2, 1] != vol.voxels[3, 2, 1] and vol.voxels[0, 4, 0] == (np.inf if case == "scaled" else -np.inf)
    assert vol.meta["non_finite_voxels"] == 3 and "3 NaN/inf voxel(s) kept as the file holds them" in vol.conversion


def test_a_4d_float_nifti_with_nan_reads_as_its_nrrd_twin(tmp_path):
    vols = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)  # (t, K, J, I)
    vols[1, 2, 3, 4], vols[0, 0, 0, 0], vols[1, 0, 1, 2] = np.nan, np.inf, -np.inf
    img = sitk.JoinSeries([sitk.GetImageFromArray(v) for v in vols])
    for name in ("t.nii", "t.nii.gz", "t.nrrd"):
        sitk.WriteImage(img, str(tmp_path / name))
    for index in (0, 1):
        twin = load_volume(tmp_path / "t.nrrd", index_4d=index).voxels
        np.testing.assert_array_equal(twin, vols[index])
        for name in ("t.nii", "t.nii.gz"):
            np.testing.assert_array_equal(load_volume(tmp_path / name, index_4d=index).voxels, twin)


def test_a_nifti_gz_of_finite_floats_is_decompressed_once_by_mmstream(tmp_path, monkeypatch):
    """Its size check (which reads it to the end) also looks for NaN and inf: no second pass when
    there is none; one more, for the volume's block only, when there is."""
    import mmstream.volumes.nifti1 as nifti1

    opened = []
    real_open = nifti1.gzip.open
    monkeypatch.setattr(nifti1.gzip, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    data = np.ones((4, 5, 6), np.float32)
    for nan, passes in ((False, 2), (True, 3)):  # its header, the size check (+ the restore, with a NaN)
        data[0, 0, 0] = np.nan if nan else 1.0
        write_nifti1(tmp_path / "a.nii", data, np.eye(4))
        (tmp_path / "a.nii.gz").write_bytes(gzip.compress((tmp_path / "a.nii").read_bytes()))
        opened.clear()
        assert np.isnan(load_volume(tmp_path / "a.nii.gz").voxels[0, 0, 0]) == nan
        assert len(opened) == passes


# -- NRRD and MetaImage ----------------------------------------------------------------------------
def test_nrrd_ras_space_is_converted(tmp_path):
    data = np.arange(24, dtype=np.uint8)
    head = ("NRRD0004\ntype: uint8\ndimension: 3\nspace: right-anterior-superior\nsizes: 4 3 2\n"
            "space directions: (0,-0.5,0) (2,0,0) (0,0,4)\nspace origin: (10,20,30)\nencoding: raw\n\n")  # fmt: skip
    (tmp_path / "r.nrrd").write_bytes(head.encode() + data.tobytes())
    vol = load_volume(tmp_path / "r.nrrd")
    assert vol.source == "nrrd:ras2lps" and vol.voxels.shape == (2, 3, 4)
    np.testing.assert_allclose(vol.spacing_mm, (4, 2, 0.5))
    np.testing.assert_allclose(vol.origin_lps_mm, (-10, -20, 30))
    np.testing.assert_allclose(vol.direction_lps, RAS_TO_LPS @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]), atol=1e-9)


def test_metaimage_geometry_round_trips(tmp_path):
    row, col, normal = oblique_geometry()
    img = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    img.SetSpacing((0.5, 0.75, 2.5))
    img.SetOrigin((1.0, -2.0, 3.0))
    img.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    sitk.WriteImage(img, str(tmp_path / "m.mhd"))  # header + .raw
    vol = load_volume(tmp_path / "m.mhd")
    assert vol.source == "metaimage:lps" and vol.voxels.shape == (3, 4, 5)
    np.testing.assert_allclose(vol.spacing_mm, (2.5, 0.75, 0.5))
    np.testing.assert_allclose(vol.direction_lps, np.column_stack([row, col, normal]), atol=1e-6)


def test_bad_files_raise_typed_errors(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 100)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    (tmp_path / "x.txt").write_text("hello")
    for name, reason in (("junk.nii", "unreadable"), ("x.txt", "unknown_format")):
        with pytest.raises(MmstreamError) as exc:
            load_volume(tmp_path / name)
        assert exc.value.reason == reason
    with pytest.raises(ReadError):
        load_volume(tmp_path / "junk.dcm")
    with pytest.raises(InputError):
        load_volume(tmp_path / "missing.nii")
    write_nifti1(tmp_path / "big.nii", np.zeros((4, 4, 4), np.int16), _oblique_sform())
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path / "big.nii", max_voxels=63)
    assert exc.value.reason == "too_large"


# -- DICOM series --------------------------------------------------------------------------------
def test_dicom_series_sorted_by_position_with_rescale(tmp_path):
    truth = make_series(tmp_path, slopes=[1.0, 2.0, 0.5, 1.0, 3.0])  # written in shuffled order
    vol = load_volume(tmp_path)
    np.testing.assert_allclose(vol.voxels, truth["voxels"])
    assert vol.voxels.dtype == np.float32 and vol.rescaled and vol.modality == "MR"
    np.testing.assert_allclose(vol.origin_lps_mm, truth["origin"], atol=1e-9)
    np.testing.assert_allclose(vol.direction_lps, truth["direction"], atol=1e-9)
    np.testing.assert_allclose(vol.spacing_mm, truth["spacing"], rtol=1e-9)
    assert vol.series_uid == truth["series_uid"] and vol.source == "dicom:lps"
    for p in truth["paths"]:  # voxel (k, 0, 0) sits at the slice's ImagePositionPatient
        ds = pydicom.dcmread(p)
        k = ds.InstanceNumber - 1
        np.testing.assert_allclose(_centre(vol, k, 0, 0), [float(v) for v in ds.ImagePositionPatient], atol=1e-6)


def test_a_series_over_the_voxel_limit_is_refused_before_its_pixels_are_read(tmp_path):
    from mmstream.volumes import dicom_series

    truth = make_series(tmp_path, n=3, rows=800, cols=800)  # 1.2 MB of pixel data per slice
    ds = dicom_series.read_dataset(truth["paths"][0])
    assert ds.get_item("PixelData", keep_deferred=True).value is None  # still in the file
    with pytest.raises(ReadError) as ei:
        dicom_series.load_dicom_series(truth["paths"], max_voxels=1000)
    assert ei.value.reason == "too_large"
    vol = dicom_series.load_dicom_series(truth["paths"])  # read when used
    np.testing.assert_allclose(vol.voxels, truth["voxels"])


def test_enhanced_multiframe_uses_per_frame_groups(tmp_path):
    truth = make_enhanced(tmp_path / "e.dcm")
    vol = load_volume(tmp_path / "e.dcm")
    np.testing.assert_allclose(vol.voxels, truth["voxels"])
    np.testing.assert_allclose(vol.origin_lps_mm, truth["origin"], atol=1e-9)
    np.testing.assert_allclose(vol.direction_lps, truth["direction"], atol=1e-9)
    np.testing.assert_allclose(vol.spacing_mm, truth["spacing"])
    assert vol.meta["multiframe"]


@pytest.mark.parametrize(
    "kwargs, reason",
    [(dict(gaps=[2.5, 2.5, 4.0, 2.5]), "nonuniform_spacing"), (dict(gaps=[2.5, 0.0, 2.5, 2.5]), "duplicate_positions")],
)
def test_series_geometry_problems_are_refused(tmp_path, kwargs, reason):
    make_series(tmp_path, **kwargs)
    with pytest.raises(ReadError) as exc:
        load_volume(tmp_path)
    assert exc.value.reason == reason


def test_inconsistent_or_incomplete_instances_are_refused(tmp_path):
    truth = make_series(tmp_path, n=3)
    dss = [pydicom.dcmread(p) for p in truth["paths"]]
    dss[1].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    with pytest.raises(ReadError) as exc:
        assemble(dss)
    assert exc.value.reason == "inconsistent_series"
    dss = [pydicom.dcmread(p) for p in truth["paths"]]
    del dss[2].ImagePositionPatient
    with pytest.raises(ReadError) as exc:
        assemble(dss)
    assert exc.value.reason == "missing_tags"
    dss = [pydicom.dcmread(p) for p in truth["paths"]]
    dss[0].PixelData = dss[0].PixelData[:10]
    with pytest.raises(ReadError) as exc:
        assemble(dss)
    assert exc.value.reason == "pixel_decode"


def test_volume_message_round_trips_through_the_codec(tmp_path):
    truth = make_series(tmp_path)
    vol = load_volume(tmp_path).with_patient("P0123456789ab")
    header, voxels = vol.to_message()
    msg = decode(encode(header, [voxels]))
    assert msg.topic == f"volume.{header.volume_id}" and msg.header.clinical.patient_id == "P0123456789ab"
    np.testing.assert_array_equal(msg.arrays["voxels"], truth["voxels"])
    assert np.allclose(np.asarray(msg.header.direction_lps).reshape(3, 3), truth["direction"])


# -- real files ----------------------------------------------------------------------------------
def _baseline(shared, name, feature, case="brain1"):
    with open(shared / "volumes" / "pyradiomics" / name) as f:
        return next(r[case] for r in csv.DictReader(f) if r["featureName"] == feature)


@pytest.mark.shared_data
def test_brain1_mask_volume_and_mean_match_pyradiomics(shared_data):
    image = load_volume(shared_data / "volumes/pyradiomics/brain1_image.nrrd")
    mask = load_volume(shared_data / "volumes/pyradiomics/brain1_label.nrrd")
    assert image.voxels.shape == mask.voxels.shape == (25, 256, 256)
    assert image.source == "nrrd:lps"
    np.testing.assert_allclose(image.spacing_mm, (6.5, 0.78125, 0.78125), rtol=1e-9)
    inside = mask.voxels > 0
    voxel_mm3 = float(np.prod(image.spacing_mm))
    assert inside.sum() * voxel_mm3 == pytest.approx(float(_baseline(shared_data, "baseline_shape.csv",
                                                                      "original_shape_VoxelVolume")), rel=1e-9)  # fmt: skip
    assert image.voxels[inside].mean() == pytest.approx(float(_baseline(shared_data, "baseline_firstorder.csv",
                                                                        "original_firstorder_Mean")), rel=1e-9)  # fmt: skip
    # PyRadiomics' bounding box is (i, j, k, size_i, size_j, size_k): our (K, J, I) axes must agree
    box = eval(_baseline(shared_data, "baseline_shape.csv", "diagnostics_Mask-original_BoundingBox"))  # a tuple literal
    k, j, i = np.nonzero(inside)
    assert (i.min(), j.min(), k.min(), np.ptp(i) + 1, np.ptp(j) + 1, np.ptp(k) + 1) == box


@pytest.mark.shared_data
def test_real_nifti_and_dicom_files(shared_data):
    d = shared_data / "volumes"
    anat = load_volume(d / "nibabel/anatomical.nii")  # sform: -2 0 0 32 / 0 2 0 -40 / 0 0 2 -16
    assert anat.voxels.shape == (25, 41, 33)
    np.testing.assert_allclose(anat.origin_lps_mm, (-32, 40, -16))
    np.testing.assert_allclose(anat.direction_lps, np.diag([1.0, -1.0, 1.0]), atol=1e-9)
    pet = load_volume(d / "tcia_via_suyashkumar_dicom/PET_ACRIN-FLT-Breast_1.dcm")
    ds = pydicom.dcmread(d / "tcia_via_suyashkumar_dicom/PET_ACRIN-FLT-Breast_1.dcm")
    assert pet.modality == "PT" and pet.rescaled and pet.voxels.shape == (1, 168, 168)
    raw = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(pet.voxels[0], raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept), rtol=1e-6)
    assert pet.meta["units"] == "BQML" and pet.meta["k_spacing_from"] in ("SliceThickness", "SpacingBetweenSlices")
    for name, reason in (("pydicom/emri_small.dcm", "missing_tags"), ("nibabel/0.dcm", "mosaic_unsupported"),
                         ("nibabel/example4d.nii.gz", "not_3d")):  # fmt: skip
        with pytest.raises(ReadError) as exc:
            load_volume(d / name)
        assert exc.value.reason == reason


def test_a_metaimage_written_by_simpleitk_with_its_extra_keys_loads(tmp_path):
    """SimpleITK copies a NIfTI's or NRRD's header into the MetaImage it writes, with keys such as
    ``dim[0]`` and ``NRRD_kinds[0]``; those files were refused (bad_header)."""
    img = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    img.SetSpacing((0.5, 0.6, 2.0))
    for key, value in (("dim[0]", "3"), ("NRRD_kinds[0]", "domain"), ("ITK_original_spacing", "0.5 0.6 2")):
        img.SetMetaData(key, value)
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    assert b"dim[0] = 3" in (tmp_path / "a.mha").read_bytes()
    vol = load_volume(tmp_path / "a.mha")
    assert vol.spacing_mm == pytest.approx((2.0, 0.6, 0.5)) and vol.voxels.shape == (2, 3, 4)
    np.testing.assert_array_equal(vol.voxels, np.arange(24).reshape(2, 3, 4))
