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
