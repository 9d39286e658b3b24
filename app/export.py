"""Export the workstation's objects and prove each file by reading it back with another reader.

- NIfTI label map (1..n per object) written by SimpleITK, re-read with nibabel: shape, affine and
  every label checked against the volume;
- PNG of the current slice's label map, re-read with Pillow;
- DICOM-SEG (integrations.dicom_seg, highdicom) and RTSTRUCT (integrations.rtstruct) when the study
  came from DICOM, re-read with pydicom and rasterised back onto the grid: Dice per object checked.
A file that fails its check is reported as an error (and left for inspection), never as success.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from integrations.errors import ClinsegInputError
from integrations.volume import Volume

from .state import SegObject, Status

log = logging.getLogger("clinseg.app")
# Contours are polygons: rasterising them back loses at most the pixels the boundary cuts.
MIN_CONTOUR_DICE = 0.9


class ExportError(ClinsegInputError):
    """Nothing to export, an export that does not fit the study, or a file that failed its re-read."""


@dataclass(frozen=True)
class ExportedFile:
    path: Path
    kind: str  # "nifti", "png", "dicom-seg", "rtstruct"
    check: str  # what re-reading it showed, in words


def exportable(objects: tuple[SegObject, ...], accepted_only: bool) -> list[SegObject]:
    chosen = [o for o in objects if o.status == Status.ACCEPTED] if accepted_only else \
        [o for o in objects if o.status != Status.REJECTED]
    return [o for o in chosen if o.slices or o.volume_mask is not None]


def object_masks(volume: Volume, objects: list[SegObject]) -> dict[str, np.ndarray]:
    """Unique names -> (z, y, x) bool masks (two objects called the same get a suffix)."""
    out: dict[str, np.ndarray] = {}
    for o in objects:
        name = o.label.strip() or f"object {o.oid}"
        base, k = name, 2
        while name in out:
            name, k = f"{base} ({k})", k + 1
        out[name] = o.label_volume(volume.shape)
    return out


def label_map(volume: Volume, objects: list[SegObject]) -> np.ndarray:
    """(z, y, x) uint8: object i (1-based, in list order) where its mask is; later objects win overlaps."""
    if len(objects) > 255:
        raise ExportError("more than 255 objects do not fit a uint8 label map; export in groups.")
    labels = np.zeros(volume.shape, np.uint8)
    for i, o in enumerate(objects, start=1):
        labels[o.label_volume(volume.shape)] = i
    return labels


def _need(objects: list[SegObject]) -> None:
    if not objects:
        raise ExportError("no object to export: segment something (and accept it, if 'accepted only' is on).")


def export_nifti(path: str | os.PathLike, volume: Volume, objects: list[SegObject]) -> ExportedFile:
    import nibabel as nib

    from integrations.mask_io import write_mask

    _need(objects)
    labels = label_map(volume, objects)
    p = write_mask(path, volume, labels)
    img = nib.load(str(p))
    back = np.asarray(img.dataobj)
    if back.ndim == 2:
        back = back[..., None]
    back = np.transpose(back, (2, 1, 0))  # nibabel (x, y, z) -> (z, y, x)
    if back.shape != volume.shape:
        raise ExportError(f"{p.name}: re-read shape {back.shape} differs from the study {volume.shape}.")
    if not np.allclose(img.affine, volume.ras_affine, atol=1e-3):
        raise ExportError(f"{p.name}: re-read affine differs from the study's geometry.")
    if not np.array_equal(back.astype(np.uint8), labels):
        raise ExportError(f"{p.name}: re-read labels differ from what was written.")
    counts = {i: int((labels == i).sum()) for i in range(1, len(objects) + 1)}
    return ExportedFile(p, "nifti", f"nibabel re-read: shape {back.shape[::-1]} (x, y, z), affine matches, "
                                    f"labels identical ({', '.join(f'{i}: {n} voxels' for i, n in counts.items())})")


def export_png(path: str | os.PathLike, volume: Volume, objects: list[SegObject], z: int) -> ExportedFile:
    from PIL import Image

    from integrations.mask_io import write_mask

    _need(objects)
    labels = label_map(volume, objects)[z]
    p = write_mask(path, volume, labels, slice_index=z)
    back = np.asarray(Image.open(p))
    expected = labels * 255 if labels.max() <= 1 else labels
    if back.shape != labels.shape or not np.array_equal(back, expected.astype(np.uint8)):
        raise ExportError(f"{p.name}: re-read PNG differs from the slice's labels.")
    return ExportedFile(p, "png", f"Pillow re-read: {back.shape[1]}x{back.shape[0]} px, slice {z}, identical")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def _require_dicom(volume: Volume, what: str) -> None:
    if volume.dicom is None:
        raise ExportError(f"{what} needs a study opened from DICOM (it must reference the source images); "
                          "this one came from NIfTI/NRRD/image: export NIfTI or PNG instead.")


def _compare_reread(p: Path, masks: dict, back: dict, what: str, min_dice: float) -> dict[str, float]:
    """Dice of every written mask against the file read back; an ExportError if one is missing or off."""
    dices = {}
    for name, m in masks.items():
        if name not in back:
            raise ExportError(f"{p.name}: {what} '{name}' is missing when the file is read back.")
        dices[name] = _dice(m, np.asarray(back[name], bool))
    worst = min(dices.values())
    if worst < min_dice:
        raise ExportError(f"{p.name}: re-read {what}s differ from the masks (Dice {worst:.3f}); the file is not trustworthy.")
    return dices


def export_rtstruct(path: str | os.PathLike, volume: Volume, objects: list[SegObject]) -> ExportedFile:
    from integrations.rtstruct import read_rtstruct, write_rtstruct

    _need(objects)
    _require_dicom(volume, "RTSTRUCT")
    masks = object_masks(volume, objects)
    colors = {name: o.color for name, o in zip(masks, objects)}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_rtstruct(p, volume, masks, colors=colors)
    dices = _compare_reread(p, masks, read_rtstruct(p, volume).masks, "ROI", MIN_CONTOUR_DICE)
    return ExportedFile(p, "rtstruct", "pydicom re-read and rasterised: " + ", ".join(f"{n} Dice {d:.3f}" for n, d in dices.items()))


def export_dicom_seg(path: str | os.PathLike, volume: Volume, objects: list[SegObject]) -> ExportedFile:
    from integrations import dicom_seg

    _need(objects)
    _require_dicom(volume, "DICOM-SEG")
    masks = object_masks(volume, objects)
    colors = {name: o.color for name, o in zip(masks, objects)}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    dicom_seg.write_seg(p, volume, masks, colors=colors)
    dices = _compare_reread(p, masks, dicom_seg.read_seg(p, volume).masks, "segment", 1.0)
    return ExportedFile(p, "dicom-seg", "re-read with pydicom/highdicom: " + ", ".join(f"{n} Dice {d:.3f}" for n, d in dices.items()))


def export_all(folder: str | os.PathLike, volume: Volume, objects: tuple[SegObject, ...], z: int,
               kinds: tuple[str, ...] = ("nifti", "png", "dicom-seg", "rtstruct"), accepted_only: bool = False,
               stem: str = "clinseg") -> tuple[list[ExportedFile], list[str]]:
    """Every requested export that applies; returns (files written and checked, errors in words)."""
    chosen = exportable(objects, accepted_only)
    _need(chosen)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {
        "nifti": lambda: export_nifti(folder / f"{stem}_labels.nii.gz", volume, chosen),
        "png": lambda: export_png(folder / f"{stem}_slice{z:03d}.png", volume, chosen, z),
        "dicom-seg": lambda: export_dicom_seg(folder / f"{stem}_seg.dcm", volume, chosen),
        "rtstruct": lambda: export_rtstruct(folder / f"{stem}_rtstruct.dcm", volume, chosen),
    }
    done, errors = [], []
    for kind in kinds:
        if kind in ("dicom-seg", "rtstruct") and volume.dicom is None:
            continue  # offered only for DICOM studies
        try:
            done.append(writers[kind]())
        except ClinsegInputError as e:
            errors.append(f"{kind}: {e}")
        except ImportError as e:
            errors.append(f"{kind}: not available in this installation ({e.name or e}).")
        except Exception as e:  # noqa: BLE001 - one failing writer must not stop the others
            log.error("export %s failed: %s", kind, type(e).__name__)
            errors.append(f"{kind}: the writer failed ({type(e).__name__}: {str(e)[:200]}).")
    log.info("exported %d file(s), %d error(s)", len(done), len(errors))
    return done, errors
