"""DICOM-SEG (highdicom): exact round trip, geometry, colours, bad input."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests._rt_series import asymmetric_masks, write_ct_series
from integrations.dicom_seg import DicomSegError, read_seg, write_seg
from integrations.loaders import load_volume


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = write_ct_series(tmp_path_factory.mktemp("seg") / "series", orientation=(-1, 0, 0, 0, 1, 0))
    return folder, load_volume(folder)


def test_round_trip_exact(series, tmp_path):
    folder, vol = series
    masks = asymmetric_masks(vol.shape)
    out = tmp_path / "seg.dcm"
    write_seg(out, vol, masks, colors={"Ring": (255, 0, 0)})
    back = read_seg(out, vol)
    assert list(back.masks) == list(masks)
    for name, m in masks.items():
        assert np.array_equal(back.masks[name], m), name
    r, g, b = back.colors["Ring"]
    assert r > 240 and g < 20 and b < 20
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == vol.dicom.study_instance_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.dicom.series_instance_uid


def test_frames_placed_by_position_when_uids_differ(series, tmp_path):
    """The same grid under other SOP UIDs (a re-exported copy): frames are placed by position."""
    from dataclasses import replace

    folder, vol = series
    masks = asymmetric_masks(vol.shape)
    out = tmp_path / "seg.dcm"
    other = replace(vol, dicom=replace(vol.dicom, sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(vol.num_slices))))
    write_seg(out, vol, {"F": masks["F-shape"]})  # one segment: identification in shared groups
    assert np.array_equal(read_seg(out, other).masks["F"], masks["F-shape"])
    write_seg(out, vol, masks)  # several: per frame
    back = read_seg(out, other)
    for name, m in masks.items():
        assert np.array_equal(back.masks[name], m), name


def test_seg_frames_match_highdicom_volume_geometry(series, tmp_path):
    """Independent check: the frame positions highdicom wrote are those of our voxels' slices."""
    folder, vol = series
    m = asymmetric_masks(vol.shape)["Edge"]
    out = tmp_path / "seg.dcm"
    write_seg(out, vol, {"E": m})
    ds = pydicom.dcmread(out)
    zs = sorted(int(round(vol.lps_to_index(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float))[0][2]))
                for f in ds.PerFrameFunctionalGroupsSequence)
    assert zs == [int(z) for z in np.nonzero(m.any((1, 2)))[0]]  # empty frames are omitted


def test_bad_input(series, tmp_path):
    folder, vol = series
    with pytest.raises(DicomSegError):
        write_seg(tmp_path / "x.dcm", vol, {"a": np.zeros((1, 2, 3), bool)})
    with pytest.raises(DicomSegError):
        write_seg(tmp_path / "x.dcm", vol.__class__(vol.voxels), {"a": np.zeros(vol.shape, bool)})
    with pytest.raises(DicomSegError):
        write_seg(tmp_path / "x.dcm", vol, {})
