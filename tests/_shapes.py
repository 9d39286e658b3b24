"""Synthetic shapes shared by the propagation tests."""
from __future__ import annotations

import numpy as np


def ellipsoid(shape, centre, radii) -> np.ndarray:
    """Boolean (z, y, x) ellipsoid with the given centre and radii in voxels."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) <= 1.0


def mask_box(mask2d):
    """(x0, y0, x1, y1) of a 2-D mask's pixels, inclusive."""
    ys, xs = np.nonzero(mask2d)
    return xs.min(), ys.min(), xs.max(), ys.max()
