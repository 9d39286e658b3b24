"""Surface metrics against analytic answers and two independent implementations
(brute-force pairwise distances; scipy Euclidean distance transforms)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from integrations.metrics import (added_path_length, box_iou, box_of, boundary, dice, hd95, mean_surface_distance,
                                  per_slice_metrics, surface_dice, surface_distances, surface_metrics)


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ---- independent implementations (written from the definitions, sharing no code with the module)
def brute_boundary(m):
    p = np.pad(m, 1)
    inner = p.copy()
    for ax in range(m.ndim):
        for sh in (1, -1):
            inner &= np.roll(p, sh, axis=ax)
    return (p & ~inner)[tuple(slice(1, -1) for _ in range(m.ndim))]


def brute_distances(a, b, sampling):
    pa = np.argwhere(brute_boundary(a)) * np.asarray(sampling)
    pb = np.argwhere(brute_boundary(b)) * np.asarray(sampling)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


def edt_distances(a, b, sampling):
    ea, eb = brute_boundary(a), brute_boundary(b)
    dt_b = ndimage.distance_transform_edt(~eb, sampling=sampling)
    dt_a = ndimage.distance_transform_edt(~ea, sampling=sampling)
    return dt_b[ea], dt_a[eb]


def summaries(dab, dba, tol):
    return (max(np.percentile(dab, 95), np.percentile(dba, 95)),
            (dab.sum() + dba.sum()) / (len(dab) + len(dba)),
            ((dab <= tol).sum() + (dba <= tol).sum()) / (len(dab) + len(dba)))


def test_existing_helpers_unchanged():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    assert box_of(m) == (3, 2, 7, 4)
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert dice(m, m) == 1.0 and dice(m, ~m) == 0.0


def test_offset_discs_analytic():
    r, d = 40, 20
    a = disc((200, 200), 100, 90, r)
    b = disc((200, 200), 100, 90 + d, r)
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    assert dice(a, b) == pytest.approx(lens / (math.pi * r * r), abs=0.01)
    sm = surface_metrics(a, b, (0.5, 0.5))
    assert sm.hd == pytest.approx(d * 0.5, abs=1e-9)  # the far points of each disc are d apart
    assert sm.volume_diff_ml == 0.0


def test_concentric_squares_analytic():
    """B = A grown by one pixel: every A boundary pixel is 1 px from B's; B's four corner pixels are
    sqrt(2) px from A's corners, the rest 1 px. So HD = sqrt(2) s, HD95 = s, MSD known exactly."""
    s = 0.7
    a = np.zeros((40, 40), bool)
    a[10:30, 10:30] = True  # 20 x 20: 76 boundary pixels
    b = ndimage.binary_dilation(a, np.ones((3, 3), bool))  # 22 x 22: 84 boundary pixels
    sm = surface_metrics(a, b, (s, s), tolerance_mm=s)
    assert sm.hd == pytest.approx(math.sqrt(2) * s)
    assert sm.hd95 == pytest.approx(s)
    assert sm.msd == pytest.approx((76 * s + 80 * s + 4 * math.sqrt(2) * s) / 160)
    assert sm.surface_dice == pytest.approx(156 / 160)
    assert surface_dice(a, b, (s, s), tolerance_mm=0.99 * s) == 0.0


def test_anisotropic_shift():
    """A square shifted 3 columns with x spacing 2 mm, y spacing 0.5 mm: HD = 6 mm."""
    a = np.zeros((60, 60), bool)
    a[10:50, 10:30] = True
    b = np.roll(a, 3, axis=1)
    assert surface_metrics(a, b, (2.0, 0.5)).hd == pytest.approx(6.0)
    assert surface_metrics(a, b, (0.5, 2.0)).hd == pytest.approx(1.5)


def test_added_path_length_analytic():
    """Reference 20x20 square; test lacks its right 5 columns. To redraw (tolerance 2 px): the 20
    right-column pixels (5 px away) and 2 more per top/bottom row (4 and 3 px away)."""
    ref = np.zeros((40, 40), bool)
    ref[10:30, 10:30] = True
    test = ref.copy()
    test[:, 25:30] = False
    assert added_path_length(test, ref, (1.0, 1.0), tolerance_mm=2.0) == pytest.approx(24.0)
    assert added_path_length(test, ref, (0.5, 0.5), tolerance_mm=1.0) == pytest.approx(12.0)
    assert added_path_length(ref, ref, (1.0, 1.0)) == 0.0
    assert added_path_length(np.zeros_like(ref), ref, (1.0, 1.0)) == pytest.approx(76.0)  # whole boundary


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force_and_edt_3d(seed):
    rng = np.random.default_rng(seed)
    shape = (8, 28, 30)
    sampling = (2.5, 0.9, 0.7)  # (z, y, x) -> spacing (x, y, z) = (0.7, 0.9, 2.5)
    a = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
    b = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
    assert a.any() and b.any()
    spacing = sampling[::-1]
    dab, dba = surface_distances(a, b, spacing)
    bab, bba = brute_distances(a, b, sampling)
    eab, eba = edt_distances(a, b, sampling)
    assert np.allclose(np.sort(dab), np.sort(bab)) and np.allclose(np.sort(dba), np.sort(bba))
    assert np.allclose(np.sort(dab), np.sort(eab)) and np.allclose(np.sort(dba), np.sort(eba))
    h, m, s = summaries(bab, bba, 2.0)
    sm = surface_metrics(a, b, spacing)
    assert sm.hd95 == pytest.approx(h) and sm.msd == pytest.approx(m) and sm.surface_dice == pytest.approx(s)
    assert hd95(a, b, spacing) == pytest.approx(h)
    assert mean_surface_distance(a, b, spacing) == pytest.approx(m)
    assert np.array_equal(boundary(a), brute_boundary(a))


def test_per_slice_matches_2d_and_cropping_is_invisible():
    a = np.zeros((5, 64, 64), bool)
    b = np.zeros_like(a)
    a[1:4] = disc((64, 64), 30, 30, 12)
    b[2:5] = disc((64, 64), 33, 28, 10)
    b[2, 0:3, 0:64] = True  # touches the array border
    rows = per_slice_metrics(a, b, (0.8, 0.8, 3.0))
    assert [r.z for r in rows] == [1, 2, 3, 4]
    for r in rows:
        full = surface_metrics(a[r.z], b[r.z], (0.8, 0.8))
        assert r.dice == pytest.approx(full.dice)
        assert r.hd95 == pytest.approx(full.hd95)
        assert r.apl_mm == pytest.approx(full.apl_mm)
        bab, bba = brute_distances(a[r.z], b[r.z], (0.8, 0.8)) if a[r.z].any() and b[r.z].any() else (None, None)
        if bab is not None:
            assert r.msd == pytest.approx(summaries(bab, bba, 2.0)[1])
    assert rows[0].hd95 == math.inf and rows[0].surface_dice == 0.0  # slice 1: test only


def test_empty_cases():
    e = np.zeros((10, 10, 10), bool)
    m = e.copy()
    m[3:6, 3:6, 3:6] = True
    both = surface_metrics(e, e, (1, 1, 1))
    assert (both.dice, both.hd95, both.msd, both.surface_dice, both.apl_mm) == (1.0, 0.0, 0.0, 1.0, 0.0)
    one = surface_metrics(e, m, (1, 1, 1))
    assert one.hd95 == math.inf and one.surface_dice == 0.0 and one.volume_diff_pct == -100.0
    with pytest.raises(ValueError):
        surface_metrics(e, m[:5], (1, 1, 1))
    with pytest.raises(ValueError):
        surface_metrics(e, m, (1, 1))


def test_side_by_side_with_medpy():
    """MedPy 0.5.2 (an independent, widely used implementation) finds the same boundary distances
    and the same HD and MSD (its assd pools both directions, as ours does); its hd95 is the 95th
    percentile of the POOLED distances where ours is the larger DIRECTED percentile: one reason
    the definitions are fixed in docs/rt.md. (Older MedPy versions averaged the two directed means.)"""
    from medpy.metric import binary as mp

    rng = np.random.default_rng(7)
    a = ndimage.gaussian_filter(rng.random((10, 50, 60)), 2.5) > 0.5
    b = ndimage.binary_dilation(a, iterations=2) & (ndimage.gaussian_filter(rng.random(a.shape), 2.5) > 0.45)
    sampling = (3.0, 0.8, 0.8)
    spacing = sampling[::-1]
    dab, dba = surface_distances(a, b, spacing)
    sm = surface_metrics(a, b, spacing)
    assert sm.hd == pytest.approx(mp.hd(a, b, voxelspacing=sampling))
    assert np.percentile(np.hstack([dab, dba]), 95) == pytest.approx(mp.hd95(a, b, voxelspacing=sampling))
    assert sm.msd == pytest.approx(mp.assd(a, b, voxelspacing=sampling))
    assert dab.mean() == pytest.approx(mp.asd(a, b, voxelspacing=sampling))
    assert dba.mean() == pytest.approx(mp.asd(b, a, voxelspacing=sampling))
    assert sm.hd95 >= mp.hd95(a, b, voxelspacing=sampling) - 1e-9  # max of directed >= pooled
