"""A small generated cohort with known answers: DICOM series and NIfTI files, each a bright
ellipsoid in a noisy background, plus optional corrupt studies. For tests, benchmarks and for
trying a cluster out before pointing it at real studies. Every UID is generated, no patient data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np



@dataclass(frozen=True)
class SyntheticStudy:
    name: str
    kind: str  # dicom | nifti
    path: str  # the series folder or the NIfTI file
    truth: np.ndarray | None  # (z, y, x) bool ellipsoid, None for corrupt studies
    corrupt: bool = False


def ellipsoid_volume(shape=(5, 64, 64), center=None, radii=(1.4, 14.0, 18.0), seed: int = 0,
                     background: float = 100.0, foreground: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    """(voxels float32 (z, y, x), truth bool): a bright ellipsoid, noise, and a dim second blob so the
    largest-object choice is not trivial."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = center or (shape[0] / 2 - 0.5, shape[1] / 2 + rng.uniform(-4, 4), shape[2] / 2 + rng.uniform(-4, 4))
    truth = ((z - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((x - c[2]) / radii[2]) ** 2 <= 1.0
    vox = np.full(shape, background, np.float32) + rng.normal(0, 15, shape).astype(np.float32)
    vox[truth] += foreground - background
    small = ((y - 8) ** 2 + (x - 8) ** 2 <= 9) & (np.abs(z - c[0]) <= 1)
    vox[small & ~truth] += 0.6 * (foreground - background)
    return vox, truth


def write_nifti(path: str | os.PathLike, voxels: np.ndarray, spacing=(0.9, 0.9, 3.0), origin=(-30.0, -25.0, 10.0)) -> Path:
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(voxels.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), True)
    return path


def write_dicom_series(folder: str | os.PathLike, voxels: np.ndarray, spacing=(0.8, 0.8, 2.5),
                       origin=(-25.6, -20.0, 40.0), study_uid: str | None = None, modality: str = "MR") -> list[Path]:
    """An axial single-frame series (one file per slice, written in shuffled order on purpose)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    nz, ny, nx = voxels.shape
    files = []
    for z in np.random.default_rng(nz).permutation(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"im{z:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Synthetic^Phantom", "SYNTH"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "080000", "1", ""
        ds.SeriesNumber, ds.Manufacturer = 1, "clinseg synthetic"
        ds.SeriesDescription = "synthetic ellipsoid"
        ds.InstanceNumber = int(z) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + float(z) * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = voxels[z].astype(np.int16).tobytes()
        p = folder / f"im{z:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    return files


def make_cohort(root: str | os.PathLike, n_dicom: int = 2, n_nifti: int = 2, corrupt: bool = True,
                shape=(5, 64, 64)) -> list[SyntheticStudy]:
    """Write the cohort under `root`: dicom/<name>/ series and nifti/<name>.nii.gz files. With
    `corrupt`, one more NIfTI whose gzip stream is cut short and one DICOM series missing a slice."""
    root = Path(root)
    studies: list[SyntheticStudy] = []
    for i in range(n_dicom):
        vox, truth = ellipsoid_volume(shape, seed=100 + i)
        folder = root / "dicom" / f"series{i:02d}"
        write_dicom_series(folder, vox)
        studies.append(SyntheticStudy(f"dicom{i:02d}", "dicom", str(folder), truth))
    for i in range(n_nifti):
        vox, truth = ellipsoid_volume(shape, seed=200 + i)
        p = write_nifti(root / "nifti" / f"case{i:02d}.nii.gz", vox)
        studies.append(SyntheticStudy(f"nifti{i:02d}", "nifti", str(p), truth))
    if corrupt:
        vox, _ = ellipsoid_volume(shape, seed=300)
        p = write_nifti(root / "nifti" / "broken.nii.gz", vox)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])  # a copy interrupted half way
        studies.append(SyntheticStudy("broken_nifti", "nifti", str(p), None, corrupt=True))
        folder = root / "dicom" / "gappy"
        files = write_dicom_series(folder, ellipsoid_volume(shape, seed=301)[0])
        sorted(files)[shape[0] // 2].unlink()  # a slice lost in transfer
        studies.append(SyntheticStudy("gappy_dicom", "dicom", str(folder), None, corrupt=True))
    return studies
