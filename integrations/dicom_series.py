"""DICOM series and single files -> `Volume`, with the geometry taken from the headers.

Slices are ordered along the slice normal (cross product of ImageOrientationPatient's two vectors)
by ImagePositionPatient, never by file name or InstanceNumber, which scanners get wrong.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .errors import (
    EmptyFileError,
    ImageTooLargeError,
    InconsistentGeometryError,
    MissingSlicesError,
    MixedSeriesError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from .volume import DicomReference, Volume

log = logging.getLogger(__name__)

_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose is an image, but not one to segment on
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
}


@dataclass
class _Header:
    path: str
    ds: pydicom.Dataset


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICM preamble or parses as (preamble-less) DICOM."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return _read_without_preamble(str(path)) is not None


def _read_header(path: str) -> pydicom.Dataset:
    if os.path.getsize(path) == 0:
        raise EmptyFileError(f"{Path(path).name}: the file is empty (0 bytes). Re-export or re-copy it.")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as e:
        # Older files often lack the 128-byte preamble; accept them if they parse as a real dataset.
        ds = _read_without_preamble(path)
        if ds is None:
            raise UnreadableFileError(f"{Path(path).name}: not a DICOM file ({e}).") from e
        return ds
    except Exception as e:  # pydicom raises several types for damaged headers
        raise UnreadableFileError(f"{Path(path).name}: the DICOM header cannot be read ({type(e).__name__}: {e}).") from e


def _read_without_preamble(path: str) -> pydicom.Dataset | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None
    return ds if ("SOPClassUID" in ds or "Modality" in ds) else None


def _check_size(ds: pydicom.Dataset, name: str, max_slice_pixels: int) -> None:
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise UnreadableFileError(f"{name}: the DICOM file has no image (Rows/Columns missing).")
    if rows * cols > max_slice_pixels:
        raise ImageTooLargeError(
            f"{name}: {cols}x{rows} pixels exceeds the limit of {max_slice_pixels} pixels per slice. "
            "Downsample the image or raise max_slice_pixels if the machine has the memory."
        )


def _pixels(path: str, name: str) -> tuple[pydicom.Dataset, np.ndarray]:
    try:
        ds = pydicom.dcmread(path, force=_read_without_preamble(path) is not None)
    except Exception as e:
        raise UnreadableFileError(f"{name}: the DICOM file cannot be read ({type(e).__name__}: {e}).") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnreadableFileError(f"{name}: the DICOM file has no pixel data.")
    try:
        arr = ds.pixel_array
    except ValueError as e:
        msg = str(e)
        if "length" in msg.lower() or "truncat" in msg.lower() or "expected" in msg.lower():
            raise TruncatedFileError(f"{name}: the pixel data is shorter than the header says; the file is truncated ({msg}).") from e
        raise UnreadableFileError(f"{name}: the pixel data cannot be decoded ({msg}).") from e
    except (RuntimeError, NotImplementedError) as e:
        ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
        raise UnreadableFileError(
            f"{name}: the pixel data cannot be decoded (transfer syntax {getattr(ts, 'name', ts)}): {e}. "
            "Re-export the series uncompressed or as JPEG/JPEG 2000/RLE."
        ) from e
    except Exception as e:
        raise UnreadableFileError(f"{name}: the pixel data cannot be decoded ({type(e).__name__}: {e}).") from e
    return ds, arr


def _rescale(arr: np.ndarray, slope, intercept) -> np.ndarray:
    out = arr.astype(np.float32)
    slope = float(slope) if slope not in (None, "") else 1.0
    intercept = float(intercept) if intercept not in (None, "") else 0.0
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _monochrome1_to_2(vox: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    # MONOCHROME1 shows high values dark; flip so every volume displays the MONOCHROME2 way.
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        return (vox.max() + vox.min()) - vox
    return vox


def _orientation(ds: pydicom.Dataset) -> np.ndarray | None:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    v = np.asarray([float(x) for x in iop], dtype=float)
    row, col = v[:3], v[3:]
    normal = np.cross(row, col)
    return np.stack([row, col, normal], axis=1)


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    if ps is None or len(ps) != 2:
        return 1.0, 1.0
    row_spacing, col_spacing = float(ps[0]), float(ps[1])  # between rows (y), between columns (x)
    return col_spacing, row_spacing


def _reference(headers: list[pydicom.Dataset], files: list[str]) -> DicomReference:
    first = headers[0]
    return DicomReference(
        study_instance_uid=str(getattr(first, "StudyInstanceUID", "")),
        series_instance_uid=str(getattr(first, "SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.FrameOfReferenceUID) if "FrameOfReferenceUID" in first else None,
        sop_class_uid=str(getattr(first, "SOPClassUID", "")),
        sop_instance_uids=tuple(str(getattr(h, "SOPInstanceUID", "")) for h in headers),
        files=tuple(files),
        series_description=str(getattr(first, "SeriesDescription", "")),
    )


def read_dicom_file(path: str | os.PathLike, max_slice_pixels: int) -> Volume:
    """One DICOM file: a single slice or a multi-frame (enhanced) image."""
    path = str(path)
    name = Path(path).name
    header = _read_header(path)
    _check_size(header, name, max_slice_pixels)
    n_frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    if n_frames > 1:
        return _read_multiframe(path, name, max_slice_pixels)
    return _series_from_headers([_Header(path, header)], name, max_slice_pixels)


def _frame_geometry(ds: pydicom.Dataset, i: int):
    """(position, orientation, spacing_xy, slope, intercept) for frame i of an enhanced image."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per = ds.get("PerFrameFunctionalGroupsSequence")
    frame = per[i] if per is not None and i < len(per) else None

    def find(seq_name: str, attr: str):
        for group in (frame, shared):
            if group is not None and seq_name in group and len(group[seq_name].value) > 0:
                item = group[seq_name].value[0]
                if attr in item:
                    return item[attr].value
        return getattr(ds, attr, None)

    pos = find("PlanePositionSequence", "ImagePositionPatient")
    iop = find("PlaneOrientationSequence", "ImageOrientationPatient")
    ps = find("PixelMeasuresSequence", "PixelSpacing")
    slope = find("PixelValueTransformationSequence", "RescaleSlope")
    intercept = find("PixelValueTransformationSequence", "RescaleIntercept")
    thickness = find("PixelMeasuresSequence", "SliceThickness")
    return pos, iop, ps, slope, intercept, thickness


def _read_multiframe(path: str, name: str, max_slice_pixels: int) -> Volume:
    ds, arr = _pixels(path, name)
    n = int(ds.NumberOfFrames)
    is_color = int(getattr(ds, "SamplesPerPixel", 1)) == 3
    if arr.shape[0] != n:
        raise TruncatedFileError(f"{name}: the header announces {n} frames but {arr.shape[0]} were decoded.")
    geo = [_frame_geometry(ds, i) for i in range(n)]
    iop = geo[0][1]
    ps = geo[0][2]
    spacing_xy = (float(ps[1]), float(ps[0])) if ps is not None else (1.0, 1.0)
    direction = np.eye(3)
    if iop is not None:
        v = np.asarray([float(x) for x in iop])
        direction = np.stack([v[:3], v[3:], np.cross(v[:3], v[3:])], axis=1)
    order = np.arange(n)
    dz = float(geo[0][5]) if geo[0][5] not in (None, "") else 1.0
    origin = np.zeros(3)
    if all(g[0] is not None for g in geo):
        pos = np.asarray([[float(x) for x in g[0]] for g in geo])
        d = pos @ direction[:, 2]
        order = np.argsort(d, kind="stable")
        pos, d = pos[order], d[order]
        origin = pos[0]
        if n > 1:
            dz = _uniform_spacing(d, name)
    frames = []
    for i in order:
        f = arr[i]
        frames.append(f.astype(np.float32) if is_color else _rescale(f, geo[i][3], geo[i][4]))
    vox = np.stack(frames)
    if not is_color:
        vox = _monochrome1_to_2(vox, ds)
    ref = DicomReference(
        study_instance_uid=str(getattr(ds, "StudyInstanceUID", "")),
        series_instance_uid=str(getattr(ds, "SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None,
        sop_class_uid=str(getattr(ds, "SOPClassUID", "")),
        sop_instance_uids=(str(getattr(ds, "SOPInstanceUID", "")),),
        files=(path,),
        series_description=str(getattr(ds, "SeriesDescription", "")),
    )
    return Volume(voxels=vox, spacing=(spacing_xy[0], spacing_xy[1], abs(dz) or 1.0), origin=tuple(origin),
                  direction=direction, modality=str(getattr(ds, "Modality", "OT")), dicom=ref, source=path,
                  body_part=str(getattr(ds, "BodyPartExamined", "")))


def _uniform_spacing(d: np.ndarray, name: str) -> float:
    steps = np.diff(d)
    if np.any(np.abs(steps) < 1e-4):
        dup = int(np.sum(np.abs(steps) < 1e-4))
        raise InconsistentGeometryError(
            f"{name}: {dup} slice(s) share a position with another slice (duplicates or two series mixed). "
            "Remove the duplicates or load one series at a time."
        )
    step = float(np.median(steps))
    gaps = np.where(steps > 1.5 * step)[0]
    if len(gaps):
        missing = int(round(float(np.sum(steps[gaps] / step - 1))))
        where = ", ".join(f"after {d[i]:.2f} mm" for i in gaps[:5])
        raise MissingSlicesError(
            f"{name}: about {missing} slice(s) are missing (gaps {where}; spacing {step:.3f} mm). "
            "Copy the whole series or re-export it from the PACS."
        )
    if np.max(np.abs(steps - step)) > max(0.05 * step, 0.01):
        raise InconsistentGeometryError(
            f"{name}: slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm; clinseg needs a "
            "uniformly spaced series (resample it first)."
        )
    return step


def _series_from_headers(headers: list[_Header], name: str, max_slice_pixels: int) -> Volume:
    first = headers[0].ds
    for h in headers:
        _check_size(h.ds, Path(h.path).name, max_slice_pixels)
    rows = {(int(h.ds.Rows), int(h.ds.Columns)) for h in headers}
    if len(rows) > 1:
        raise InconsistentGeometryError(f"{name}: slices of one series have different sizes {sorted(rows)}.")
    orients = [_orientation(h.ds) for h in headers]
    direction = orients[0] if orients[0] is not None else np.eye(3)
    if any(o is not None and not np.allclose(o, direction, atol=1e-3) for o in orients):
        raise InconsistentGeometryError(f"{name}: slices of one series have different orientations (ImageOrientationPatient).")
    spacings = {tuple(round(s, 4) for s in _pixel_spacing(h.ds)) for h in headers}
    if len(spacings) > 1:
        raise InconsistentGeometryError(f"{name}: slices of one series have different pixel spacings {sorted(spacings)}.")
    spacing_xy = _pixel_spacing(first)

    positions = [getattr(h.ds, "ImagePositionPatient", None) for h in headers]
    if all(p is not None and len(p) == 3 for p in positions):
        pos = np.asarray([[float(x) for x in p] for p in positions])
        d = pos @ direction[:, 2]
        order = np.argsort(d, kind="stable")
        d = d[order]
        dz = _uniform_spacing(d, name) if len(headers) > 1 else float(getattr(first, "SliceThickness", 1.0) or 1.0)
        origin = pos[order[0]]
    else:
        # Secondary captures and some ultrasound lack a patient position: fall back to InstanceNumber.
        order = np.argsort([int(getattr(h.ds, "InstanceNumber", i) or i) for i, h in enumerate(headers)], kind="stable")
        dz = float(getattr(first, "SliceThickness", 1.0) or 1.0)
        origin = np.zeros(3)

    slices, ordered = [], []
    is_color = False
    for i in order:
        h = headers[i]
        ds, arr = _pixels(h.path, Path(h.path).name)
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InconsistentGeometryError(f"{Path(h.path).name}: a multi-frame file inside a single-frame series; load it on its own.")
        is_color = int(getattr(ds, "SamplesPerPixel", 1)) == 3
        if is_color:
            slices.append(arr.astype(np.float32))
        else:
            slices.append(_rescale(arr, getattr(ds, "RescaleSlope", 1), getattr(ds, "RescaleIntercept", 0)))
        ordered.append(h)
    vox = np.stack(slices)
    if not is_color:
        vox = _monochrome1_to_2(vox, first)
    ref = _reference([h.ds for h in ordered], [h.path for h in ordered])
    return Volume(voxels=vox, spacing=(spacing_xy[0], spacing_xy[1], abs(dz) or 1.0), origin=tuple(origin),
                  direction=direction, modality=str(getattr(first, "Modality", "OT")), dicom=ref,
                  source=headers[0].path, body_part=str(getattr(first, "BodyPartExamined", "")))


def list_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """SeriesInstanceUID -> image files, for every DICOM image file under `folder`."""
    groups: dict[str, list[str]] = defaultdict(list)
    for root, _dirs, files in os.walk(folder):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            if os.path.getsize(p) == 0:
                continue
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:
                ds = _read_without_preamble(p)
                if ds is None:
                    continue  # not DICOM (README, DICOMDIR, thumbnails): skip, as viewers do
            if str(getattr(ds, "SOPClassUID", "")) in _NON_IMAGE_SOP_CLASSES or "Rows" not in ds:
                continue
            groups[str(getattr(ds, "SeriesInstanceUID", ""))].append(p)
    return dict(groups)


def read_dicom_folder(folder: str | os.PathLike, max_slice_pixels: int, series_uid: str | None = None) -> Volume:
    folder = str(folder)
    name = Path(folder).name or folder
    groups = list_series(folder)
    if not groups:
        empty = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)) and os.path.getsize(os.path.join(folder, f)) == 0]
        if empty:
            raise EmptyFileError(f"{name}: the folder's files are empty (0 bytes): {len(empty)} file(s).")
        raise UnsupportedFormatError(f"{name}: no DICOM images found in this folder.")
    if series_uid is None:
        if len(groups) > 1:
            counts = {uid: len(files) for uid, files in groups.items()}
            listing = "; ".join(f"{uid} ({n} files)" for uid, n in counts.items())
            raise MixedSeriesError(
                f"{name}: the folder holds {len(groups)} series ({listing}). Choose one (--series UID).", counts
            )
        series_uid = next(iter(groups))
    if series_uid not in groups:
        raise MixedSeriesError(f"{name}: series {series_uid} is not in this folder.", {u: len(f) for u, f in groups.items()})
    files = groups[series_uid]
    headers = [_Header(p, _read_header(p)) for p in files]
    multi = [h for h in headers if int(getattr(h.ds, "NumberOfFrames", 1) or 1) > 1]
    if multi:
        if len(headers) == 1:
            return _read_multiframe(headers[0].path, Path(headers[0].path).name, max_slice_pixels)
        raise InconsistentGeometryError(f"{name}: the series mixes multi-frame and single-frame files.")
    zero = [p for p in os.listdir(folder) if os.path.isfile(os.path.join(folder, p)) and os.path.getsize(os.path.join(folder, p)) == 0]
    if zero:
        log.warning("skipped %d empty file(s) in the series folder", len(zero))
    return _series_from_headers(headers, name, max_slice_pixels)
