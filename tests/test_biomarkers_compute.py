"""Biomarkers from volumes: mask statistics and Dixon fat fraction on synthetic volumes of known
answer and on the pyradiomics reference case, PET SUV (body weight) with decay correction on a
synthetic DICOM of known answer and on real TCIA PET slices, refusal of every missing tag, CLI."""

import copy
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mmstream.biomarkers import BiomarkerStore
from mmstream.biomarkers import compute as C
from mmstream.cli import main
from mmstream.errors import InputError


def test_mask_statistics_known_answer(rng):
    img = rng.normal(100, 5, (6, 20, 30))
    mask = np.zeros(img.shape, np.uint8)
    mask[1:4, 5:15, 10:20] = 2
    mask[5, 0, 0] = 1
    st = C.mask_statistics(img, mask, (2.0, 0.5, 0.25), label=2)
    assert st.n_voxels == 300 and st.volume_mm3 == pytest.approx(300 * 0.25)
    assert st.mean == pytest.approx(img[1:4, 5:15, 10:20].mean()) and st.median == pytest.approx(np.median(img[1:4, 5:15, 10:20]))
    assert C.mask_statistics(img, mask, (1, 1, 1)).n_voxels == 301
    empty = C.mask_statistics(img, mask, (1, 1, 1), label=7)
    assert (empty.n_voxels, empty.mean, empty.median) == (0, None, None)
    with pytest.raises(InputError):
        C.mask_statistics(img, mask[:-1], (1, 1, 1))


def test_dixon_fat_fraction_per_label_known_answer():
    labels = np.zeros((2, 4, 4), np.int16)
    labels[:, :2] = 1
    labels[:, 2:] = 2
    fat = np.where(labels == 1, 30.0, 80.0)
    water = np.where(labels == 1, 70.0, 20.0)
    fat[0, 3, 3] = water[0, 3, 3] = 0.0  # no signal: excluded and counted
    ff = C.dixon_fat_fraction(fat, water, labels)
    assert ff[1].fat_fraction == pytest.approx(0.3) and ff[1].n_voxels == 16 and ff[1].n_excluded == 0
    assert ff[2].fat_fraction == pytest.approx(0.8) and ff[2].n_voxels == 15 and ff[2].n_excluded == 1
    with pytest.raises(InputError) as e:
        C.dixon_fat_fraction(-fat, water, labels)
    assert e.value.reason == "negative_magnitude"


def pyradiomics_baseline(folder, case: str) -> dict[str, float]:
    """PyRadiomics reference features of ``case`` from its baseline CSVs (ground truth)."""
    import csv

    out = {}
    for name in ("baseline_shape.csv", "baseline_firstorder.csv"):
        with open(folder / name, newline="") as f:
            for row in csv.DictReader(f):
                out[row["featureName"]] = row[case]
    return out


@pytest.mark.shared_data
def test_pyradiomics_brain1_and_breast1_reference_values(shared_data):
    """brain1: volume 16412.66 mm^3, mean 825.235; breast1 read from the baseline too (its mean is
    131.126: the 390.79 quoted in the data MANIFEST is the brain2 column)."""
    d = shared_data / "volumes" / "pyradiomics"
    for case in ("brain1", "breast1"):
        truth = pyradiomics_baseline(d, case)
        img, mask = C.read_volume(d / f"{case}_image.nrrd"), C.read_volume(d / f"{case}_label.nrrd")
        C.check_same_grid(img, mask)
        st = C.mask_statistics(img.voxels, mask.voxels, img.spacing_mm)
        assert st.n_voxels == int(truth["diagnostics_Mask-original_VoxelNum"])
        assert st.volume_mm3 == pytest.approx(float(truth["original_shape_VoxelVolume"]), rel=1e-9)
        assert st.mean == pytest.approx(float(truth["original_firstorder_Mean"]), rel=1e-9)
        assert st.median == pytest.approx(float(truth["original_firstorder_Median"]), rel=1e-9)
    assert float(pyradiomics_baseline(d, "brain1")["original_firstorder_Mean"]) == pytest.approx(825.235, abs=1e-3)
    other = C.read_volume(d / "breast1_label.nrrd")
    with pytest.raises(InputError) as e:
        C.check_same_grid(C.read_volume(d / "brain1_image.nrrd"), other)
    assert e.value.reason == "grid_mismatch"


def pet_dataset(path, activity_bq_ml=5000.0, weight_kg=70.0, dose_bq=3.7e8, half_life_s=6586.2, delay_s=3600.0, slope=0.5,
                z_mm=0.0, uids=None):  # fmt: skip
    """A one-slice PET DICOM whose SUVbw is known: activity * weight_g / (dose * 2**(-delay/T))."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Modality, ds.Units, ds.DecayCorrection, ds.CorrectedImage = "PT", "BQML", "START", ["ATTN", "DECY", "SCAT"]
    ds.PatientWeight = weight_kg
    injection = dt.datetime(2026, 3, 4, 9, 0, 0)
    series = injection + dt.timedelta(seconds=delay_s)
    ds.SeriesDate = ds.AcquisitionDate = series.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = series.strftime("%H%M%S.%f")
    rp = Dataset()
    rp.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
    rp.RadionuclideTotalDose, rp.RadionuclideHalfLife = dose_bq, half_life_s
    ds.RadiopharmaceuticalInformationSequence = [rp]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids or (generate_uid(), generate_uid(), generate_uid())
    ds.Rows, ds.Columns, ds.PixelSpacing, ds.SliceThickness = 4, 4, [4.0, 4.0], 4.0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z_mm], [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.PixelData = np.full((4, 4), activity_bq_ml / slope, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    expected = activity_bq_ml * weight_kg * 1000 / (dose_bq * 2 ** (-delay_s / half_life_s))
    return ds, expected


def test_pet_suv_known_answer_with_decay_correction(tmp_path):
    ds, expected = pet_dataset(tmp_path / "pet.dcm")
    f = C.suv_bw_factor(ds)
    assert f.delay_s == pytest.approx(3600.0) and f.decay_correction == "START"
    suv, factor = C.pet_suv_volume(tmp_path / "pet.dcm")
    assert suv.voxels.shape == (1, 4, 4) and np.allclose(suv.voxels, expected, rtol=1e-9)
    assert expected == pytest.approx(5000 * 70000 / 3.7e8 * 2 ** (3600 / 6586.2))  # ~1.37 g/mL
    ds.DecayCorrection = "ADMIN"  # images decay-corrected to the injection: no further correction
    assert C.suv_bw_factor(ds).factor_g_per_bq == pytest.approx(70000 / 3.7e8)


def test_pet_suv_of_a_series_folder_and_files_that_disagree(tmp_path):
    uids = (generate_uid(), generate_uid(), generate_uid())
    (tmp_path / "s").mkdir()
    for k in range(3):
        _, expected = pet_dataset(tmp_path / "s" / f"{k}.dcm", activity_bq_ml=1000.0 * (k + 1), z_mm=4.0 * k, uids=uids)
    suv, _ = C.pet_suv_volume(tmp_path / "s")
    assert suv.voxels.shape == (3, 4, 4) and suv.spacing_mm[0] == pytest.approx(4.0)
    assert np.allclose(suv.voxels[:, 0, 0], [expected / 3, 2 * expected / 3, expected], rtol=1e-9)
    pet_dataset(tmp_path / "s" / "3.dcm", activity_bq_ml=1000.0, weight_kg=80.0, z_mm=12.0, uids=uids)
    with pytest.raises(InputError) as e:
        C.pet_suv_volume(tmp_path / "s")
    assert e.value.reason == "unsupported_pet"


@pytest.mark.parametrize(
    "change,reason",
    [(lambda d: delattr(d, "PatientWeight"), "missing_tag"), (lambda d: delattr(d, "Units"), "missing_tag"),
     (lambda d: delattr(d, "SeriesTime"), "missing_tag"), (lambda d: delattr(d, "DecayCorrection"), "missing_tag"),
     (lambda d: delattr(d.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose"), "missing_tag"),
     (lambda d: delattr(d.RadiopharmaceuticalInformationSequence[0], "RadionuclideHalfLife"), "missing_tag"),
     (lambda d: delattr(d.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartTime"), "missing_tag"),
     (lambda d: delattr(d, "RadiopharmaceuticalInformationSequence"), "missing_tag"),
     (lambda d: setattr(d, "Units", "CNTS"), "unsupported_pet"), (lambda d: setattr(d, "DecayCorrection", "NONE"), "unsupported_pet"),
     (lambda d: setattr(d, "CorrectedImage", ["ATTN"]), "unsupported_pet"), (lambda d: setattr(d, "PatientWeight", 0), "invalid_tag"),
     # non-finite or malformed numbers, and times not given to the second: never a silently wrong SUV
     (lambda d: setattr(d, "PatientWeight", "NaN"), "invalid_tag"), (lambda d: setattr(d, "PatientWeight", "inf"), "invalid_tag"),
     (lambda d: setattr(d.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose", "nan"), "invalid_tag"),
     (lambda d: setattr(d.RadiopharmaceuticalInformationSequence[0], "RadionuclideHalfLife", "inf"), "invalid_tag"),
     (lambda d: setattr(d, "SeriesTime", "10:00:00"), "invalid_tag"), (lambda d: setattr(d, "SeriesDate", "2026-03-04"), "invalid_tag"),
     (lambda d: setattr(d.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartDateTime", "20260304"), "invalid_tag"),
     (lambda d: setattr(d.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartTime", "09"), "invalid_tag"),
     (lambda d: setattr(d, "Modality", "CT"), "unsupported_pet"), (lambda d: setattr(d, "AcquisitionTime", "080000"), "unsupported_pet"),
     (lambda d: setattr(d.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartTime", "235959"), "unsupported_pet")],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values these cases set
def test_pet_suv_refuses_missing_or_inconsistent_tags(tmp_path, change, reason):
    ds, _ = pet_dataset(tmp_path / "pet.dcm")
    ds = copy.deepcopy(ds)
    change(ds)
    with pytest.raises(InputError) as e:
        C.suv_bw_factor(ds)
    assert e.value.reason == reason


@pytest.mark.shared_data
def test_real_tcia_pet_slices(shared_data):
    d = shared_data / "volumes" / "tcia_via_suyashkumar_dicom"
    for name in ("PET_ACRIN-FLT-Breast_1.dcm", "PET_ACRIN-FLT-Breast_2.dcm"):
        ds = pydicom.dcmread(d / name)
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        suv, f = C.pet_suv_volume(d / name)
        # independent recomputation from the tags (FLT, 18F half-life 6586.2 s in both files)
        delay = (dt.datetime.strptime(ds.SeriesDate + ds.SeriesTime.split(".")[0], "%Y%m%d%H%M%S")
                 - dt.datetime.strptime(ds.SeriesDate + rp.RadiopharmaceuticalStartTime.split(".")[0], "%Y%m%d%H%M%S")).total_seconds()  # fmt: skip
        expected = ds.pixel_array * float(ds.RescaleSlope) * float(ds.PatientWeight) * 1000 / (
            float(rp.RadionuclideTotalDose) * 2 ** (-delay / float(rp.RadionuclideHalfLife)))  # fmt: skip
        assert abs(f.delay_s - delay) < 1.0
        assert np.allclose(suv.voxels[0], expected, rtol=1e-3, atol=1e-6)
        assert 0 < suv.voxels.max() < 20  # a plausible SUVmax for a tumour, not a scale error


@pytest.mark.shared_data
def test_cli_compute_stores_records(shared_data, tmp_path, capsys):
    d = shared_data / "volumes" / "pyradiomics"
    db = tmp_path / "b.db"
    args = ["biomarkers", "compute", "stats", str(d / "brain1_image.nrrd"), str(d / "brain1_label.nrrd"), "--patient", "P9",
            "--site", "brain_lesion", "--date", "2026-01-05"]  # fmt: skip
    assert main(args) == 2  # an NRRD does not say its modality: never stored as MRI by default
    assert "give --modality" in capsys.readouterr().err
    args.append("--modality=MRI")
    assert main(args) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {p["biomarker"]: round(p["value"], 3) for p in printed} == {"volume_mm3": 16412.659, "mask_mean": 825.235,
                                                                         "mask_median": 812.0}  # fmt: skip
    assert main([*args, "--db", str(db)]) == 0 and main([*args, "--db", str(db)]) == 0
    assert "0 added, 3 duplicate" in capsys.readouterr().out
    assert len(BiomarkerStore(db).query("P9")) == 3
    pet = shared_data / "volumes" / "tcia_via_suyashkumar_dicom" / "PET_ACRIN-FLT-Breast_1.dcm"
    common = ["--patient", "P9", "--site", "breast", "--date", "2026-01-05"]
    assert main(["biomarkers", "compute", "suv", str(pet), *common, "--modality", "PET"]) == 2
    assert "--tracer" in capsys.readouterr().err
    # without a mask: refused (it used to store the whole field of view's SUV under --site)
    assert main(["biomarkers", "compute", "suv", str(pet), *common, "--tracer", "FLT", "--db", str(db)]) == 2
    assert "suv needs PET MASK" in capsys.readouterr().err and not BiomarkerStore(db).query("P9", site="breast")
    whole = mask_on_grid(pet, tmp_path / "whole.nrrd", np.s_[:])  # the whole slice, stated as such
    assert main(["biomarkers", "compute", "suv", str(pet), str(whole), *common, "--tracer", "FLT", "--db", str(db)]) == 0
    assert "--date 2026-01-05 differs from the file's acquisition date 1960-06-14" in capsys.readouterr().err
    suv = {r.biomarker: r for r in BiomarkerStore(db).query("P9", site="breast")}
    assert suv["pet_suv_max"].value == pytest.approx(7.19, abs=0.01) and suv["pet_suv_max"].tracer == "FLT"
    assert main(["biomarkers", "compute", "suv", str(pet.parent), str(whole), *common, "--tracer", "FLT"]) == 1
    assert "the folder holds 3 DICOM series" in capsys.readouterr().err
    # mask statistics of a PET image (its modality from the file): the region's volume is a PET record too
    assert main(["biomarkers", "compute", "stats", str(pet), str(whole), *common]) == 0
    assert {json.loads(line)["modality"] for line in capsys.readouterr().out.splitlines()} == {"PET"}


def test_cli_compute_stats_records_no_volume_from_an_unknown_unit(tmp_path, capsys):
    """A NIfTI whose header gives no spatial unit: ITK takes mm; no volume_mm3 is stored from that."""
    from volume_makers import write_nifti1

    sform = np.diag([2.0, 2.0, 3.0, 1.0])
    for units, name in ((0, "unknown"), (2, "mm")):
        write_nifti1(tmp_path / f"img_{name}.nii", np.full((4, 5, 6), 7, np.int16), sform, xyzt_units=units)
        write_nifti1(tmp_path / f"mask_{name}.nii", np.ones((4, 5, 6), np.uint8), sform, xyzt_units=units)
        assert main(["biomarkers", "compute", "stats", str(tmp_path / f"img_{name}.nii"), str(tmp_path / f"mask_{name}.nii"),
                     "--patient", "P5", "--site", "soleus", "--date", "2026-01-05", "--modality", "MRI"]) == 0  # fmt: skip
        out, err = capsys.readouterr()
        got = {json.loads(line)["biomarker"] for line in out.splitlines()}
        if name == "unknown":
            assert "volume_mm3" not in got and "gives no spatial unit" in err
        else:
            assert "volume_mm3" in got and err == ""


def _compute_stats(tmp_path, img, mask, capsys) -> tuple[dict, str]:
    assert main(["biomarkers", "compute", "stats", str(img), str(mask), "--patient", "P5", "--site", "soleus",
                 "--date", "2026-01-05", "--modality", "MRI"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    return {json.loads(line)["biomarker"]: json.loads(line)["value"] for line in out.splitlines()}, err


@pytest.mark.shared_data
def test_cli_compute_stats_reads_the_nrrd_spacedirections_spelling(tmp_path, capsys, shared_data):
    """teem reads 'spacedirections' as 'space directions': a spacing, and the volume is recorded."""
    src = shared_data / "volumes" / "pyradiomics"
    for n in ("breast1_image", "breast1_label"):
        head, data = (src / f"{n}.nrrd").read_bytes().split(b"\n\n", 1)
        (tmp_path / f"{n}.nrrd").write_bytes(head.replace(b"space directions:", b"spacedirections:") + b"\n\n" + data)
    got, err = _compute_stats(tmp_path, tmp_path / "breast1_image.nrrd", tmp_path / "breast1_label.nrrd", capsys)
    assert got["volume_mm3"] == pytest.approx(132.4258, rel=1e-4) and err == ""


@pytest.mark.parametrize("case", ["negative_pixdim", "sform_and_pixdim"])
def test_cli_compute_stats_records_a_volume_from_every_nifti_spacing_itk_reads(tmp_path, capsys, case):
    """ITK's spacing is |pixdim| (a negative one flips the axis): a spacing, and the volume is
    recorded."""
    from volume_makers import write_nifti1

    pixdim, sform, codes = {
        "negative_pixdim": ((-2.0, 3.0, 4.0), np.diag([2.0, 3.0, 4.0, 1.0]), {"qform_code": 1, "sform_code": 0}),
        "sform_and_pixdim": ((2.0, 3.0, 4.0), np.diag([2.0, 3.0, 4.0, 1.0]), {}),
    }[case]
    for name, value in (("img", 7), ("mask", 1)):
        write_nifti1(tmp_path / f"{name}.nii", np.full((4, 5, 6), value, np.int16), sform, pixdim=pixdim, **codes)
    got, err = _compute_stats(tmp_path, tmp_path / "img.nii", tmp_path / "mask.nii", capsys)
    assert got["volume_mm3"] == pytest.approx(120 * 24.0) and "no volume_mm3" not in err


@pytest.mark.parametrize("fmt", ["mha", "nrrd", "nii"])
def test_cli_compute_stats_records_no_volume_from_a_header_without_spacing(tmp_path, capsys, fmt):
    """A MetaImage without ElementSpacing, a NRRD without spacings or space directions, a NIfTI
    with pixdim 0 and no sform (with an sform, its scales are the spacing: test_volumes_geometry.py):
    ITK's 1 mm is a guess; no volume_mm3 is stored from it."""
    from volume_makers import write_nifti1

    raw = np.full((6, 5, 4), 7, np.int16).tobytes()
    ext = "nii" if fmt.startswith("nii") else fmt
    img, mask = tmp_path / f"img.{ext}", tmp_path / f"mask.{ext}"
    for path, data in ((img, raw), (mask, np.ones((6, 5, 4), np.uint8).tobytes())):
        etype = "MET_SHORT" if path is img else "MET_UCHAR"
        if fmt == "mha":
            path.write_bytes(f"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = {etype}\n"
                             "ElementDataFile = LOCAL\n".encode() + data)  # fmt: skip
        elif fmt == "nrrd":
            kind = "short" if path is img else "uchar"
            path.write_bytes(f"NRRD0004\ntype: {kind}\ndimension: 3\nsizes: 4 5 6\nendian: little\n"
                             "encoding: raw\n\n".encode() + data)  # fmt: skip
        else:
            arr = np.frombuffer(data, np.int16 if path is img else np.uint8).reshape(6, 5, 4).transpose(2, 1, 0)
            write_nifti1(path, arr, np.diag([2.0, 3.0, 4.0, 1.0]), pixdim=(0.0, 0.0, 0.0), qform_code=0, sform_code=0)
    assert main(["biomarkers", "compute", "stats", str(img), str(mask), "--patient", "P5", "--site", "soleus",
                 "--date", "2026-01-05", "--modality", "MRI"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    got = {json.loads(line)["biomarker"] for line in out.splitlines()}
    assert "volume_mm3" not in got and "mask_mean" in got and "no spatial unit or voxel spacing" in err


def mask_on_grid(volume_path, out, region) -> Path:
    """A label mask (1 inside ``region`` of the (K, J, I) array) on the grid of the volume at
    ``volume_path``, written as NRRD (ITK and mmstream share LPS)."""
    import SimpleITK as sitk

    from mmstream.biomarkers.compute import read_volume

    v = read_volume(volume_path)
    mask = np.zeros(v.voxels.shape, np.uint8)
    mask[region] = 1
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing([float(x) for x in v.spacing_mm[::-1]])
    img.SetOrigin([float(x) for x in v.origin_lps_mm])
    img.SetDirection([float(x) for x in np.ravel(v.direction_lps)])
    sitk.WriteImage(img, str(out))
    return out


@pytest.mark.shared_data
def test_cli_compute_stats_takes_the_modality_from_dicom_and_refuses_a_contrary_one(shared_data, tmp_path, capsys):

    mr = shared_data / "volumes" / "pydicom" / "MR_small.dcm"
    mask = mask_on_grid(mr, tmp_path / "mask.nrrd", np.s_[:, 2:10, 2:10])
    args = ["biomarkers", "compute", "stats", str(mr), str(mask), "--patient", "P4", "--site",
            "soleus", "--date", "2026-01-05"]  # fmt: skip
    assert main(args) == 0
    assert {json.loads(line)["modality"] for line in capsys.readouterr().out.splitlines()} == {"MRI"}
    assert main([*args, "--modality", "CT"]) == 2
    assert "--modality CT but MR_small.dcm is DICOM MR" in capsys.readouterr().err


def test_cli_compute_fat_fraction_and_stats_on_written_volumes(tmp_path, capsys):
    import SimpleITK as sitk

    def write(arr, name):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.5, 3.0))  # (i, j, k) in ITK order
        sitk.WriteImage(img, str(tmp_path / name))
        return str(tmp_path / name)

    labels = np.zeros((3, 8, 8), np.uint8)
    labels[:, :4] = 1
    labels[:, 4:] = 2
    fat = write(np.where(labels == 1, 10.0, 60.0).astype(np.float32), "fat.nrrd")
    water = write(np.where(labels == 1, 90.0, 40.0).astype(np.float32), "water.nrrd")
    lab = write(labels, "labels.nrrd")
    common = ["--patient", "P3", "--side", "left", "--date", "2026-02-02"]
    assert main(["biomarkers", "compute", "fat-fraction", fat, water, lab, "--labels", "1=tibialis_anterior,2=soleus",
                 *common]) == 0  # fmt: skip
    got = {r["site"]: r["value"] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert got == {"tibialis_anterior": pytest.approx(0.1), "soleus": pytest.approx(0.6)}
    # a label asked for but absent, a malformed --labels, a missing file: errors, never a shorter result
    assert main(["biomarkers", "compute", "fat-fraction", fat, water, lab, "--labels", "1=tibialis_anterior,3=gastrocnemius",
                 *common]) == 1  # fmt: skip
    out = capsys.readouterr()
    assert out.out == "" and "3=gastrocnemius (not in the label map)" in out.err
    for labels_arg in ("1=tibialis_anterior,soleus", "x=soleus"):
        assert main(["biomarkers", "compute", "fat-fraction", fat, water, lab, "--labels", labels_arg, *common]) == 2
        assert "is not N=site" in capsys.readouterr().err
    assert main(["biomarkers", "compute", "fat-fraction", str(tmp_path / "none.nrrd"), water, lab, "--labels", "1=soleus",
                 *common]) == 1  # fmt: skip
    assert "not_found" in capsys.readouterr().err
    t2 = write(np.full((3, 8, 8), 41.5, np.float32), "t2.nrrd")
    assert main(["biomarkers", "compute", "stats", t2, lab, "--label", "2", "--site", "soleus", "--biomarker",
                 "t2_water_ms", "--unit", "ms", "--modality", "MRI", *common]) == 0  # fmt: skip
    got = {r["biomarker"]: r["value"] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert got == {"volume_mm3": pytest.approx(96 * 0.75), "t2_water_ms": pytest.approx(41.5)}
    other = write(np.zeros((3, 8, 9), np.uint8), "other.nrrd")
    assert main(["biomarkers", "compute", "stats", t2, lab, "--site", "soleus", "--biomarker", "t2_water_ms",
                 "--modality", "MRI", *common]) == 2  # fmt: skip
    assert "--biomarker and --unit go together" in capsys.readouterr().err
    assert main(["biomarkers", "compute", "stats", t2, other, "--site", "soleus", "--modality", "MRI", *common]) == 1
    assert "grid_mismatch" in capsys.readouterr().err


def test_a_mask_or_label_map_must_hold_finite_whole_numbers():
    """A float label map resampled with linear interpolation (1.0 and 1.5: int(1.5) is 1, so the
    1.5 voxels' fat fraction 0.9 used to replace label 1's 0.1), NaN labels (a ValueError traceback)
    and a NaN mask background (NaN != 0: counted inside, 6 voxels instead of 2) are refused."""
    lab = np.zeros((1, 2, 4))
    lab[0, 0, :], lab[0, 1, :] = 1.0, 1.5
    fat = np.where(lab == 1.0, 10.0, 90.0)
    for labels, what in ((lab, "4 voxel(s) that are not whole numbers (e.g. 1.5)"),
                         (np.where(lab == 1.5, np.nan, lab), "4 NaN or inf")):  # fmt: skip
        with pytest.raises(InputError) as e:
            C.dixon_fat_fraction(fat, 100.0 - fat, labels)
        assert e.value.reason == "invalid_labels" and what in str(e.value)
    whole = np.where(lab == 1.5, 2.0, lab)  # whole numbers in a float map are labels
    ff = C.dixon_fat_fraction(fat, 100.0 - fat, whole)
    assert (ff[1].fat_fraction, ff[2].fat_fraction) == (pytest.approx(0.1), pytest.approx(0.9))
    img = np.arange(8.0).reshape(1, 2, 4)
    mask = np.zeros((1, 2, 4))
    mask[0, 0, :2] = 1
    for bad in (np.where(mask == 0, np.nan, mask), np.where(mask == 0, np.inf, mask), mask * 0.5):
        with pytest.raises(InputError) as e:
            C.mask_statistics(img, bad, (1, 1, 1))
        assert e.value.reason == "invalid_labels"
    st = C.mask_statistics(img, mask, (1, 1, 1))
    assert (st.n_voxels, st.mean) == (2, 0.5)


def test_non_finite_voxels_in_the_region_are_refused_never_averaged_or_excluded():
    """A NaN inside the region is refused (``non_finite_voxels``); in the Dixon inputs it is not
    "no signal" either (it used to be excluded as F + W == 0 and counted in n_excluded). Outside
    the region it does not matter."""
    t2 = np.full((2, 4, 4), 40.0)
    t2[0, :2, :] = np.nan
    mask = np.ones((2, 4, 4), np.uint8)
    with pytest.raises(InputError) as e:
        C.mask_statistics(t2, mask, (1, 1, 1))
    assert e.value.reason == "non_finite_voxels" and "8 of the 32 voxels" in str(e.value)
    mask[0, :2, :] = 0  # the failed fits taken out of the mask: the rest is measured
    assert C.mask_statistics(t2, mask, (1, 1, 1)).mean == 40.0
    fat, water = np.full((2, 4, 4), 20.0), np.full((2, 4, 4), 80.0)
    for bad in (np.nan, np.inf):
        w = water.copy()
        w[0, 0, 0] = bad
        with pytest.raises(InputError) as e:
            C.dixon_fat_fraction(fat, w, np.ones((2, 4, 4), np.uint8))
        assert e.value.reason == "non_finite_voxels" and str(e.value).startswith("water image: 1 of the 32")
        outside = np.ones((2, 4, 4), np.uint8)
        outside[0, 0, 0] = 0
        assert C.dixon_fat_fraction(fat, w, outside)[1].fat_fraction == pytest.approx(0.2)


def _write(tmp_path, arr, name, spacing=(1.0, 1.0, 2.0)):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(tmp_path / name))
    return str(tmp_path / name)


def test_cli_compute_refuses_bad_label_maps_and_non_finite_voxels_in_one_line(tmp_path, capsys):
    """The auditor's files: a NRRD label map with NaN outside the muscle (a ValueError traceback),
    a float mask with a NaN background (volume 64 mm3 instead of 4), a NIfTI T2 map with NaN
    voxels (ITK read them as 0: 30.0 ms stored instead of refusing, where the same NRRD was
    refused), a NIfTI Dixon water image with NaN (fat fraction 0.40 over the finite ones' 0.20)."""
    common = ["--patient", "P1", "--date", "2026-01-01"]
    lab = np.full((2, 4, 4), np.nan, np.float32)
    lab[:, :2, :] = 1
    fat, water = np.full((2, 4, 4), 20.0, np.float32), np.full((2, 4, 4), 80.0, np.float32)
    f, w = _write(tmp_path, fat, "fat.nrrd"), _write(tmp_path, water, "water.nrrd")
    lab_nan = _write(tmp_path, lab, "lab.nrrd")
    assert main(["biomarkers", "compute", "fat-fraction", f, w, lab_nan, "--labels", "1=soleus", *common]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmstream biomarkers compute: error: invalid_labels: label map holds 16 NaN")
    assert err.count("\n") == 1  # one line, no traceback
    img = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    m = np.full((2, 4, 4), np.nan, np.float32)
    m[0, 0, :2] = 1
    stats = ["biomarkers", "compute", "stats", "--site", "soleus", "--modality", "MRI", *common]
    assert main([*stats, _write(tmp_path, img, "img.nrrd"), _write(tmp_path, m, "mask.nrrd")]) == 1
    assert "invalid_labels: mask holds 30 NaN or inf voxel(s)" in capsys.readouterr().err
    t2 = np.full((2, 4, 4), 40.0, np.float32)
    t2[0, :2, :] = np.nan
    ones = _write(tmp_path, np.ones((2, 4, 4), np.uint8), "mask.nii")
    for ext in ("nii", "nii.gz", "nrrd"):  # the same refusal whatever the format
        assert main([*stats, _write(tmp_path, t2, f"t2.{ext}"), ones, "--biomarker", "t2_water_ms", "--unit", "ms"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "non_finite_voxels: image: 8 of the 32 voxels in the mask are NaN or inf" in err
    water[0, :2, :] = np.nan
    w = _write(tmp_path, water, "water.nii")
    assert main(["biomarkers", "compute", "fat-fraction", _write(tmp_path, fat, "fat.nii"), w, ones, "--labels", "1=soleus",
                 *common]) == 1  # fmt: skip
    assert "non_finite_voxels: water image: 8 of the 32 voxels" in capsys.readouterr().err
    water[0, :2, :] = 0.0
    fat[0, 0, :] = 0.0  # 4 voxels without signal: excluded, and the record says so
    f, w = _write(tmp_path, fat, "fat.nii"), _write(tmp_path, water, "water.nii")
    assert main(["biomarkers", "compute", "fat-fraction", f, w, ones, "--labels", "1=soleus", *common]) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rec["method"] == "Dixon mean F/(F+W) in label 1: 28 voxels, 4 without signal (F+W = 0) excluded"
    assert rec["value"] == pytest.approx((4 * 1.0 + 24 * 0.2) / 28)


def test_cli_compute_takes_one_volume_of_a_4d_file_with_index_4d(tmp_path, capsys):
    """The 4-D refusal names --index-4d: compute has it (a 3-D input is read whole)."""
    import SimpleITK as sitk

    vols = [sitk.GetImageFromArray(np.full((2, 3, 4), v, np.float32)) for v in (10.0, 20.0)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "t2_4d.nii.gz"))
    mask = _write(tmp_path, np.ones((2, 3, 4), np.float32), "mask.nii", spacing=(1.0, 1.0, 1.0))
    args = ["biomarkers", "compute", "stats", str(tmp_path / "t2_4d.nii.gz"), mask, "--site", "soleus", "--modality", "MRI",
            "--patient", "P1", "--date", "2026-01-01", "--biomarker", "t2_water_ms", "--unit", "ms"]  # fmt: skip
    assert main(args) == 1
    assert "4-D file with 2 volumes; choose one, 0 to 1, with index_4d (--index-4d)" in capsys.readouterr().err
    assert main([*args, "--index-4d", "1"]) == 0
    got = {r["biomarker"]: r["value"] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert got == {"volume_mm3": 24.0, "t2_water_ms": 20.0}


def test_cli_compute_stores_the_source_tag_never_the_folder_name(tmp_path, capsys):
    """PACS exports name folders after the patient: the store (and list, export) has the tag."""
    from mmstream.privacy import file_tag

    series = tmp_path / "Doe_Jane_19610203"
    series.mkdir()
    uids = (generate_uid(), generate_uid(), generate_uid())
    for k in range(3):
        pet_dataset(series / f"{k}.dcm", z_mm=4.0 * k, uids=uids)
    mask = _write(tmp_path, np.ones((3, 4, 4), np.uint8), "mask.nrrd", spacing=(4.0, 4.0, 4.0))
    db = str(tmp_path / "bio.db")
    assert main(["biomarkers", "compute", "suv", str(series), mask, "--tracer", "FDG", "--patient", "PSEUDO01", "--site",
                 "soleus", "--date", "2026-03-04", "--db", db]) == 0  # fmt: skip
    assert main(["biomarkers", "export", "--db", db]) == 0 and main(["biomarkers", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "Doe_Jane" not in out and out.count(file_tag(series)) == 4
    with BiomarkerStore(db) as s:
        assert {r.source_file for r in s.query()} == {file_tag(series)}
        assert s._db.execute("SELECT source_file FROM imports").fetchall() == [(file_tag(series),)]
