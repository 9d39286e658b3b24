"""Which of a reading's candidate masks is the structure the reader looked at: a learned choice.

`prompting.gaze.propose_box` decodes one box per pad around the dominant fixation cluster and
combines the masks that hold the fixations into a pixel vote (then the vote's own box once more).
On simulated readings the best single candidate is often much better than the vote (docs/gaze.md:
AAL 0.68 vs 0.52 at 0.5 deg), so the choice, not the candidates, is what loses Dice. Each candidate
(the pads' masks and the vote's result) gets a feature vector:
- how it relates to the fixations under DESIGN.md's reader (fixations fall inside the structure,
  deeper points more often): the dwell share inside, the fixations' mean depth in the mask, how far
  their centroid lies from the mask's depth-weighted centroid and how their spread compares with the
  spread of points drawn by depth from the mask;
- the decoder's own rating, its size against the fixations' spread, its agreement with the vote;
- the image cues and set cues the click ranker uses (`prompting.proposal_ranker`).
The bundled ranker (`load_ranker("gaze")`: a linear listwise score and gradient-boosted trees that
predict each candidate's Dice, each standardised over the reading's candidates and summed; fitted
by `bench/train_ranker.py` on readings of cases disjoint from bench/gaze.py's) scores them. Pure
functions of (masks, boxes, image, fixations).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .proposal_ranker import IMAGE_FEATURES, SET_FEATURES, ImageContext, image_features, intensity_deviation, set_features
from .promptset import Box

GAZE_FEATURES = ("cover", "cover_full", "is_vote", "pad_rank", "iou", "vote_iou", "log_area_spread", "depth_mean",
                 "centroid_offset", "spread_ratio", "log_area", "fix_dev") + IMAGE_FEATURES + SET_FEATURES


@dataclass(frozen=True)
class GazeCandidate:
    mask: np.ndarray  # (H, W) bool
    box: Box  # the box decoded for it (the vote's: its mask's box)
    predicted_iou: float
    cover: float  # dwell share of the core fixations inside (prompting.gaze.fixation_cover)
    is_vote: bool = False
    pad_rank: float = 0.5  # 0 smallest .. 1 largest pad; 0.5 for the vote


def _depth_moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
    """(depth map of the mask's crop, depth-weighted centroid (x, y) in slice pixels, depth-weighted
    variance (both axes summed), crop origin (x0, y0))."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    y0, x0 = int(rows[0]), int(cols[0])
    crop = mask[y0: rows[-1] + 1, x0: cols[-1] + 1]
    dt = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dt)
    w = dt[ys, xs] / dt[ys, xs].sum()
    c = np.array([(xs * w).sum() + x0, (ys * w).sum() + y0])
    var = float((((xs + x0 - c[0]) ** 2 + (ys + y0 - c[1]) ** 2) * w).sum())
    return dt, c, var, (x0, y0)


def candidate_features(c: GazeCandidate, fix_xy: np.ndarray, fix_w: np.ndarray, shape: tuple[int, int]) -> dict[str, float]:
    """The reader-model terms of one candidate (see the module docstring)."""
    h, w = shape
    n = len(fix_xy)
    cbar = (fix_xy * fix_w[:, None]).sum(0) / fix_w.sum()
    obs = math.sqrt(float((((fix_xy - cbar) ** 2).sum(1) * fix_w).sum() / fix_w.sum()))
    area = float(c.mask.sum())
    out = {"cover": c.cover, "is_vote": float(c.is_vote), "pad_rank": c.pad_rank, "iou": c.predicted_iou,
           "log_area_spread": math.log((area + 1.0) / (obs ** 2 + 4.0)), "log_area": math.log((area + 1.0) / (h * w))}
    if area == 0:
        out.update(depth_mean=0.0, centroid_offset=5.0, spread_ratio=-3.0)
        return out
    dt, centre, var, (x0, y0) = _depth_moments(c.mask)
    ix = np.clip(np.round(fix_xy[:, 0]).astype(int) - x0, 0, dt.shape[1] - 1)
    iy = np.clip(np.round(fix_xy[:, 1]).astype(int) - y0, 0, dt.shape[0] - 1)
    inside = (np.round(fix_xy[:, 0]) - x0 >= 0) & (np.round(fix_xy[:, 0]) - x0 < dt.shape[1]) \
        & (np.round(fix_xy[:, 1]) - y0 >= 0) & (np.round(fix_xy[:, 1]) - y0 < dt.shape[0])
    depth = np.where(inside, dt[iy, ix], 0.0) / max(float(dt.max()), 1.0)
    sd = math.sqrt(max(var, 0.25))
    # the centroid of n depth-weighted draws lies within ~sd / sqrt(n) of the mask's; their spread ~sd
    out.update(depth_mean=float((depth * fix_w).sum() / fix_w.sum()),
               centroid_offset=float(min(np.hypot(*(cbar - centre)) / (sd / math.sqrt(max(n, 1))), 10.0)),
               spread_ratio=float(np.clip(math.log((obs + 0.5) / sd), -3.0, 3.0)))
    return out


def gaze_features(cands: Sequence[GazeCandidate], image01: np.ndarray, fix_xy: np.ndarray, fix_w: np.ndarray) -> dict[str, np.ndarray]:
    """The ranker's feature table (GAZE_FEATURES) for one reading's candidates."""
    shape = tuple(np.asarray(image01).shape[:2])
    ctx = ImageContext.of(image01)
    masks = [c.mask for c in cands]
    vote = next((c.mask for c in cands if c.is_vote), None)
    full = max(c.cover for c in cands) - 1e-6
    rows = []
    for c in cands:
        f = candidate_features(c, fix_xy, fix_w, shape)
        f.update(image_features(c.mask, c.box.as_array(), ctx))
        f["cover_full"] = float(c.cover >= full)
        f["fix_dev"] = intensity_deviation(c.mask, ctx, fix_xy)
        u = np.count_nonzero(c.mask | vote) if vote is not None else 0
        f["vote_iou"] = float(np.count_nonzero(c.mask & vote) / u) if u else 0.0
        rows.append(f)
    table = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]} if rows else {}
    table.update(set_features(masks))
    return table


def rank(cands: Sequence[GazeCandidate], image01: np.ndarray, fix_xy: np.ndarray, fix_w: np.ndarray,
         kind: str = "gaze") -> np.ndarray:
    """Scores of the candidates by the bundled ranker (higher is better)."""
    from .proposal_ranker import load_ranker

    return load_ranker(kind).score(gaze_features(cands, image01, fix_xy, fix_w))
