"""Synthetic DICOM CT series for the RT/SEG tests (written with pydicom; no external data)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ct_series(folder: Path, n: int = 6, rows: int = 48, cols: int = 64, spacing=(0.8, 1.1), dz: float = 2.5,
                    origin=(-30.0, -20.0, 100.0), orientation=(1, 0, 0, 0, 1, 0), seed: int = 0) -> Path:
    """n slices rows x cols, anisotropic pixels, offset origin. orientation: ImageOrientationPatient."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row_dir = np.array(orientation[:3], float)
    col_dir = np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    for k in range(n):
        ds = Dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.preamble = b"\x00" * 128
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PHANTOM1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.Manufacturer = "synthetic"
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        pos = np.asarray(origin, float) + normal * dz * k
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # DICOM: row spacing (y), column spacing (x)
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (rng.integers(900, 1100, (rows, cols)).astype(np.int16)).tobytes()
        pydicom.dcmwrite(folder / f"ct{k:03d}.dcm", ds, enforce_file_format=True)
    return folder


def asymmetric_masks(shape) -> dict[str, np.ndarray]:
    """Shapes that reveal any flip/rotation/slice-order error: an 'F', a ring with an island, a
    diagonal blob touching the image border, all different on each slice."""
    nz, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    f = np.zeros(shape, bool)
    ring = np.zeros(shape, bool)
    edge = np.zeros(shape, bool)
    for z in range(1, nz - 1):
        f[z, 5:30, 6:10] = True  # stem
        f[z, 5:9, 6:25 + z] = True  # top bar, longer on later slices
        f[z, 15:18, 6:18] = True  # middle bar
        r = np.hypot(yy - 30, xx - 45)
        ring[z] = (r <= 12) & (r > 6 + (z % 2))
        ring[z] |= r <= 2  # island inside the hole
        ring[z, 30, 58:62] = True  # a one-pixel-wide spur
        ring[z, 42, 12] = True  # an isolated pixel
        ring[z, 43, 13] = True  # touching the previous one only diagonally
        edge[z] = (xx + 2 * yy < 20 + 3 * z)  # touches the top-left border
    return {"F-shape": f, "Ring": ring, "Edge": edge}
