"""Clinical metadata: size and side from text, patient laterality from real DICOM orientation, flags."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from integrations.errors import InvalidPromptError
from integrations.loaders import load_volume
from models.segmentation import Segmentation
from prompting.metadata import (ClinicalMetadata, check_prompt_side, check_result, flag_segmentation, max_extent_mm,
                                parse_laterality, parse_size_mm, patient_left_columns, patient_left_map,
                                screen_side_of_patient_left, size_scales)
from prompting.promptset import PromptSet


@pytest.mark.parametrize("text, mm", [
    ("lesion about 2 cm in the left lobe", 20.0),
    ("nodule 8mm", 8.0),
    ("mass of 3 x 1.5 cm", 30.0),
    ("2,5 cm cyst", 25.0),
    ("12 millimetres", 12.0),
    ("no size given", None),
])
def test_size_from_text(text, mm):
    assert parse_size_mm(text) == mm


@pytest.mark.parametrize("text, side", [
    ("left hippocampus", "L"), ("Hippocampus_R", "R"), ("L hippocampus", "L"), ("right kidney", "R"),
    ("bilateral effusions", "B"), ("liver lesion", None), ("Lesion in the liver", None),
])
def test_laterality_from_text(text, side):
    assert parse_laterality(text) == side


def test_metadata_from_volume_and_text():
    vol = load_volume(get_testdata_file("CT_small.dcm"))
    meta = ClinicalMetadata.from_volume(vol, "urgent: lesion about 2 cm, right side", window="soft_tissue")
    assert meta.modality == "CT" and meta.expected_size_mm == 20.0 and meta.laterality == "R"
    assert meta.urgency == "urgent" and meta.window == "soft_tissue"
    assert meta.pixel_spacing == pytest.approx((0.661468, 0.661468))
    px = meta.expected_size_px()
    assert px[0] == pytest.approx(20.0 / 0.661468)


@pytest.mark.parametrize("kw", [dict(laterality="left"), dict(expected_size_mm=-3.0), dict(pixel_spacing=(0.0, 1.0)),
                                dict(expected_size_mm=float("nan"))])
def test_invalid_metadata_is_rejected(kw):
    with pytest.raises(InvalidPromptError):
        ClinicalMetadata(**kw)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_patient_left_from_real_dicom_orientation(name):
    """Both files are axial with ImageOrientationPatient [1,0,0, 0,1,0]: columns run towards the
    patient's left (+x in LPS), so the high columns are the patient's left and are shown on the
    screen's right (radiological convention)."""
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    assert [round(float(v)) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    vol = load_volume(path)
    cols = patient_left_columns(vol, 0)
    w = vol.shape[2]
    assert cols.shape == (w,)
    assert not cols[: w // 2 - 1].any() and cols[w // 2 + 1:].all()
    assert screen_side_of_patient_left(vol) == "right"


def test_patient_left_flips_with_a_flipped_orientation(tmp_path):
    """The same pixels with the row direction reversed ([-1,0,0, 0,1,0], e.g. a series stored
    flipped): now the LOW columns are the patient's left. The screen's left/right would be wrong here."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    p = tmp_path / "flipped.dcm"
    ds.save_as(p)
    vol = load_volume(p)
    assert vol.direction[0, 0] == pytest.approx(-1.0)
    cols = patient_left_columns(vol, 0)
    w = vol.shape[2]
    assert cols[: w // 2 - 1].all() and not cols[w // 2 + 1:].any()
    assert screen_side_of_patient_left(vol) == "left"


def test_known_midline_overrides_the_slice_centre():
    """CT_small's field of view lies entirely at LPS x < 0 (patient right of x = 0)."""
    vol = load_volume(get_testdata_file("CT_small.dcm"))
    assert not patient_left_columns(vol, 0, midline_x_mm=0.0).any()
    assert patient_left_columns(vol, 0, midline_x_mm=-1000.0).all()


def test_sagittal_slice_has_no_in_plane_laterality():
    # columns along P (y), rows along -S (z): a sagittal slice
    d = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)
    with pytest.raises(InvalidPromptError, match="sagittal"):
        patient_left_map(d, (0, 0, 0), (1, 1, 1), (10, 10))


def _square(h, w, side_px, x0=10, y0=10):
    m = np.zeros((h, w), bool)
    m[y0:y0 + side_px, x0:x0 + side_px] = True
    return m


def test_oversized_result_is_flagged():
    meta = ClinicalMetadata.from_text("lesion about 2 cm", pixel_spacing=(1.0, 1.0))
    big = _square(200, 200, 64)  # 64 mm side, ~9 cm diagonal
    assert max_extent_mm(big, (1.0, 1.0)) == pytest.approx(64 * np.sqrt(2) - np.sqrt(2) + 1, abs=0.5)
    flags = check_result(big, meta)
    assert len(flags) == 1 and flags[0].startswith("size:") and "9.0 cm" in flags[0]
    ok = _square(200, 200, 16)  # 16 mm side, 2.2 cm diagonal
    assert check_result(ok, meta) == []
    tiny = _square(200, 200, 5)
    assert "only part" in check_result(tiny, meta)[0]


def test_pixel_spacing_matters_for_size():
    m = _square(100, 100, 16)
    assert check_result(m, ClinicalMetadata(expected_size_mm=20.0, pixel_spacing=(1.0, 1.0))) == []
    assert check_result(m, ClinicalMetadata(expected_size_mm=20.0, pixel_spacing=(3.0, 3.0)))  # 6.6 cm


def test_wrong_side_result_is_flagged_on_the_segmentation():
    vol = load_volume(get_testdata_file("CT_small.dcm"))
    left = patient_left_map(vol.direction, vol.origin, vol.spacing, vol.shape[1:], 0)
    mask = np.zeros(vol.shape[1:], bool)
    mask[60:70, 5:15] = True  # low columns: the patient's RIGHT in this orientation
    seg = Segmentation(mask=mask, predicted_iou=0.9, low_res_logits=np.zeros((1, 256, 256), np.float32))
    flag_segmentation(seg, ClinicalMetadata(laterality="L", pixel_spacing=(0.66, 0.66)), left)
    assert any(f.startswith("laterality:") and "LEFT" in f for f in seg.flags)
    seg2 = Segmentation(mask=mask, predicted_iou=0.9, low_res_logits=np.zeros((1, 256, 256), np.float32))
    flag_segmentation(seg2, ClinicalMetadata(laterality="R"), left)
    assert seg2.flags == []


def test_empty_result_is_flagged():
    assert check_result(np.zeros((10, 10), bool), ClinicalMetadata())[0].startswith("the result is empty")


def test_prompt_on_the_other_side_is_noted_not_moved():
    left = np.zeros((100, 100), bool)
    left[:, 50:] = True
    ps = PromptSet.from_box(5, 40, 20, 60)
    out = check_prompt_side(ps, ClinicalMetadata(laterality="L"), left)
    assert out.box == ps.box and "other side" in out.notes[-1]
    assert check_prompt_side(ps, ClinicalMetadata(laterality="R"), left).notes == ()


def test_size_prior_gives_click_scales_around_the_stated_size():
    meta = ClinicalMetadata(expected_size_mm=20.0, pixel_spacing=(0.5, 0.5))
    scales = size_scales(meta, (400, 400))
    # 20 mm = 40 px diameter on a 400 px image: half-sizes 0.35..0.9 of 40 px
    assert min(scales) == pytest.approx(0.35 * 40 / 400) and max(scales) == pytest.approx(0.9 * 40 / 400)
    assert size_scales(ClinicalMetadata(), (400, 400)) is None
