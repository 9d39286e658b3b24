"""RT benchmark: surface-metric speed and agreement, RTSTRUCT write+read speed.

1. A 100-slice 512x512 structure pair (an irregular organ-like volume and a perturbed copy, 0.98 x
   0.98 x 2.5 mm): time of `surface_metrics` (Dice, HD, HD95, MSD, surface Dice, APL, volumes) and of
   the per-slice table, against an independent reference computed in the same run (Euclidean
   distance transforms of the cropped boundaries, scipy.ndimage) and a brute-force check of the
   nearest-boundary distances on a random subsample of boundary voxels.
2. RTSTRUCT: 10 structures on a synthetic 100-slice 512x512 CT series: write, read back (exactness
   checked), plus reading dicompyler-core's real breast RTSTRUCT when .bench-data holds it.

Run: .venv/bin/python bench/rt.py   (prints a table, then one RESULT line)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from integrations.metrics import boundary, per_slice_metrics, surface_distances, surface_metrics  # noqa: E402

SPACING = (0.98, 0.98, 2.5)  # x, y, z mm


def structure_pair(seed: int = 0, shape=(100, 512, 512)):
    """An organ-like blob (smoothed random field inside an ellipsoid) and a perturbed 'second observer'."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    ell = ((zz - 50) / 42.0) ** 2 + ((yy - 250) / 110.0) ** 2 + ((xx - 260) / 140.0) ** 2
    small = ndimage.zoom(rng.normal(size=(13, 33, 33)), (nz / 13, ny / 33, nx / 33), order=1)[:nz, :ny, :nx]
    a = ell + 0.12 * small < 1.0
    small2 = ndimage.zoom(rng.normal(size=(13, 33, 33)), (nz / 13, ny / 33, nx / 33), order=1)[:nz, :ny, :nx]
    b = np.roll(ell, 2, axis=2) + 0.12 * small + 0.05 * small2 < 0.97
    return a, b


def edt_reference(a, b, sampling, tol=2.0):
    """Independent implementation: distance transforms of each boundary over the joint bounding box."""
    both = a | b
    sl = tuple(slice(max(int(np.nonzero(both.any(axis=tuple(j for j in range(3) if j != i)))[0][0]) - 1, 0),
                     int(np.nonzero(both.any(axis=tuple(j for j in range(3) if j != i)))[0][-1]) + 2)
               for i in range(3))
    ea, eb = boundary(a)[sl], boundary(b)[sl]
    dab = ndimage.distance_transform_edt(~eb, sampling=sampling)[ea]
    dba = ndimage.distance_transform_edt(~ea, sampling=sampling)[eb]
    return {"hd95": max(np.percentile(dab, 95), np.percentile(dba, 95)),
            "msd": (dab.sum() + dba.sum()) / (len(dab) + len(dba)),
            "surface_dice": ((dab <= tol).sum() + (dba <= tol).sum()) / (len(dab) + len(dba)),
            "hd": max(dab.max(), dba.max())}


def brute_subsample(a, b, sampling, n=1500, seed=0):
    """Max |ours - brute force| of the nearest-boundary distance on n random boundary voxels of A."""
    ours, _ = surface_distances(a, b, sampling[::-1])
    pa = np.argwhere(boundary(a))
    pb = np.argwhere(boundary(b)) * np.asarray(sampling)
    idx = np.random.default_rng(seed).choice(len(pa), size=min(n, len(pa)), replace=False)
    brute = np.array([np.sqrt(((pb - pa[i] * np.asarray(sampling)) ** 2).sum(1)).min() for i in idx])
    return float(np.abs(ours[idx] - brute).max())


def medpy_reference(a, b, sampling):
    """MedPy's values on the joint bounding box (same distances, much less EDT work); None if absent."""
    try:
        from medpy.metric import binary as mp
    except ImportError:
        return None
    both = a | b
    sl = tuple(slice(max(int(np.nonzero(both.any(axis=tuple(j for j in range(3) if j != i)))[0][0]) - 1, 0),
                     int(np.nonzero(both.any(axis=tuple(j for j in range(3) if j != i)))[0][-1]) + 2)
               for i in range(3))
    t0 = time.perf_counter()
    out = {"hd": mp.hd(a[sl], b[sl], sampling), "hd95": mp.hd95(a[sl], b[sl], sampling),
           "assd": mp.assd(a[sl], b[sl], sampling)}
    out["s"] = time.perf_counter() - t0
    return out


def bench_metrics():
    a, b = structure_pair()
    sampling = SPACING[::-1]
    surface_metrics(a[:4], b[:4], SPACING)  # imports and first-call costs out of the timing
    # best of 3 wall-clock runs (the machine is shared), and the process CPU time of the best run
    t_ours, cpu_ours = float("inf"), float("inf")
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        m = surface_metrics(a, b, SPACING)
        t1, c1 = time.perf_counter() - t0, time.process_time() - c0
        if t1 < t_ours:
            t_ours, cpu_ours = t1, c1
    t0 = time.perf_counter()
    rows = per_slice_metrics(a, b, SPACING)
    t_slices = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = edt_reference(a, b, sampling)
    t_ref = time.perf_counter() - t0
    brute_err = brute_subsample(a, b, sampling)
    medpy = medpy_reference(a, b, sampling)
    rel = {k: abs(getattr(m, k) - v) / max(abs(v), 1e-12) for k, v in ref.items()}
    agreement = 1.0 - max(max(rel.values()), brute_err)
    print(f"structure pair: {a.shape[0]}x{a.shape[1]}x{a.shape[2]}, {int(a.sum())} / {int(b.sum())} voxels, "
          f"spacing {SPACING} mm")
    print(f"{'metric':<14}{'clinseg':>12}{'EDT ref':>12}{'rel diff':>10}")
    for k in ("hd", "hd95", "msd", "surface_dice"):
        print(f"{k:<14}{getattr(m, k):12.4f}{ref[k]:12.4f}{rel[k]:10.1e}")
    print(f"{'dice':<14}{m.dice:12.4f}\n{'apl_mm':<14}{m.apl_mm:12.1f}\n{'dV %':<14}{m.volume_diff_pct:12.2f}")
    print(f"brute-force subsample (1500 boundary voxels): max |diff| {brute_err:.2e} mm")
    if medpy is not None:
        print(f"MedPy 0.5.2 (cropped arrays, {medpy['s']:.2f} s): hd {medpy['hd']:.4f}, assd {medpy['assd']:.4f} "
              f"(= our MSD), hd95 {medpy['hd95']:.4f} (pooled percentile; ours is the larger directed one)")
    print(f"{'timing':<36}{'s':>8}")
    print(f"{'clinseg surface_metrics (3-D, all)':<36}{t_ours:8.3f}  (CPU {cpu_ours:.3f} s, best of 3)")
    print(f"{'clinseg per-slice table':<36}{t_slices:8.3f}  ({len(rows)} slices)")
    print(f"{'EDT reference (distances only)':<36}{t_ref:8.3f}")
    return t_ours, cpu_ours, t_slices, t_ref, agreement


def bench_rtstruct(tmp: Path):
    from integrations.loaders import load_volume
    from integrations.rtstruct import read_rtstruct, write_rtstruct
    from tests._rt_series import write_ct_series

    folder = write_ct_series(tmp / "ct", n=100, rows=512, cols=512, spacing=(0.98, 0.98), dz=2.5,
                             origin=(-250.0, -250.0, -120.0))
    vol = load_volume(folder)
    zz, yy, xx = np.ogrid[:100, :512, :512]
    masks = {}
    for i in range(10):
        cz, cy, cx = 20 + 6 * i, 150 + 22 * i, 380 - 25 * i
        r = 15 + 6 * i
        masks[f"S{i + 1:02d}"] = ((zz - cz) / (r / 2.0)) ** 2 + ((yy - cy) / r) ** 2 + ((xx - cx) / (1.3 * r)) ** 2 <= 1
    out = tmp / "rs.dcm"
    t0, c0 = time.perf_counter(), time.process_time()
    write_rtstruct(out, vol, masks)
    t_w = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = read_rtstruct(out, vol)
    t_r = time.perf_counter() - t0
    cpu = time.process_time() - c0
    exact = all(np.array_equal(back.masks[k], v) for k, v in masks.items())
    contours = sum(back.contour_counts.values())
    print(f"RTSTRUCT 10 structures, {contours} contours, 100x512x512: write {t_w:.3f} s, read {t_r:.3f} s, "
          f"(CPU {cpu:.3f} s), round trip exact: {exact}, file {out.stat().st_size / 1e6:.1f} MB")
    t_real = None
    real = ROOT / ".bench-data/dicompyler-core-0.5.6/tests/testdata/example_data"
    if (real / "rtss.dcm").exists():
        ct = load_volume(real / "ct.0.dcm")
        t0 = time.perf_counter()
        rs = read_rtstruct(real / "rtss.dcm", ct)
        t_real = time.perf_counter() - t0
        print(f"dicompyler breast RTSTRUCT ({len(rs.masks)} ROIs) on its one CT slice: read {t_real:.3f} s, "
              f"{len(rs.missing_slices)} contours on missing slices reported")
    return t_w, t_r, cpu, exact, t_real


def main() -> None:
    t_ours, cpu_ours, t_slices, t_ref, agreement = bench_metrics()
    with tempfile.TemporaryDirectory() as d:
        t_w, t_r, cpu_rs, exact, t_real = bench_rtstruct(Path(d))
    print("(timings on a shared 2-core machine; noisy)")
    extra = f" rtstruct_real_read_s={t_real:.3f}" if t_real is not None else ""
    print(f"RESULT metrics_s={t_ours:.3f} metrics_cpu_s={cpu_ours:.3f} metrics_slices_s={t_slices:.3f} metrics_ref_s={t_ref:.3f} "
          f"agreement={agreement:.6f} rtstruct_s={t_w + t_r:.3f} rtstruct_cpu_s={cpu_rs:.3f} rtstruct_write_s={t_w:.3f} "
          f"rtstruct_read_s={t_r:.3f} rtstruct_exact={int(exact)}{extra}")


if __name__ == "__main__":
    main()
