"""Write small, valid DICOM series with pydicom, with geometry the test chooses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_series(folder: Path, volume: np.ndarray, *, spacing=(0.8, 0.7, 2.5), origin=(-50.0, -40.0, 10.0),
                 row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 1.0, 0.0), slope=1.0, intercept=-1024.0,
                 series_uid: str | None = None, study_uid: str | None = None, modality: str = "CT",
                 shuffle_names: bool = True, skip: tuple[int, ...] = ()) -> list[Path]:
    """`volume` is [z, y, x] stored values (before rescale). Files are named in a shuffled order so
    only ImagePositionPatient can order them. Returns the paths in true slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    n = volume.shape[0]
    names = np.random.default_rng(1).permutation(n) if shuffle_names else np.arange(n)
    paths = []
    for z in range(n):
        if z in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"img{int(names[z]):04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "Test^Phantom", "PHANTOM1"
        ds.InstanceNumber = int(n - z)  # deliberately reversed: must not be used for ordering
        pos = np.asarray(origin) + normal * spacing[2] * z
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]  # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(volume[z].astype(np.uint16)).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
