"""Overlap and distance metrics between masks. Definitions are fixed here and documented in the README."""
from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|); 1.0 when both are empty (nothing to find, nothing found)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x0, y0, x1, y1) inclusive bounding box of a 2-D mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask has no bounding box")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def box_iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0) + 1)
    ih = max(0.0, min(ay1, by1) - max(ay0, by0) + 1)
    inter = iw * ih
    union = (ax1 - ax0 + 1) * (ay1 - ay0 + 1) + (bx1 - bx0 + 1) * (by1 - by0 + 1) - inter
    return float(inter / union) if union > 0 else 0.0


# --------------------------------------------------------------------------- surface / distance metrics
# Definitions (fixed here, repeated in docs/rt.md; implementations in the field differ by up to 50 %
# on the same contours, mostly through the choice of surface points and of how the two directions
# are combined):
# - boundary voxels of a mask: voxels of the mask with at least one face neighbour (4-neighbourhood
#   in 2-D, 6 in 3-D) outside it; the array border counts as outside. Positions are voxel CENTRES
#   in mm (index * spacing), so distances are physical, anisotropic spacing included.
# - d(a, B): Euclidean distance in mm from boundary voxel a of A to the nearest boundary voxel of B.
# - HD (Hausdorff) = max(max_a d(a, B), max_b d(b, A)).
# - HD95 = max(P95{d(a, B)}, P95{d(b, A)}): the larger of the two DIRECTED 95th percentiles (as
#   MONAI and the DeepMind surface-distance package combine them; numpy's linear percentile).
# - MSD (mean surface distance) = (sum_a d(a, B) + sum_b d(b, A)) / (|dA| + |dB|): the mean over
#   the pooled distances of both boundaries (symmetric; not the average of the two directed means).
# - surface Dice at tolerance t = (#{a: d(a, B) <= t} + #{b: d(b, A) <= t}) / (|dA| + |dB|), counting
#   boundary voxels (not surfel areas).
# - APL (added path length, Vaassen et al. 2020) = sum over slices of (in-plane pixel size) x
#   #{reference boundary pixels (2-D, per slice) farther than t from the test boundary on that slice};
#   the mm of reference contour an editor has to draw to turn the test contour into the reference.
#   A slice where the test is empty contributes its whole reference boundary. The pixel size is the
#   mean of the in-plane spacings; t defaults to 2 mm.
# - volume difference = V(test) - V(reference) in mL, and relative to V(reference) in %.
# Empty masks: both empty -> distances 0, surface Dice 1; exactly one empty -> distances inf,
# surface Dice 0 (there is no surface to measure to).
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class SurfaceMetrics:
    dice: float
    hd: float  # mm
    hd95: float  # mm
    msd: float  # mm
    surface_dice: float
    apl_mm: float
    volume_test_ml: float
    volume_ref_ml: float
    volume_diff_ml: float
    volume_diff_pct: float  # relative to the reference; inf when the reference is empty
    tolerance_mm: float

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class SliceMetrics:
    z: int
    dice: float
    hd95: float
    msd: float
    surface_dice: float
    apl_mm: float
    area_test_mm2: float
    area_ref_mm2: float


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask, with a face neighbour outside (array border = outside)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    if not m.any():
        return m.copy()
    er = ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1), border_value=0)
    return m & ~er


def _points_mm(edge: np.ndarray, sampling) -> np.ndarray:
    return np.argwhere(edge).astype(np.float64) * np.asarray(sampling, dtype=np.float64)


def _nearest(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distance from each point of src to the nearest point of dst (exact, k-d tree)."""
    from scipy.spatial import cKDTree

    # threads only pay off on large point sets; per-slice calls would spend more on thread start-up
    d, _ = cKDTree(dst).query(src, k=1, workers=-1 if len(src) > 50_000 else 1)
    return d


def _sampling(spacing, ndim: int) -> tuple:
    """Project spacing is (x, y[, z]); arrays are indexed (z, y, x): reverse it."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing {spacing} has {len(sp)} values for a {ndim}-D mask")
    return sp[::-1]


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus one voxel (distances are unchanged)."""
    both = a | b
    if not both.any():
        return a, b
    sl = []
    for ax in range(a.ndim):
        other = tuple(i for i in range(a.ndim) if i != ax)
        nz = np.nonzero(both.any(axis=other))[0]
        sl.append(slice(max(nz[0] - 1, 0), nz[-1] + 2))
    sl = tuple(sl)
    return a[sl], b[sl]


def surface_distances(test: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(d(test boundary -> ref boundary), d(ref boundary -> test boundary)) in mm; see definitions above."""
    a, b = np.asarray(test, bool), np.asarray(ref, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    samp = _sampling(spacing, a.ndim)
    # cropping keeps a one-voxel background margin except at the array border, which `boundary`
    # treats as outside anyway: boundaries (and distances) are those of the full arrays
    a, b = _crop(a, b)
    ea, eb = boundary(a), boundary(b)
    pa, pb = _points_mm(ea, samp), _points_mm(eb, samp)
    if len(pa) == 0 or len(pb) == 0:
        return (np.full(len(pa), np.inf), np.full(len(pb), np.inf))
    return _nearest(pa, pb), _nearest(pb, pa)


def _summaries(dab: np.ndarray, dba: np.ndarray, tol: float) -> tuple[float, float, float, float]:
    """(hd, hd95, msd, surface_dice) from the two directed distance sets."""
    if len(dab) == 0 and len(dba) == 0:
        return 0.0, 0.0, 0.0, 1.0
    if len(dab) == 0 or len(dba) == 0:
        return float("inf"), float("inf"), float("inf"), 0.0
    hd = float(max(dab.max(), dba.max()))
    hd95 = float(max(np.percentile(dab, 95), np.percentile(dba, 95)))
    msd = float((dab.sum() + dba.sum()) / (len(dab) + len(dba)))
    sdice = float(((dab <= tol).sum() + (dba <= tol).sum()) / (len(dab) + len(dba)))
    return hd, hd95, msd, sdice


def hd95(test, ref, spacing) -> float:
    return _summaries(*surface_distances(test, ref, spacing), 0.0)[1]


def mean_surface_distance(test, ref, spacing) -> float:
    return _summaries(*surface_distances(test, ref, spacing), 0.0)[2]


def surface_dice(test, ref, spacing, tolerance_mm: float = 2.0) -> float:
    return _summaries(*surface_distances(test, ref, spacing), tolerance_mm)[3]


def _slice_boundaries(m: np.ndarray) -> np.ndarray:
    """2-D boundary of every slice of a (z, y, x) mask in one erosion (in-plane 4-neighbourhood)."""
    from scipy import ndimage

    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    return m & ~ndimage.binary_erosion(m, structure=st, border_value=0)


def _apl_from_edges(ea: np.ndarray, eb: np.ndarray, samp2d: tuple, tol: float,
                    d_ref: np.ndarray | None = None) -> float:
    """APL of one slice from its 2-D boundaries (test ea, reference eb); d_ref: the reference
    boundary's distances to the test boundary when already computed."""
    n_ref = int(eb.sum())
    if n_ref == 0:
        return 0.0
    px = float(np.mean(samp2d))
    if not ea.any():
        return n_ref * px
    if d_ref is None:
        d_ref = _nearest(_points_mm(eb, samp2d), _points_mm(ea, samp2d))
    return float((d_ref > tol).sum()) * px


def _apl_slice(test2d: np.ndarray, ref2d: np.ndarray, samp2d: tuple, tol: float) -> float:
    return _apl_from_edges(boundary(test2d), boundary(ref2d), samp2d, tol)


def added_path_length(test: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float:
    """APL in mm (see definitions above); 2-D masks are one slice, 3-D masks are summed over z."""
    a, b = np.asarray(test, bool), np.asarray(ref, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    samp = _sampling(spacing, a.ndim)
    if a.ndim == 2:
        return _apl_slice(a, b, samp, tolerance_mm)
    a, b = _crop(a, b)  # same distances, far fewer pixels to erode
    ea, eb = _slice_boundaries(a), _slice_boundaries(b)
    zs = np.nonzero(eb.reshape(eb.shape[0], -1).any(1))[0]
    return float(sum(_apl_from_edges(ea[z], eb[z], samp[1:], tolerance_mm) for z in zs))


def volume_ml(mask: np.ndarray, spacing) -> float:
    return float(np.asarray(mask, bool).sum()) * float(np.prod(spacing)) / 1000.0


def surface_metrics(test: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 2.0) -> SurfaceMetrics:
    """All metrics between a test mask and a reference mask, 2-D (y, x) or 3-D (z, y, x).

    spacing: (x, y) or (x, y, z) mm. For 2-D masks the "volumes" are areas in mm^2 / 1000 (cm^2 x 0.1)."""
    a, b = np.asarray(test, bool), np.asarray(ref, bool)
    hd, h95, msd, sd = _summaries(*surface_distances(a, b, spacing), tolerance_mm)
    va, vb = volume_ml(a, spacing), volume_ml(b, spacing)
    pct = (va - vb) / vb * 100.0 if vb > 0 else (0.0 if va == 0 else float("inf"))
    return SurfaceMetrics(dice=dice(a, b), hd=hd, hd95=h95, msd=msd, surface_dice=sd,
                          apl_mm=added_path_length(a, b, spacing, tolerance_mm), volume_test_ml=va,
                          volume_ref_ml=vb, volume_diff_ml=va - vb, volume_diff_pct=pct, tolerance_mm=tolerance_mm)


def per_slice_metrics(test: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 2.0) -> list[SliceMetrics]:
    """2-D metrics on every axial slice where either mask has voxels; spacing (x, y, z) mm."""
    a, b = np.asarray(test, bool), np.asarray(ref, bool)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"per-slice metrics need two 3-D masks of one shape, got {a.shape} and {b.shape}")
    sp2 = tuple(float(s) for s in spacing[:2])
    px_area = sp2[0] * sp2[1]
    zs = np.nonzero((a | b).reshape(a.shape[0], -1).any(1))[0]
    a, b = _crop(a, b)  # z is cropped too: index slices by position in the crop, report the real z
    z0 = int(zs[0]) - (int(zs[0]) > 0) if len(zs) else 0
    ea_all, eb_all = _slice_boundaries(a), _slice_boundaries(b)  # one erosion for all slices
    samp2 = sp2[::-1]
    out = []
    for z in zs:
        za = int(z) - z0
        az, bz, ea, eb = a[za], b[za], ea_all[za], eb_all[za]
        pa, pb = _points_mm(ea, samp2), _points_mm(eb, samp2)
        if len(pa) and len(pb):
            dab, dba = _nearest(pa, pb), _nearest(pb, pa)
        else:
            dab, dba = np.full(len(pa), np.inf), np.full(len(pb), np.inf)
        _, h95, msd, sd = _summaries(dab, dba, tolerance_mm)
        out.append(SliceMetrics(z=int(z), dice=dice(az, bz), hd95=h95, msd=msd, surface_dice=sd,
                                apl_mm=_apl_from_edges(ea, eb, samp2, tolerance_mm, d_ref=dba if len(pa) else None),
                                area_test_mm2=float(az.sum()) * px_area, area_ref_mm2=float(bz.sum()) * px_area))
    return out
