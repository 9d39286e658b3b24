"""Write masks with the geometry of the volume they were drawn on: NIfTI/NRRD (3-D), PNG, NPY."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ClinsegInputError
from .loaders import ITK_SUFFIXES, _suffix
from .volume import Volume


def full_mask(volume: Volume, mask: np.ndarray, slice_index: int | None) -> np.ndarray:
    """A (z, y, x) uint8 label array on the volume grid from a 2-D slice mask or a 3-D mask."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        if mask.shape != volume.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the volume {volume.shape}")
        return mask.astype(np.uint8)
    if mask.shape != volume.shape[1:]:
        raise ValueError(f"slice mask shape {mask.shape} does not match the slice {volume.shape[1:]}")
    out = np.zeros(volume.shape, np.uint8)
    out[slice_index or 0] = mask.astype(np.uint8)
    return out


def write_mask(path: str | os.PathLike, volume: Volume, mask: np.ndarray, slice_index: int | None = None) -> Path:
    """Write `mask` (labels: 0 background, 1.. objects) where `volume` lies in space."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(p)
    if suffix in ITK_SUFFIXES:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(full_mask(volume, mask, slice_index))
        img.SetSpacing(volume.spacing)
        img.SetOrigin(volume.origin)
        img.SetDirection(tuple(volume.direction.reshape(-1)))
        sitk.WriteImage(img, str(p), True)
    elif suffix == ".npy":
        np.save(p, np.asarray(mask).astype(np.uint8))
    elif suffix == ".png":
        from PIL import Image

        m = np.asarray(mask)
        if m.ndim == 3:
            if slice_index is None:
                raise ClinsegInputError("a PNG holds one slice: give the slice index (--slice) or write NIfTI")
            m = m[slice_index]
        labels = m.astype(np.uint8)
        # A binary mask is written 0/255 so it shows in any viewer; label maps keep their values.
        img = labels * 255 if labels.max() <= 1 else labels
        Image.fromarray(img.astype(np.uint8)).save(p)
    else:
        raise ClinsegInputError(f"{p.name}: unsupported output format '{suffix}'; use .nii.gz, .nii, .nrrd, .png or .npy")
    return p
