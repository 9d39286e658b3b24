"""RTSTRUCT read/write: exact round trips, geometry (no flips), holes, missing slices, a second reader."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests._rt_series import asymmetric_masks, write_ct_series
from integrations.loaders import load_volume
from integrations.metrics import dice
from integrations.rtstruct import RTStructError, fill_polygons, mask_to_polygons, read_rtstruct, write_rtstruct


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = write_ct_series(tmp_path_factory.mktemp("ct") / "series")
    return folder, load_volume(folder)


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory):
    # rows run right-to-left and the slice normal points to the feet: a mirrored, flipped grid
    folder = write_ct_series(tmp_path_factory.mktemp("ct2") / "series", orientation=(-1, 0, 0, 0, 1, 0),
                             origin=(40.0, -20.0, 60.0))
    return folder, load_volume(folder)


@pytest.fixture(scope="module")
def square_series(tmp_path_factory):
    # rt-utils sizes its masks (Columns, Rows) and swaps the two pixel spacings: only square images
    # with square pixels read correctly there (docs/rt.md)
    folder = write_ct_series(tmp_path_factory.mktemp("ct3") / "series", rows=64, cols=64, spacing=(0.9, 0.9))
    return folder, load_volume(folder)


def test_polygons_refill_exactly():
    m = asymmetric_masks((3, 48, 64))["Ring"][1]
    polys = mask_to_polygons(m)
    assert len(polys) >= 4  # outer, hole, island, isolated pixels
    assert np.array_equal(fill_polygons(polys, m.shape), m)


@pytest.mark.parametrize("which", ["series", "oblique_series"])
def test_round_trip_exact_and_not_flipped(which, request, tmp_path):
    folder, vol = request.getfixturevalue(which)
    masks = asymmetric_masks(vol.shape)
    out = tmp_path / "rs.dcm"
    write_rtstruct(out, vol, masks, colors={"F-shape": (10, 20, 30)})
    back = read_rtstruct(out, vol)
    assert set(back.masks) == set(masks)
    for name, m in masks.items():
        assert np.array_equal(back.masks[name], m), name
        assert dice(back.masks[name][:, :, ::-1], m) < 0.9  # the shapes are asymmetric: a flip would show
    assert back.colors["F-shape"] == (10, 20, 30)
    assert back.missing_slices == []
    # the file references the series and every contour names its image
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT"
    se = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == vol.dicom.series_instance_uid
    assert ds.PatientID == "PHANTOM1" and ds.StudyInstanceUID == vol.dicom.study_instance_uid
    uids = set(vol.dicom.sop_instance_uids)
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            assert c.ContourImageSequence[0].ReferencedSOPInstanceUID in uids


def test_patient_coordinates_are_physical(series, tmp_path):
    """A single pixel written at index (x, y, z) must appear at origin + (x*sx, y*sy, z*dz) in LPS."""
    folder, vol = series
    m = np.zeros(vol.shape, bool)
    m[2, 10, 40] = True
    out = tmp_path / "px.dcm"
    write_rtstruct(out, vol, {"dot": m})
    c = pydicom.dcmread(out).ROIContourSequence[0].ContourSequence[0]
    pts = np.asarray(c.ContourData, float).reshape(-1, 3)
    centre = pts.mean(0)
    expect = np.array([-30.0 + 40 * 0.8, -20.0 + 10 * 1.1, 100.0 + 2 * 2.5])
    assert np.allclose(centre, expect, atol=1e-4)


def test_contour_points_agree_with_simpleitk_geometry(oblique_series, tmp_path):
    """An independent geometry: SimpleITK's physical -> index mapping of the same DICOM series."""
    import SimpleITK as sitk

    folder, vol = oblique_series
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    img = r.Execute()
    m = asymmetric_masks(vol.shape)["F-shape"]
    out = tmp_path / "rs.dcm"
    write_rtstruct(out, vol, {"F": m})
    uid_z = {u: i for i, u in enumerate(vol.dicom.sop_instance_uids)}
    for c in pydicom.dcmread(out).ROIContourSequence[0].ContourSequence:
        z = uid_z[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        idx = np.array([img.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in pts])
        assert np.allclose(idx[:, 2], z, atol=1e-3)
        # sitk's z order may differ from ours only if slices were sorted differently; check the polygon
        assert np.array_equal(fill_polygons([idx[:, :2]], m.shape[1:]) | m[z], m[z])


def test_second_reader_rt_utils_agrees(square_series, tmp_path):
    from rt_utils import RTStructBuilder

    folder, vol = square_series
    masks = asymmetric_masks(vol.shape)
    out = tmp_path / "rs.dcm"
    write_rtstruct(out, vol, masks)
    rt = RTStructBuilder.create_from(dicom_series_path=str(folder), rt_struct_path=str(out))
    assert set(rt.get_roi_names()) == set(masks)
    for name in ("F-shape", "Edge"):
        theirs = np.transpose(rt.get_roi_mask_by_name(name), (2, 0, 1))  # rt-utils: (rows, cols, slices)
        d = dice(theirs, masks[name])
        # rt-utils fills the polygon INCLUDING its boundary, so it adds about one ring of pixels;
        # a flip or transposition would drop Dice far lower
        assert d > 0.85, (name, d)
        assert d > dice(theirs[:, :, ::-1], masks[name]) + 0.2
        assert d > dice(theirs[:, ::-1, :], masks[name]) + 0.2


def test_reads_rt_utils_file(square_series, tmp_path):
    """Our reader on a file written by another writer (rt-utils), same series: same shape, not flipped."""
    from rt_utils import RTStructBuilder

    folder, vol = square_series
    m = asymmetric_masks(vol.shape)["F-shape"]
    rt = RTStructBuilder.create_new(dicom_series_path=str(folder))
    rt.add_roi(mask=np.transpose(m, (1, 2, 0)), name="F")
    out = tmp_path / "rtutils.dcm"
    rt.save(str(out))
    ours = read_rtstruct(out, vol).masks["F"]
    assert dice(ours, m) > 0.85
    assert dice(ours, m) > dice(ours[:, ::-1], m) + 0.2


def test_revise_keeps_other_rois(series, tmp_path):
    folder, vol = series
    masks = asymmetric_masks(vol.shape)
    first = tmp_path / "a.dcm"
    write_rtstruct(first, vol, masks)
    edited = masks["Ring"].copy()
    edited[:, 30:, :] = False
    second = tmp_path / "b.dcm"
    uid = write_rtstruct(second, vol, {"ring": edited, "New": masks["Edge"] & ~masks["F-shape"]}, base=first)
    back = read_rtstruct(second, vol)
    assert np.array_equal(back.masks["Ring"], edited)  # revised in place (name match ignores case)
    assert np.array_equal(back.masks["F-shape"], masks["F-shape"])  # untouched
    assert "New" in back.masks and back.numbers["New"] == 4
    assert uid != pydicom.dcmread(first).SOPInstanceUID


def test_missing_slices_reported(series, tmp_path):
    folder, vol = series
    m = asymmetric_masks(vol.shape)["F-shape"]
    out = tmp_path / "rs.dcm"
    write_rtstruct(out, vol, {"F": m})
    sub = load_volume(sorted(folder.glob("*.dcm"))[2])  # only one slice of the series
    back = read_rtstruct(out, sub)
    assert np.array_equal(back.masks["F"][0], m[2])
    zs = sorted(s.slice_index for s in back.missing_slices)
    assert zs == [-1.0, 1.0, 2.0]  # the other contoured slices, relative to slice 2
    assert all(s.referenced_sop_instance_uid for s in back.missing_slices)


def test_pydicom_example_with_foreign_series():
    """pydicom's rtstruct.dcm on CT_small: other patient, all contours missing, POIs ignored."""
    from pydicom.data import get_testdata_file

    vol = load_volume(get_testdata_file("CT_small.dcm"))
    back = read_rtstruct(get_testdata_file("rtstruct.dcm"), vol)
    assert set(back.masks) == {"patient", "Isocenter 1", "Isocenter 2"}
    assert not any(m.any() for m in back.masks.values())
    assert back.missing_by_roi() == {"patient": 3}
    assert any("frame of reference" in w for w in back.warnings)


def test_bad_inputs(series, tmp_path):
    folder, vol = series
    with pytest.raises(RTStructError):
        read_rtstruct(sorted(folder.glob("*.dcm"))[0], vol)  # an image, not an RTSTRUCT
    with pytest.raises(RTStructError):
        write_rtstruct(tmp_path / "x.dcm", vol, {"bad": np.zeros((2, 2, 2), bool)})
    with pytest.raises(RTStructError):
        write_rtstruct(tmp_path / "x.dcm", vol.with_voxels(vol.voxels).__class__(vol.voxels), {"a": np.zeros(vol.shape, bool)})
    with pytest.raises(FileNotFoundError):
        read_rtstruct(tmp_path / "nope.dcm", vol)


def test_real_breast_case():
    """dicompyler-core's anonymised breast case (fetched with bench/devdata.install, pip sdist)."""
    from bench.devdata import DICOMPYLER, install

    install()
    vol = load_volume(DICOMPYLER / "ct.0.dcm")
    rs = read_rtstruct(DICOMPYLER / "rtss.dcm", vol)
    assert len(rs.masks) == 10
    body = rs.masks["BODY"][0]
    img = vol.voxels[0]
    assert 30000 < body.sum() < 60000
    assert (img[body] > -400).mean() > 0.95  # the body contour encloses tissue ...
    assert dice(body, img > -400) > 0.9 > dice(body[:, ::-1], img > -400)  # ... on the right side
    missing = rs.missing_by_roi()
    assert missing["Lt Lung"] > 100 and "Areola" not in missing  # the other 97 slices have no image


def test_cli_rt_compare(series, tmp_path, capsys):
    import json

    from app.cli import main

    folder, vol = series
    masks = asymmetric_masks(vol.shape)
    edited = dict(masks)
    edited["F-shape"] = np.roll(masks["F-shape"], 3, axis=2)
    write_rtstruct(tmp_path / "a.dcm", vol, masks)
    write_rtstruct(tmp_path / "b.dcm", vol, edited)
    rc = main(["rt-compare", str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm"), "--series", str(folder),
               "--out", str(tmp_path / "rep"), "--json"])
    assert rc == 0
    rows = {r["structure"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Ring"]["dice"] == 1.0 and not rows["Ring"]["flagged"]
    assert rows["F-shape"]["flagged"] and rows["F-shape"]["dice"] < 0.8
    assert (tmp_path / "rep" / "report.html").stat().st_size > 1000
    assert main(["rt-compare", str(tmp_path / "a.dcm"), str(folder / "ct000.dcm"), "--series", str(folder),
                 "--out", str(tmp_path / "rep2")]) == 2  # an image is not an RTSTRUCT


def test_scanline_fill_matches_skimage_on_random_polygons():
    """A second rasteriser (skimage.draw.polygon, point-in-polygon at pixel centres) agrees with the
    vectorised even-odd scanline on random star polygons whose vertices avoid pixel centres."""
    from skimage.draw import polygon

    rng = np.random.default_rng(3)
    for _ in range(30):
        k = rng.integers(3, 25)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(3, 25, k)
        cx, cy = rng.uniform(-5, 45, 2)  # some polygons leave the image
        xy = np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)]) + 0.0137
        ref = np.zeros((40, 48), bool)
        rr, cc = polygon(xy[:, 1], xy[:, 0], ref.shape)
        ref[rr, cc] = True
        assert np.array_equal(fill_polygons([xy], ref.shape), ref)
    square = np.array([[2.5, 2.5], [12.5, 2.5], [12.5, 12.5], [2.5, 12.5]])
    hole = np.array([[5.5, 5.5], [8.5, 5.5], [8.5, 8.5], [5.5, 8.5]])
    m = fill_polygons([square, hole], (16, 16))
    assert m.sum() == 100 - 9 and not m[6:9, 6:9].any()


def test_revise_on_partial_series_keeps_unseen_contours(series, tmp_path):
    """Revising an ROI while only one slice is loaded replaces that slice's contours and keeps the
    contours on the slices nobody saw (no silent deletion)."""
    folder, vol = series
    m = asymmetric_masks(vol.shape)["F-shape"]
    full = tmp_path / "full.dcm"
    write_rtstruct(full, vol, {"F": m}, colors={"F": (1, 2, 3)})
    one = load_volume(sorted(folder.glob("*.dcm"))[2])
    edited = np.zeros(one.shape, bool)
    edited[0, 20:30, 30:40] = True
    rev = tmp_path / "rev.dcm"
    write_rtstruct(rev, one, {"F": edited}, base=full)
    back = read_rtstruct(rev, vol)
    expect = m.copy()
    expect[2] = edited[0]
    assert np.array_equal(back.masks["F"], expect)
    assert back.colors["F"] == (1, 2, 3)  # the ROI keeps its colour unless a new one is given


def test_real_breast_case_revise_and_compare(tmp_path, capsys):
    """End to end on real data: revise BODY on the one CT slice, then `clinseg rt-compare` the two."""
    import json

    from app.cli import main
    from bench.devdata import DICOMPYLER, install

    install()
    vol = load_volume(DICOMPYLER / "ct.0.dcm")
    body = read_rtstruct(DICOMPYLER / "rtss.dcm", vol).masks["BODY"]
    edited = body.copy()
    edited[0, :, :200] = False  # the planner removed the patient's right side
    write_rtstruct(tmp_path / "revised.dcm", vol, {"BODY": edited}, base=DICOMPYLER / "rtss.dcm")
    assert main(["rt-compare", str(DICOMPYLER / "rtss.dcm"), str(tmp_path / "revised.dcm"),
                 "--series", str(DICOMPYLER / "ct.0.dcm"), "--out", str(tmp_path / "rep"), "--json"]) == 0
    captured = capsys.readouterr()
    rows = {r["structure"]: r for r in json.loads(captured.out)}
    assert list(rows) == ["BODY"]  # the other ROIs have no contour on this slice
    r = rows["BODY"]
    assert r["flagged"] and r["dice"] == pytest.approx(2 * edited.sum() / (edited.sum() + body.sum()))
    assert r["volume_diff_pct"] < -10
    assert "missing from the series" in captured.err
