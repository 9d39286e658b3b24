"""RT contour review: compare two contour sets per structure and per slice, flag what is beyond the
user's thresholds, regenerate a flagged structure through a segmenter (the box of the existing
contour on each slice is the prompt), and record a per-structure decision.

"reference" is the contour set being reviewed against (e.g. the clinical contours or observer A),
"test" the other one (e.g. SAM-generated or observer B). Metric definitions: integrations/metrics.py.
The segmenter is passed in (anything with `.embed(image01)` and `.decode(embedding, PromptSet)`),
so this module never imports a model.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ClinsegInputError
from .metrics import SliceMetrics, SurfaceMetrics, per_slice_metrics, surface_metrics
from .volume import Volume


class ContourReviewError(ClinsegInputError):
    """A review request that does not fit the data (unknown structure, masks on another grid)."""


@dataclass(frozen=True)
class ReviewThresholds:
    """A structure (or slice) is flagged when ANY enabled limit is crossed; None disables a limit."""

    min_dice: float | None = 0.80
    max_hd95_mm: float | None = 5.0
    max_msd_mm: float | None = 2.0
    min_surface_dice: float | None = 0.80
    max_apl_mm: float | None = None
    max_volume_diff_pct: float | None = 10.0
    slice_min_dice: float | None = 0.70
    slice_max_hd95_mm: float | None = 5.0
    tolerance_mm: float = 2.0


def _structure_flags(m: SurfaceMetrics, t: ReviewThresholds) -> list[str]:
    f = []
    if t.min_dice is not None and m.dice < t.min_dice:
        f.append(f"Dice {m.dice:.2f} < {t.min_dice:.2f}")
    if t.max_hd95_mm is not None and m.hd95 > t.max_hd95_mm:
        f.append(f"HD95 {m.hd95:.1f} mm > {t.max_hd95_mm:g} mm")
    if t.max_msd_mm is not None and m.msd > t.max_msd_mm:
        f.append(f"MSD {m.msd:.1f} mm > {t.max_msd_mm:g} mm")
    if t.min_surface_dice is not None and m.surface_dice < t.min_surface_dice:
        f.append(f"surface Dice@{t.tolerance_mm:g}mm {m.surface_dice:.2f} < {t.min_surface_dice:.2f}")
    if t.max_apl_mm is not None and m.apl_mm > t.max_apl_mm:
        f.append(f"APL {m.apl_mm:.0f} mm > {t.max_apl_mm:g} mm")
    if t.max_volume_diff_pct is not None and abs(m.volume_diff_pct) > t.max_volume_diff_pct:
        f.append(f"volume {m.volume_diff_pct:+.1f} % beyond ±{t.max_volume_diff_pct:g} %")
    return f


def _slice_flagged(s: SliceMetrics, t: ReviewThresholds) -> bool:
    return bool((t.slice_min_dice is not None and s.dice < t.slice_min_dice)
                or (t.slice_max_hd95_mm is not None and s.hd95 > t.slice_max_hd95_mm))


@dataclass
class StructureReview:
    name: str
    presence: str  # "both", "reference only", "test only"
    metrics: SurfaceMetrics
    slices: list[SliceMetrics]
    flags: list[str]
    flagged_slices: list[int]

    @property
    def flagged(self) -> bool:
        return bool(self.flags or self.flagged_slices)

    def row(self) -> dict:
        m = self.metrics
        return {"structure": self.name, "presence": self.presence, "dice": m.dice, "hd95_mm": m.hd95,
                "msd_mm": m.msd, "surface_dice": m.surface_dice, "apl_mm": m.apl_mm,
                "volume_ref_ml": m.volume_ref_ml, "volume_test_ml": m.volume_test_ml,
                "volume_diff_ml": m.volume_diff_ml, "volume_diff_pct": m.volume_diff_pct,
                "flagged": self.flagged, "flags": "; ".join(self.flags),
                "flagged_slices": " ".join(str(z) for z in self.flagged_slices)}


def _match_names(ref: dict, test: dict, name_map: dict[str, str] | None) -> list[tuple[str, str | None, str | None]]:
    """[(display name, reference key, test key)] matching names case-insensitively (or by name_map
    reference name -> test name)."""
    name_map = dict(name_map or {})
    test_by_lower = {k.lower().strip(): k for k in test}
    used = set()
    out = []
    for rk in ref:
        tk = name_map.get(rk) or test_by_lower.get(rk.lower().strip())
        if tk is not None and tk not in test:
            raise ContourReviewError(f"name_map sends {rk!r} to {tk!r}, which the test set does not have")
        if tk is not None:
            used.add(tk)
        out.append((rk, rk, tk))
    out += [(tk, None, tk) for tk in test if tk not in used]
    return out


def compare_structure(name: str, ref: np.ndarray | None, test: np.ndarray | None, spacing,
                      thresholds: ReviewThresholds = ReviewThresholds()) -> StructureReview:
    if ref is None and test is None:
        raise ContourReviewError(f"{name}: nothing to compare")
    shape = (ref if ref is not None else test).shape
    r = np.zeros(shape, bool) if ref is None else np.asarray(ref, bool)
    t = np.zeros(shape, bool) if test is None else np.asarray(test, bool)
    if r.shape != t.shape or r.ndim != 3:
        raise ContourReviewError(f"{name}: the two contour sets are on different grids ({r.shape} vs {t.shape}); "
                                 "rasterise both onto the same image series")
    presence = "both" if ref is not None and test is not None else ("reference only" if test is None else "test only")
    m = surface_metrics(t, r, spacing, thresholds.tolerance_mm)
    sl = per_slice_metrics(t, r, spacing, thresholds.tolerance_mm)
    flags = _structure_flags(m, thresholds)
    if presence != "both":
        flags.insert(0, f"{presence}")
    return StructureReview(name, presence, m, sl, flags, [s.z for s in sl if _slice_flagged(s, thresholds)])


@dataclass
class Comparison:
    reviews: dict[str, StructureReview]
    thresholds: ReviewThresholds
    reference_label: str = "reference"
    test_label: str = "test"

    def table(self) -> list[dict]:
        return [r.row() for r in self.reviews.values()]

    def slice_table(self) -> list[dict]:
        rows = []
        for r in self.reviews.values():
            flagged = set(r.flagged_slices)
            for s in r.slices:
                rows.append({"structure": r.name, "z": s.z, "dice": s.dice, "hd95_mm": s.hd95, "msd_mm": s.msd,
                             "surface_dice": s.surface_dice, "apl_mm": s.apl_mm, "area_ref_mm2": s.area_ref_mm2,
                             "area_test_mm2": s.area_test_mm2, "flagged": s.z in flagged})
        return rows

    def flagged(self) -> list[str]:
        return [n for n, r in self.reviews.items() if r.flagged]


def compare_contour_sets(reference: dict[str, np.ndarray], test: dict[str, np.ndarray], spacing,
                         thresholds: ReviewThresholds = ReviewThresholds(), name_map: dict[str, str] | None = None,
                         reference_label: str = "reference", test_label: str = "test",
                         skip_empty: bool = True) -> Comparison:
    """Compare every structure; spacing is (x, y, z) mm of the common grid. Structures empty in both
    sets (e.g. contours only on slices missing from the series) are skipped unless skip_empty=False."""
    reviews = {}
    for name, rk, tk in _match_names(reference, test, name_map):
        r = reference.get(rk) if rk is not None else None
        t = test.get(tk) if tk is not None else None
        if skip_empty and not (r is not None and r.any()) and not (t is not None and t.any()):
            continue
        reviews[name] = compare_structure(name, r, t, spacing, thresholds)
    return Comparison(reviews, thresholds, reference_label, test_label)


# ----------------------------------------------------------------------------------------- regenerate
def component_boxes(mask2d: np.ndarray, min_px: int = 4, margin_px: int = 0) -> list[tuple[int, int, int, int]]:
    """One inclusive (x0, y0, x1, y1) box per connected component (8-connected) of a slice's contour,
    so two lungs on one slice get two boxes instead of one box over the mediastinum."""
    from scipy import ndimage

    lab, n = ndimage.label(mask2d, structure=np.ones((3, 3), bool))
    h, w = mask2d.shape
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or int((lab[sl] == i).sum()) < min_px:
            continue
        y0, y1 = sl[0].start, sl[0].stop - 1
        x0, x1 = sl[1].start, sl[1].stop - 1
        boxes.append((max(0, x0 - margin_px), max(0, y0 - margin_px), min(w - 1, x1 + margin_px),
                      min(h - 1, y1 + margin_px)))
    return boxes


def regenerate_structure(volume: Volume, mask: np.ndarray, segmenter, slices: list[int] | None = None,
                         window: str | None = None, margin_px: int = 2, min_px: int = 4,
                         label: str = "") -> tuple[np.ndarray, dict[int, float]]:
    """Re-segment a structure slice by slice from the boxes of its existing contour.

    slices: which slices to redo (default: every slice where the contour has pixels); the others
    keep the existing contour. Returns (new mask, {z: mean predicted IoU of that slice's boxes})."""
    from prompting.promptset import PromptSet, PromptSource

    from .windowing import slice_image, volume_window

    m = np.asarray(mask, bool)
    if m.shape != volume.shape:
        raise ContourReviewError(f"mask {m.shape} is not on the volume's grid {volume.shape}")
    todo = [int(z) for z in (slices if slices is not None else np.nonzero(m.reshape(m.shape[0], -1).any(1))[0])]
    bounds = volume_window(volume, window)
    out = m.copy()
    quality: dict[int, float] = {}
    for z in todo:
        boxes = component_boxes(m[z], min_px=min_px, margin_px=margin_px)
        if not boxes:
            continue  # nothing on this slice to take a box from: keep it as it is
        emb = segmenter.embed(slice_image(volume, z, bounds))
        new = np.zeros(m.shape[1:], bool)
        ious = []
        for b in boxes:
            seg = segmenter.decode(emb, PromptSet.from_box(*b, source=PromptSource.REFINEMENT, label=label))
            new |= np.asarray(seg.mask, bool)
            ious.append(float(seg.predicted_iou))
        out[z] = new
        quality[z] = float(np.mean(ious))
    return out, quality


# ----------------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    structure: str
    choice: str  # "reference", "test" or "regenerated"
    actor: str
    at: str


@dataclass
class ContourReview:
    """The state of one review: two contour sets, regenerated versions, and per-structure decisions."""

    volume: Volume
    reference: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    thresholds: ReviewThresholds = field(default_factory=ReviewThresholds)
    name_map: dict[str, str] | None = None
    reference_label: str = "reference"
    test_label: str = "test"
    regenerated: dict[str, np.ndarray] = field(default_factory=dict)
    regeneration_quality: dict[str, dict[int, float]] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)

    def compare(self) -> Comparison:
        return compare_contour_sets(self.reference, self.test, self.volume.spacing, self.thresholds, self.name_map,
                                    self.reference_label, self.test_label)

    def _masks_of(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        for disp, rk, tk in _match_names(self.reference, self.test, self.name_map):
            if disp == name:
                return (self.reference.get(rk) if rk else None), (self.test.get(tk) if tk else None)
        raise ContourReviewError(f"no structure named {name!r} in this review")

    def regenerate(self, name: str, segmenter, source: str = "reference", slices: list[int] | None = None,
                   window: str | None = None) -> StructureReview:
        """Regenerate `name` from the boxes of its `source` contour; returns the regenerated contour
        compared against the reference."""
        r, t = self._masks_of(name)
        base = r if source == "reference" else t
        if base is None or not base.any():
            raise ContourReviewError(f"{name}: the {source} set has no contour to take boxes from")
        new, q = regenerate_structure(self.volume, base, segmenter, slices=slices, window=window, label=name)
        self.regenerated[name] = new
        self.regeneration_quality[name] = q
        return compare_structure(name, r, new, self.volume.spacing, self.thresholds)

    def accept(self, name: str, choice: str, actor: str) -> Decision:
        if choice not in ("reference", "test", "regenerated"):
            raise ContourReviewError(f"choice {choice!r} must be reference, test or regenerated")
        r, t = self._masks_of(name)
        if {"reference": r, "test": t, "regenerated": self.regenerated.get(name)}[choice] is None:
            raise ContourReviewError(f"{name}: there is no {choice} contour to accept")
        d = Decision(name, choice, actor, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.decisions[name] = d
        return d

    def accepted_masks(self) -> dict[str, np.ndarray]:
        """The contours chosen so far (for RTSTRUCT / SEG export)."""
        out = {}
        for name, d in self.decisions.items():
            r, t = self._masks_of(name)
            out[name] = {"reference": r, "test": t, "regenerated": self.regenerated.get(name)}[d.choice]
        return out


def finite(x: float) -> float | None:
    """inf/nan -> None for JSON and tables."""
    return None if x is None or not math.isfinite(x) else float(x)
