"""Open any supported study path as a `Volume`: DICOM folder or file, NIfTI, NRRD/MHA, PNG/JPEG/TIFF."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dicom_series import is_dicom_file, read_dicom_file, read_dicom_folder
from .errors import (
    ClinsegInputError,
    EmptyFileError,
    ImageTooLargeError,
    NonFiniteVoxelsError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from .volume import Volume

# 12k x 12k per slice: above any CT/MR/X-ray detector; whole-slide images need a tiled viewer instead.
MAX_SLICE_PIXELS = 12_000 * 12_000
# 1.6 GB of float32 voxels: the largest volume a 16 GB laptop handles next to the model.
MAX_VOXELS = 400_000_000

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def load_volume(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    max_slice_pixels: int = MAX_SLICE_PIXELS,
    max_voxels: int = MAX_VOXELS,
) -> Volume:
    """Read a study. Raises a `ClinsegInputError` subclass, with a message for the user, on bad input."""
    p = Path(path)
    if not p.exists():
        raise UnreadableFileError(f"{p.name or p}: no such file or folder.")
    if p.is_dir():
        vol = read_dicom_folder(p, max_slice_pixels, series_uid=series_uid)
    else:
        if p.stat().st_size == 0:
            raise EmptyFileError(f"{p.name}: the file is empty (0 bytes). Re-export or re-copy it.")
        suffix = _suffix(p)
        if suffix in (".nii", ".nii.gz"):
            vol = _read_nifti(p, max_slice_pixels, max_voxels)
        elif suffix in ITK_SUFFIXES:
            vol = _read_itk(p, max_slice_pixels, max_voxels)
        elif suffix in (".tif", ".tiff"):
            vol = _read_tiff(p, max_slice_pixels, max_voxels)
        elif suffix in RASTER_SUFFIXES:
            vol = _read_raster(p, max_slice_pixels)
        elif suffix in (".dcm", ".dicom", ".ima", "") or is_dicom_file(p):
            vol = read_dicom_file(p, max_slice_pixels)
        else:
            raise UnsupportedFormatError(
                f"{p.name}: unsupported format '{suffix}'. clinseg reads DICOM (file or folder), NIfTI "
                "(.nii/.nii.gz), NRRD/MHA, PNG, JPEG and TIFF."
            )
    if int(np.prod(vol.voxels.shape)) > max_voxels:
        raise ImageTooLargeError(f"{p.name}: {vol.voxels.shape} exceeds the limit of {max_voxels} voxels.")
    check_finite(vol.voxels, p.name)
    return vol


def check_finite(voxels: np.ndarray, name: str) -> None:
    if np.issubdtype(voxels.dtype, np.floating):
        bad = ~np.isfinite(voxels)
        n = int(bad.sum())
        if n:
            z = sorted(set(np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0].tolist()))
            raise NonFiniteVoxelsError(
                f"{name}: {n} voxel(s) are NaN or infinite (slices {z[:10]}{'...' if len(z) > 10 else ''}). "
                "The file is damaged or was written by a faulty conversion; re-export it."
            )


def _read_itk(p: Path, max_slice_pixels: int, max_voxels: int) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise UnreadableFileError(f"{p.name}: the header cannot be read; the file is corrupt or not {_suffix(p)} ({_itk_reason(e)}).") from e
    size = reader.GetSize()
    dim = reader.GetDimension()
    if dim > 3 and size[3] > 1:
        raise UnsupportedFormatError(f"{p.name}: a {dim}-D image {size}; clinseg reads 2-D and 3-D images. Split the time points/volumes first.")
    if size[0] * size[1] > max_slice_pixels:
        raise ImageTooLargeError(f"{p.name}: {size[0]}x{size[1]} pixels per slice exceeds the limit of {max_slice_pixels}.")
    if int(np.prod(size)) * reader.GetNumberOfComponents() > max_voxels:
        raise ImageTooLargeError(f"{p.name}: {size} exceeds the limit of {max_voxels} voxels.")
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise TruncatedFileError(f"{p.name}: the image data cannot be read completely; the file is truncated or corrupt ({_itk_reason(e)}).") from e
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    arr = sitk.GetArrayFromImage(img)
    ncomp = img.GetNumberOfComponentsPerPixel()
    if img.GetDimension() == 2:
        arr = arr[None]
        spacing = (*img.GetSpacing(), 1.0)
        origin = (*img.GetOrigin(), 0.0)
        d2 = np.asarray(img.GetDirection()).reshape(2, 2)
        direction = np.eye(3)
        direction[:2, :2] = d2
    else:
        spacing, origin = img.GetSpacing(), img.GetOrigin()
        direction = np.asarray(img.GetDirection()).reshape(3, 3)
    if ncomp not in (1, 3, 4):
        raise UnsupportedFormatError(f"{p.name}: {ncomp} components per voxel; clinseg reads grey or RGB images.")
    if ncomp == 4:
        arr = arr[..., :3]
    vox = arr.astype(np.float32) if arr.dtype != np.float32 else arr
    modality = "MR" if _suffix(p) in (".nii", ".nii.gz") else "OT"
    return Volume(voxels=vox, spacing=spacing, origin=origin, direction=direction, modality=modality, source=str(p))


def _read_nifti(p: Path, max_slice_pixels: int, max_voxels: int) -> Volume:
    # nibabel, not ITK: ITK's NIfTI reader silently turns NaN voxels into 0, which would hide damage.
    import nibabel as nib

    try:
        img = nib.load(str(p))
    except Exception as e:
        raise UnreadableFileError(f"{p.name}: the NIfTI header cannot be read; the file is corrupt or not NIfTI ({type(e).__name__}: {e}).") from e
    shape = img.shape
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise UnsupportedFormatError(f"{p.name}: a {len(shape)}-D image {shape}; clinseg reads 2-D and 3-D images. Split the volumes first.")
    if len(shape) >= 2 and shape[0] * shape[1] > max_slice_pixels:
        raise ImageTooLargeError(f"{p.name}: {shape[0]}x{shape[1]} pixels per slice exceeds the limit of {max_slice_pixels}.")
    if int(np.prod(shape)) > max_voxels:
        raise ImageTooLargeError(f"{p.name}: {shape} exceeds the limit of {max_voxels} voxels.")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise TruncatedFileError(f"{p.name}: the image data cannot be read completely; the file is truncated or corrupt ({type(e).__name__}: {e}).") from e
    if data.dtype.names:  # RGB24 NIfTI
        data = np.stack([data[n] for n in data.dtype.names[:3]], axis=-1)
        color = True
    else:
        color = False
    data = data.reshape(shape[:3] + ((3,) if color else ())) if len(shape) >= 3 else data[:, :, None]
    vox = np.moveaxis(data, (0, 1, 2), (2, 1, 0)).astype(np.float32)  # [x, y, z] -> [z, y, x]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    spacing[spacing == 0] = 1.0
    return Volume(voxels=np.ascontiguousarray(vox), spacing=tuple(spacing), origin=tuple(lps[:3, 3]),
                  direction=m / spacing, modality="MR", source=str(p))


def _itk_reason(e: RuntimeError) -> str:
    # ITK messages carry a long C++ source location; keep the last, human part.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][-200:] if lines else type(e).__name__


def _grey_or_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return arr[..., 0]
    return arr


def _read_raster(p: Path, max_slice_pixels: int) -> Volume:
    from PIL import Image, UnidentifiedImageError

    # PIL's own bomb check fires at open() without the size; ours (below) says what it found.
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        try:
            img = Image.open(p)
        except UnidentifiedImageError as e:
            raise UnreadableFileError(f"{p.name}: not a readable {_suffix(p)} image (corrupt or another format).") from e
        w, h = img.size
        if w * h > max_slice_pixels:
            raise ImageTooLargeError(
                f"{p.name}: {w}x{h} pixels exceeds the limit of {max_slice_pixels} pixels per slice. Downsample it first."
            )
        img.load()
    except (OSError, SyntaxError) as e:
        raise TruncatedFileError(f"{p.name}: the image data is truncated or corrupt ({e}).") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if img.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
        img = img.convert("RGB")
    arr = _grey_or_rgb(np.asarray(img))
    return Volume(voxels=arr.astype(np.float32)[None], modality="OT", source=str(p))


def _read_tiff(p: Path, max_slice_pixels: int, max_voxels: int) -> Volume:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            shape = series.shape
            spatial = [s for s in shape if s not in (3, 4)] or list(shape)
            if len(spatial) >= 2 and spatial[-1] * spatial[-2] > max_slice_pixels:
                raise ImageTooLargeError(f"{p.name}: {spatial[-1]}x{spatial[-2]} pixels exceeds the limit of {max_slice_pixels} per slice.")
            if int(np.prod(shape)) > max_voxels:
                raise ImageTooLargeError(f"{p.name}: {shape} exceeds the limit of {max_voxels} voxels.")
            arr = series.asarray()
    except ClinsegInputError:
        raise
    except Exception as e:
        raise UnreadableFileError(f"{p.name}: the TIFF cannot be read ({type(e).__name__}: {e}).") from e
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = _grey_or_rgb(arr)
        arr = arr[None]
    elif arr.ndim == 4 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
    elif arr.ndim != 3:
        raise UnsupportedFormatError(f"{p.name}: a TIFF of shape {arr.shape}; clinseg reads 2-D images, stacks and RGB.")
    return Volume(voxels=arr.astype(np.float32), modality="OT", source=str(p))
