"""Reading studies: DICOM ordering and geometry, NIfTI/NRRD/raster, and every bad-input error."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from integrations import errors
from integrations.loaders import load_volume
from integrations.mask_io import write_mask
from tests.dicom_factory import write_series


def _ramp(n=6, h=20, w=24):
    z = np.arange(n)[:, None, None]
    return (100 * z + np.arange(h)[None, :, None] + 2 * np.arange(w)[None, None, :]).astype(np.uint16)


def test_dicom_series_sorted_by_position_with_geometry(tmp_path):
    stored = _ramp()
    write_series(tmp_path, stored, spacing=(0.8, 0.7, 2.5), origin=(-50, -40, 10), slope=2.0, intercept=-1024)
    vol = load_volume(tmp_path)
    assert vol.shape == stored.shape
    np.testing.assert_allclose(vol.voxels, stored * 2.0 - 1024)  # z order and rescale
    np.testing.assert_allclose(vol.spacing, (0.8, 0.7, 2.5), atol=1e-4)
    np.testing.assert_allclose(vol.origin, (-50, -40, 10), atol=1e-4)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)
    assert vol.modality == "CT"
    assert len(vol.dicom.sop_instance_uids) == 6 and len(set(vol.dicom.sop_instance_uids)) == 6
    # every file is listed against the slice it holds
    for z, f in enumerate(vol.dicom.files):
        ds = pydicom.dcmread(f)
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(10 + 2.5 * z, abs=1e-3)


def test_dicom_sagittal_orientation_affine(tmp_path):
    # Sagittal: rows run anterior->posterior (+y), columns run head->feet (-z), slices along +x.
    write_series(tmp_path, _ramp(4, 10, 12), row_dir=(0, 1, 0), col_dir=(0, 0, -1), spacing=(1.0, 1.2, 3.0), origin=(5, -20, 60))
    vol = load_volume(tmp_path)
    normal = np.cross([0, 1, 0], [0, 0, -1])
    np.testing.assert_allclose(vol.direction[:, 2], normal)
    lps = vol.index_to_lps([[0, 0, 3]])[0]
    np.testing.assert_allclose(lps, np.array([5, -20, 60]) + normal * 9.0, atol=1e-4)
    np.testing.assert_allclose(vol.lps_to_index(lps)[0], [0, 0, 3], atol=1e-6)


def test_nifti_mask_round_trip_keeps_affine(tmp_path):
    write_series(tmp_path / "ct", _ramp(), spacing=(0.8, 0.7, 2.5), origin=(-50, -40, 10))
    vol = load_volume(tmp_path / "ct")
    mask = np.zeros(vol.shape, np.uint8)
    mask[2, 5:9, 3:20] = 1
    out = write_mask(tmp_path / "mask.nii.gz", vol, mask)
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(back.voxels.astype(np.uint8), mask)
    import nibabel as nib

    np.testing.assert_allclose(nib.load(str(out)).affine, vol.ras_affine, atol=1e-4)  # a second reader agrees


def test_slice_mask_written_on_its_slice(tmp_path):
    vol = load_volume(Path("app/demo/colin27_demo.nii.gz"))
    m = np.zeros(vol.shape[1:], bool)
    m[10:20, 30:40] = True
    back = load_volume(write_mask(tmp_path / "m.nii.gz", vol, m, slice_index=7))
    assert back.voxels[7].astype(bool).sum() == 100 and back.voxels.sum() == 100
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)


def test_nrrd_and_mha(tmp_path):
    arr = np.random.default_rng(0).normal(size=(5, 16, 18)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    for name in ("a.nrrd", "a.mha"):
        sitk.WriteImage(img, str(tmp_path / name))
        vol = load_volume(tmp_path / name)
        np.testing.assert_allclose(vol.voxels, arr)
        assert vol.spacing == pytest.approx((0.5, 0.6, 2.0))
        assert vol.origin == pytest.approx((1.0, 2.0, 3.0))


def test_raster_png_jpeg_tiff(tmp_path):
    from PIL import Image
    import tifffile

    grey = (np.arange(30 * 40).reshape(30, 40) % 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = np.stack([grey, 255 - grey, grey // 2], -1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    tifffile.imwrite(tmp_path / "s.tif", np.stack([grey, grey]).astype(np.uint16))
    assert load_volume(tmp_path / "g.png").shape == (1, 30, 40)
    np.testing.assert_array_equal(load_volume(tmp_path / "g.png").voxels[0], grey)
    c = load_volume(tmp_path / "c.jpg")
    assert c.is_color and c.voxels.shape == (1, 30, 40, 3)
    assert load_volume(tmp_path / "s.tif").shape == (2, 30, 40)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"])
def test_pydicom_test_files_single_multiframe_compressed(name):
    path = get_testdata_file(name)
    vol = load_volume(path)
    ds = pydicom.dcmread(path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    assert vol.num_slices == frames
    assert vol.shape[1:] == (ds.Rows, ds.Columns)
    assert np.isfinite(vol.voxels).all()
    if name == "CT_small.dcm":
        raw = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(vol.voxels[0], raw)
        assert vol.spacing[0] == pytest.approx(float(ds.PixelSpacing[1]))


# ---- bad input: each gets its specific error -------------------------------------------------

def test_missing_slices(tmp_path):
    write_series(tmp_path, _ramp(8), skip=(4,))
    with pytest.raises(errors.MissingSlicesError, match="missing"):
        load_volume(tmp_path)


def test_mixed_series(tmp_path):
    write_series(tmp_path, _ramp(3), series_uid="1.2.3.1")
    write_series(tmp_path / "other", _ramp(2), series_uid="1.2.3.2", origin=(0, 0, 500))
    with pytest.raises(errors.MixedSeriesError) as e:
        load_volume(tmp_path)
    assert e.value.series == {"1.2.3.1": 3, "1.2.3.2": 2}
    assert load_volume(tmp_path, series_uid="1.2.3.2").num_slices == 2


def test_inconsistent_slice_sizes(tmp_path):
    write_series(tmp_path, _ramp(3), series_uid="1.2.9")
    write_series(tmp_path / "b", _ramp(2, 22, 24), series_uid="1.2.9", origin=(-50, -40, 100))
    with pytest.raises(errors.InconsistentGeometryError, match="different sizes"):
        load_volume(tmp_path)


def test_duplicate_positions(tmp_path):
    write_series(tmp_path, _ramp(3), series_uid="1.2.7")
    write_series(tmp_path / "dup", _ramp(3), series_uid="1.2.7")
    with pytest.raises(errors.InconsistentGeometryError, match="share a position"):
        load_volume(tmp_path)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(errors.EmptyFileError, match="0 bytes"):
        load_volume(tmp_path / "empty.dcm")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(errors.EmptyFileError):
        load_volume(tmp_path / "empty.nii.gz")


def test_truncated_dicom(tmp_path):
    src = Path(get_testdata_file("CT_small.dcm"))
    data = src.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 20000])
    with pytest.raises(errors.TruncatedFileError, match="truncated"):
        load_volume(tmp_path / "cut.dcm")


def test_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"this is a text file, not an image" * 10)
    with pytest.raises(errors.UnreadableFileError, match="not a DICOM"):
        load_volume(tmp_path / "x.dcm")


def test_nan_voxels(tmp_path):
    arr = np.ones((3, 8, 8), np.float32)
    arr[1, 2, 2] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(errors.NonFiniteVoxelsError, match=r"NaN.*slices \[1\]"):
        load_volume(tmp_path / "nan.nii.gz")


def test_corrupt_and_truncated_nifti(tmp_path):
    arr = np.ones((20, 64, 64), np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "ok.nii"))
    data = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.TruncatedFileError):
        load_volume(tmp_path / "cut.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b" + b"junk" * 50)
    with pytest.raises(errors.UnreadableFileError):
        load_volume(tmp_path / "junk.nii.gz")


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_huge_image_rejected_before_decoding(tmp_path):
    _png_header_only(tmp_path / "huge.png", 30000, 30000)
    with pytest.raises(errors.ImageTooLargeError, match="30000x30000"):
        load_volume(tmp_path / "huge.png")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = 30000, 30000
    ds.save_as(str(tmp_path / "huge.dcm"))
    with pytest.raises(errors.ImageTooLargeError):
        load_volume(tmp_path / "huge.dcm")


def test_truncated_png(tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.TruncatedFileError):
        load_volume(tmp_path / "cut.png")


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "a.docx").write_bytes(b"PK\x03\x04 not an image")
    with pytest.raises(errors.UnsupportedFormatError, match="unsupported format"):
        load_volume(tmp_path / "a.docx")
    with pytest.raises(errors.UnreadableFileError, match="no such file"):
        load_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "readme.txt").write_text("hello")
    with pytest.raises(errors.UnsupportedFormatError, match="no DICOM images"):
        load_volume(tmp_path / "folder")


def test_dicom_without_pixels(tmp_path):
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rt.dcm")
    with pytest.raises(errors.UnreadableFileError, match="no image"):
        load_volume(tmp_path / "rt.dcm")
