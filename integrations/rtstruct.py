"""DICOM RT Structure Set (RTSTRUCT) read and write against a `Volume`'s image grid.

Reading: every ROI's contours are mapped from patient (LPS) millimetres to continuous voxel indices
with `Volume.lps_to_index` (so any orientation, spacing and origin is honoured, nothing is flipped)
and filled with the even-odd rule (a pixel belongs to the ROI when its CENTRE lies inside an odd
number of the slice's contours): a contour inside another is a hole, an island inside a hole is
filled again, as RT planning systems treat them. Contours whose plane matches no slice of the
volume (the image is missing, or belongs to another series) are reported in `missing_slices`,
never silently dropped or snapped to a neighbour.

Writing: contours are the marching-squares iso-line at 0.5 of each slice's mask (half-way between
inside and outside pixel centres). Every inside pixel centre lies strictly inside them and every
outside centre strictly outside, so `read_rtstruct` gives back exactly the mask that was written
(Dice 1.0); other readers that fill polygons differently (e.g. rt-utils, which includes boundary
pixels) differ by at most about one boundary ring.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import ClinsegInputError, UnreadableFileError
from .volume import Volume

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DEFAULT_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
                  (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0), (255, 0, 128), (0, 255, 128))


class RTStructError(ClinsegInputError):
    """An RTSTRUCT that cannot be used with the given image series."""


@dataclass(frozen=True)
class MissingSlice:
    """A contour plane that matches no slice of the volume."""

    roi: str
    z_mm: float  # position along the volume's slice normal, mm from the volume origin
    slice_index: float  # continuous index it maps to (outside the volume or between slices)
    referenced_sop_instance_uid: str  # "" when the contour names no image


@dataclass
class RTStructSet:
    masks: dict[str, np.ndarray]  # ROI name -> (z, y, x) bool on the volume grid
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)  # ROI name -> ROI Number
    missing_slices: list[MissingSlice] = field(default_factory=list)
    contour_counts: dict[str, int] = field(default_factory=dict)  # contours placed on the grid
    referenced_series_uid: str = ""
    frame_of_reference_uid: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.masks)

    def missing_by_roi(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.missing_slices:
            out[m.roi] = out.get(m.roi, 0) + 1
        return out


# ----------------------------------------------------------------------------------------- reading
def fill_polygons(polys_xy: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of closed polygons given in (x=column, y=row) pixel-index coordinates: a pixel
    is set when its centre lies inside an odd number of polygons (holes and islands follow).

    Scanline: every edge is crossed by the pixel-centre rows r with min(y) <= r < max(y) (half-open,
    so a vertex on a row is counted once); on each row the sorted crossings pair up (in, out) and
    the pixels with in <= column < out are filled. Vectorised over all edges of all polygons; a
    centre exactly on a left edge counts as inside, on a right edge as outside."""
    h, w = shape
    out = np.zeros((h, w + 1), np.int32)
    segs = [np.asarray(p, float).reshape(-1, 2) for p in polys_xy if len(p) >= 3]
    if not segs:
        return out[:, :w] > 0
    p0 = np.concatenate(segs)
    p1 = np.concatenate([np.roll(q, -1, axis=0) for q in segs])
    x1, y1, x2, y2 = p0[:, 0], p0[:, 1], p1[:, 0], p1[:, 1]
    keep = y1 != y2
    x1, y1, x2, y2 = x1[keep], y1[keep], x2[keep], y2[keep]
    r0 = np.ceil(np.minimum(y1, y2)).astype(np.int64)
    r1 = np.ceil(np.maximum(y1, y2)).astype(np.int64)  # exclusive
    n = np.maximum(r1 - r0, 0)
    if n.sum() == 0:
        return out[:, :w] > 0
    e = np.repeat(np.arange(len(n)), n)
    rows = r0[e] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    xs = x1[e] + (rows - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
    inside = (rows >= 0) & (rows < h)  # whole rows are dropped, so every row keeps an even count
    rows, xs = rows[inside], xs[inside]
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    ra, xa, xb = rows[0::2], xs[0::2], xs[1::2]
    c0 = np.clip(np.ceil(xa), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(xb), 0, w).astype(np.int64)
    np.add.at(out, (ra, c0), 1)
    np.add.at(out, (ra, c1), -1)
    return np.cumsum(out, axis=1)[:, :w] > 0


def _read_dataset(path) -> "pydicom.Dataset":  # noqa: F821
    import pydicom

    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"RTSTRUCT file not found: {p}")
    try:
        try:
            ds = pydicom.dcmread(p)
        except pydicom.errors.InvalidDicomError:
            ds = pydicom.dcmread(p, force=True)  # older exports lack the 128-byte preamble
    except Exception as e:
        raise UnreadableFileError(f"cannot read {os.path.basename(p)} as DICOM ({type(e).__name__}); "
                                  "give the RT Structure Set file exported by the planning system") from e
    if str(getattr(ds, "SOPClassUID", "")) != RTSTRUCT_SOP_CLASS and getattr(ds, "Modality", "") != "RTSTRUCT":
        raise RTStructError(f"{os.path.basename(p)} is not an RT Structure Set (Modality "
                            f"{getattr(ds, 'Modality', '?')}); give the RTSTRUCT file, not an image")
    return ds


def _referenced_series(ds) -> tuple[str, str]:
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                return str(getattr(se, "SeriesInstanceUID", "")), str(getattr(fr, "FrameOfReferenceUID", ""))
    return "", ""


def _contour_data(c) -> np.ndarray:
    """ContourData as floats. Parsed straight from the raw bytes when possible: pydicom's per-value
    DS objects make a large structure set take seconds instead of milliseconds."""
    from pydicom.dataelem import RawDataElement

    tag = 0x30060050
    if tag not in c:
        return np.zeros(0)
    elem = c.get_item(tag)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, (bytes, bytearray)):
        raw = bytes(elem.value).strip(b" \x00")
        if not raw:
            return np.zeros(0)
        try:
            return np.array([float(x) for x in raw.split(b"\\")], dtype=float)
        except ValueError:
            pass  # something unusual: let pydicom decode it
    return np.asarray(c.ContourData, dtype=float)


def read_rtstruct(path, volume: Volume, names: list[str] | None = None,
                  z_tolerance: float = 0.25) -> RTStructSet:
    """Rasterise the ROIs of the RTSTRUCT at `path` onto `volume`'s grid.

    names: only these ROIs (case-insensitive); default all.
    z_tolerance: a contour plane belongs to slice k when its continuous slice index is within
    this fraction of a slice of k (0.25 slice: planning systems write positions to ~0.01 mm).
    ROIs without any contour (e.g. POIs, empty structures) give an all-False mask."""
    ds = _read_dataset(path)
    nz, ny, nx = volume.shape
    uid_to_z = {}
    if volume.dicom is not None:
        uid_to_z = {u: i for i, u in enumerate(volume.dicom.sop_instance_uids)}
    ref_series, ref_for = _referenced_series(ds)
    out = RTStructSet(masks={}, referenced_series_uid=ref_series, frame_of_reference_uid=ref_for)
    if volume.dicom is not None and ref_for and volume.dicom.frame_of_reference_uid and \
            ref_for != volume.dicom.frame_of_reference_uid:
        out.warnings.append("RTSTRUCT frame of reference differs from the image series'; contours are "
                            "placed by patient coordinates, check that this is the planning series")
    roi_names = {}
    for r in getattr(ds, "StructureSetROISequence", []) or []:
        roi_names[int(r.ROINumber)] = str(getattr(r, "ROIName", f"ROI {r.ROINumber}")).strip()
    wanted = None if names is None else {n.lower() for n in names}
    # every ROI gets a mask even when it has no ROIContourSequence entry
    for num, name in roi_names.items():
        if wanted is None or name.lower() in wanted:
            out.masks.setdefault(name, np.zeros((nz, ny, nx), bool))
            out.numbers[name] = num
    for rc in getattr(ds, "ROIContourSequence", []) or []:
        num = int(rc.ReferencedROINumber)
        name = roi_names.get(num, f"ROI {num}")
        if wanted is not None and name.lower() not in wanted:
            continue
        mask = out.masks.setdefault(name, np.zeros((nz, ny, nx), bool))
        out.numbers.setdefault(name, num)
        col = getattr(rc, "ROIDisplayColor", None)
        if col is not None and len(col) == 3:
            out.colors[name] = tuple(int(c) for c in col)
        per_slice: dict[int, list[np.ndarray]] = {}
        placed = 0
        for c in getattr(rc, "ContourSequence", []) or []:
            kind = str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR"))
            data = _contour_data(c)
            if data.size < 3 or data.size % 3:
                out.warnings.append(f"{name}: a contour with malformed ContourData was skipped")
                continue
            if kind == "POINT":
                continue  # a point of interest has no area
            if kind.startswith("OPEN"):
                out.warnings.append(f"{name}: an {kind} contour (a line, not an outline) was not filled")
                continue
            idx = volume.lps_to_index(data.reshape(-1, 3))
            if not np.all(np.isfinite(idx)):
                raise RTStructError(f"{name}: contour coordinates are not finite")
            ref_uid = ""
            for ci in getattr(c, "ContourImageSequence", []) or []:
                ref_uid = str(getattr(ci, "ReferencedSOPInstanceUID", ""))
                break
            zc = float(np.median(idx[:, 2]))
            if np.ptp(idx[:, 2]) > 0.5:
                out.warnings.append(f"{name}: a contour is not parallel to the image slices "
                                    f"(spans {np.ptp(idx[:, 2]):.2f} slices); placed at its median plane")
            k = int(round(zc))
            ok = 0 <= k < nz and abs(zc - k) <= z_tolerance
            if not ok and ref_uid in uid_to_z and abs(zc - uid_to_z[ref_uid]) <= 0.5:
                k, ok = uid_to_z[ref_uid], True
            if not ok:
                origin_mm = zc * volume.spacing[2]
                out.missing_slices.append(MissingSlice(name, round(origin_mm, 3), round(zc, 3), ref_uid))
                continue
            per_slice.setdefault(k, []).append(idx[:, :2])
            placed += 1
        for k, polys in per_slice.items():
            mask[k] = fill_polygons(polys, (ny, nx))
        out.contour_counts[name] = placed
    for i, name in enumerate(out.masks):
        out.colors.setdefault(name, DEFAULT_COLORS[i % len(DEFAULT_COLORS)])
    return out


# ----------------------------------------------------------------------------------------- writing
def mask_to_polygons(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (x, y) of a 2-D mask: the 0.5 iso-line between inside and outside pixel
    centres (marching squares). Even-odd filling them at pixel centres returns `mask2d` exactly."""
    from skimage.measure import find_contours

    m = np.asarray(mask2d, bool)
    if not m.any():
        return []
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    y0, x0 = int(rows[0]), int(cols[0])
    # crop to the contour's bounding box (much less to trace), pad so every contour closes
    sub = np.pad(m[y0:int(rows[-1]) + 1, x0:int(cols[-1]) + 1], 1).astype(np.float32)
    polys = []
    for c in find_contours(sub, 0.5, fully_connected="high"):
        xy = c[:, ::-1] - 1.0 + (x0, y0)  # (row, col) -> (x, y), undo the pad and the crop
        if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]  # DICOM closes CLOSED_PLANAR contours implicitly
        xy = _drop_collinear(xy)
        if len(xy) >= 3:
            polys.append(xy)
    return polys


def _drop_collinear(xy: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line between their neighbours (lossless, smaller file)."""
    if len(xy) < 4:
        return xy
    prev = np.roll(xy, 1, axis=0)
    nxt = np.roll(xy, -1, axis=0)
    cross = (xy[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (xy[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    keep = np.abs(cross) > 1e-9
    return xy[keep] if keep.sum() >= 3 else xy


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _base_header(volume: Volume):
    """Patient/study attributes copied from the first source image, when there is one."""
    import pydicom

    if volume.dicom is not None and volume.dicom.files:
        try:
            return pydicom.dcmread(volume.dicom.files[0], stop_before_pixels=True)
        except Exception:  # the files may have moved: the UIDs in DicomReference still suffice
            return None
    return None


def _contour_image_item(sop_class: str, sop_uid: str):
    from pydicom.dataset import Dataset

    it = Dataset()
    it.ReferencedSOPClassUID = sop_class
    it.ReferencedSOPInstanceUID = sop_uid
    return it


def _fmt(v: float) -> str:
    # DS values are limited to 16 characters
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s if len(s) <= 16 else f"{v:.8g}"


_CONTOUR_DATA = 0x30060050


def _raw_ds(tag: int, values: np.ndarray):
    """A DS element as raw bytes: building one pydicom DS object per coordinate (with validation)
    costs more than all the geometry; the text is the same."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    txt = "\\".join(_fmt(float(v)) for v in values).encode("ascii")
    if len(txt) % 2:
        txt += b" "  # DICOM values have even length
    return RawDataElement(Tag(tag), "DS", len(txt), txt, 0, False, True)


def _contour_sequence(volume: Volume, mask: np.ndarray) -> list:
    from pydicom.dataset import Dataset

    ref = volume.dicom
    items = []
    for z in np.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0]:
        for xy in mask_to_polygons(mask[z]):
            idx = np.column_stack([xy, np.full(len(xy), float(z))])
            lps = volume.index_to_lps(idx)
            c = Dataset()
            c.ContourImageSequence = [_contour_image_item(ref.sop_class_uid, ref.sop_instance_uids[z])]
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(lps)
            c[_CONTOUR_DATA] = _raw_ds(_CONTOUR_DATA, lps.ravel())
            # the item's encoding matches the file's, so pydicom writes the raw bytes as they are
            c.set_original_encoding(False, True, "ISO_IR 192")
            items.append(c)
    return items


def _on_volume(contour, volume: Volume, z_tolerance: float = 0.25) -> bool:
    data = _contour_data(contour)
    if data.size < 3:
        return False
    zc = float(np.median(volume.lps_to_index(data.reshape(-1, 3))[:, 2]))
    k = int(round(zc))
    return 0 <= k < volume.num_slices and abs(zc - k) <= z_tolerance


def write_rtstruct(path, volume: Volume, masks: dict[str, np.ndarray],
                   colors: dict[str, tuple[int, int, int]] | None = None, base: str | os.PathLike | None = None,
                   label: str = "clinseg", series_description: str = "clinseg contours",
                   roi_generation: str = "SEMIAUTOMATIC", algorithm: str = "clinseg") -> str:
    """Write `masks` ((z, y, x) bool on `volume`'s grid) as an RTSTRUCT that references the series.

    base: an existing RTSTRUCT to revise: its other ROIs are kept as they are, ROIs with the same
    name (case-insensitive) get the new contours on the volume's slices (their contours on planes the
    volume does not cover are kept), new names are added. The result is a new
    instance (new SOP Instance UID) in a new series, as DICOM requires for a changed object.
    Returns the SOP Instance UID written."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    ref = volume.dicom
    if ref is None or not ref.sop_instance_uids:
        raise RTStructError("an RTSTRUCT must reference DICOM images; load the CT/MR series from DICOM "
                            "(a NIfTI or PNG volume has no SOP Instance UIDs to reference)")
    if len(ref.sop_instance_uids) != volume.num_slices:
        raise RTStructError("the volume is a multi-frame image; RTSTRUCT needs one image per slice, "
                            "write a DICOM-SEG instead (integrations.dicom_seg)")
    for name, m in masks.items():
        if np.asarray(m).shape != volume.shape:
            raise RTStructError(f"mask {name!r} has shape {np.asarray(m).shape}, the volume {volume.shape}")
        if not name.strip() or len(name) > 64:
            raise RTStructError(f"ROI name {name!r} must be 1-64 characters")
    colors = dict(colors or {})
    now = _dt.datetime.now()
    if base is not None:
        ds = _read_dataset(base)
    else:
        ds = Dataset()
        src = _base_header(volume)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription"):
            setattr(ds, kw, getattr(src, kw, "") if src is not None else "")
        ds.StudyInstanceUID = ref.study_instance_uid
        ds.StructureSetROISequence = Sequence()
        ds.ROIContourSequence = Sequence()
        ds.RTROIObservationsSequence = Sequence()
    for_uid = ref.frame_of_reference_uid or _new_uid()
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = _new_uid()
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = _new_uid()
    ds.SeriesNumber = 901
    ds.InstanceNumber = 1
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer = "clinseg"
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = ds.StructureSetDate, ds.StructureSetTime
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""

    # the series every contour references
    fr = Dataset()
    fr.FrameOfReferenceUID = for_uid
    st = Dataset()
    st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (as the standard's example)
    st.ReferencedSOPInstanceUID = ref.study_instance_uid
    se = Dataset()
    se.SeriesInstanceUID = ref.series_instance_uid
    se.ContourImageSequence = [_contour_image_item(ref.sop_class_uid, u) for u in ref.sop_instance_uids]
    st.RTReferencedSeriesSequence = [se]
    fr.RTReferencedStudySequence = [st]
    ds.ReferencedFrameOfReferenceSequence = [fr]

    existing = {str(r.ROIName).strip().lower(): int(r.ROINumber) for r in ds.StructureSetROISequence}
    next_num = max(existing.values(), default=0) + 1
    for name, m in masks.items():
        m = np.asarray(m, bool)
        num = existing.get(name.lower())
        contours = _contour_sequence(volume, m)
        if num is None:
            num = next_num
            next_num += 1
            r = Dataset()
            r.ROINumber = num
            r.ReferencedFrameOfReferenceUID = for_uid
            r.ROIName = name
            r.ROIGenerationAlgorithm = roi_generation
            r.ROIGenerationDescription = algorithm[:64]
            ds.StructureSetROISequence.append(r)
            o = Dataset()
            o.ObservationNumber = num
            o.ReferencedROINumber = num
            o.RTROIInterpretedType = "ORGAN"
            o.ROIInterpreter = ""
            ds.RTROIObservationsSequence.append(o)
            rc = Dataset()
            rc.ReferencedROINumber = num
            ds.ROIContourSequence.append(rc)
        else:
            for r in ds.StructureSetROISequence:
                if int(r.ROINumber) == num:
                    r.ReferencedFrameOfReferenceUID = for_uid
                    r.ROIGenerationAlgorithm = roi_generation
                    r.ROIGenerationDescription = algorithm[:64]
            rc = next((x for x in ds.ROIContourSequence if int(x.ReferencedROINumber) == num), None)
            if rc is None:
                rc = Dataset()
                rc.ReferencedROINumber = num
                ds.ROIContourSequence.append(rc)
        color = colors.get(name) or (list(rc.ROIDisplayColor) if "ROIDisplayColor" in rc else None) \
            or DEFAULT_COLORS[(num - 1) % len(DEFAULT_COLORS)]
        rc.ROIDisplayColor = [int(c) for c in color]
        # revising: contours on planes this volume does not cover (slices missing from the loaded
        # series) were not shown to anyone, so they are kept, not silently deleted
        kept = [c for c in (getattr(rc, "ContourSequence", None) or []) if not _on_volume(c, volume)]
        rc.ContourSequence = kept + contours
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    pydicom.dcmwrite(os.fspath(path), ds, enforce_file_format=True)
    return str(ds.SOPInstanceUID)
