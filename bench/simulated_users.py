"""Simulated users of DESIGN.md: every prompt mode is measured with the same, seeded, imperfect user.

- box: the mask's bounding box; jittered: each edge moved by U(-10 %, +10 %) of the box size;
- click: the interior point farthest from the border (distance transform) plus N(0, 2 px);
- correction click: at the largest error region (missed -> positive, spurious -> negative), at the
  point of that region farthest from its border;
- scribble: the skeleton of the eroded mask as a polyline; background scribble: a stroke outside
  the mask, near its border (a ring a few pixels out).
All functions take a `numpy.random.Generator` so a benchmark run is reproducible.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from prompting.promptset import Point, PromptSource


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask: nothing for a simulated user to point at")
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def jittered_box(mask: np.ndarray, rng: np.random.Generator, frac: float = 0.10) -> tuple[float, float, float, float]:
    """Each edge moved by U(-frac, +frac) of the box width (x edges) or height (y edges), clipped."""
    x0, y0, x1, y1 = tight_box(mask)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    dx0, dx1 = rng.uniform(-frac, frac, 2) * w
    dy0, dy1 = rng.uniform(-frac, frac, 2) * h
    H, W = mask.shape
    nx0, nx1 = sorted((x0 + dx0, x1 + dx1))
    ny0, ny1 = sorted((y0 + dy0, y1 + dy1))
    nx0, ny0 = max(0.0, nx0), max(0.0, ny0)
    nx1, ny1 = min(W - 1.0, max(nx1, nx0 + 1)), min(H - 1.0, max(ny1, ny0 + 1))
    return float(nx0), float(ny0), float(nx1), float(ny1)


def _inner_distance(mask: np.ndarray) -> np.ndarray:
    # pad so the image border counts as the structure's border too
    return ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _deepest(region: np.ndarray) -> tuple[float, float]:
    dt = _inner_distance(region)
    y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return float(x), float(y)


def _noisy_inside(region: np.ndarray, x: float, y: float, rng: np.random.Generator, sigma: float) -> tuple[float, float]:
    """(x, y) plus N(0, sigma) noise, clipped to the image (a user's hand is not exact)."""
    h, w = region.shape
    nx = float(np.clip(x + rng.normal(0, sigma), 0, w - 1))
    ny = float(np.clip(y + rng.normal(0, sigma), 0, h - 1))
    return nx, ny


def click(mask: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> Point:
    """The interior point farthest from the border plus N(0, sigma px)."""
    x, y = _deepest(np.asarray(mask, bool))
    nx, ny = _noisy_inside(mask, x, y, rng, sigma)
    return Point(nx, ny, True, PromptSource.CLICK)


def correction_click(mask: np.ndarray, predicted: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> Point | None:
    """The next click a user makes: in the largest error region, positive if missed, negative if spurious.

    The region's size is its largest inscribed distance (what the eye sees as "the biggest mistake");
    None when the prediction is already perfect.
    """
    mask = np.asarray(mask, bool)
    predicted = np.asarray(predicted, bool)
    best = None
    for positive, err in ((True, mask & ~predicted), (False, predicted & ~mask)):
        if not err.any():
            continue
        dt = _inner_distance(err)
        d = float(dt.max())
        if best is None or d > best[0]:
            y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
            best = (d, positive, float(x), float(y))
    if best is None:
        return None
    _, positive, x, y = best
    nx, ny = _noisy_inside(mask, x, y, rng, sigma)
    return Point(nx, ny, positive, PromptSource.CLICK)


def _order_polyline(pixels: np.ndarray) -> np.ndarray:
    """Skeleton pixels (N, 2) as (x, y) -> one polyline: greedy nearest neighbour from an end."""
    pts = pixels.astype(np.float32)
    if len(pts) <= 2:
        return pts
    # start from the pixel farthest from the centroid: an end of the skeleton
    start = int(np.argmax(((pts - pts.mean(0)) ** 2).sum(1)))
    order = [start]
    left = np.ones(len(pts), bool)
    left[start] = False
    for _ in range(len(pts) - 1):
        d = ((pts - pts[order[-1]]) ** 2).sum(1)
        d[~left] = np.inf
        j = int(np.argmin(d))
        if d[j] > 9.0:  # a jump: the rest is another branch, a stroke does not teleport
            break
        order.append(j)
        left[j] = False
    return pts[order]


def scribble(mask: np.ndarray, rng: np.random.Generator, erosion_frac: float = 0.2, max_points: int = 64,
             sigma: float = 1.0) -> np.ndarray:
    """Foreground stroke: the skeleton of the eroded mask as an (N, 2) float polyline (x, y), with hand noise."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, bool)
    dt = _inner_distance(mask)
    eroded = dt > max(1.0, erosion_frac * float(dt.max()))
    if not eroded.any():
        eroded = dt >= dt.max()
    sk = skeletonize(eroded)
    if not sk.any():
        sk = eroded
    ys, xs = np.nonzero(sk)
    line = _order_polyline(np.stack([xs, ys], 1))
    if len(line) > max_points:
        line = line[np.linspace(0, len(line) - 1, max_points).round().astype(int)]
    h, w = mask.shape
    noisy = line + rng.normal(0, sigma, line.shape).astype(np.float32)
    noisy[:, 0] = np.clip(noisy[:, 0], 0, w - 1)
    noisy[:, 1] = np.clip(noisy[:, 1], 0, h - 1)
    # a noisy vertex must stay inside: a user scribbles on the structure
    inside = mask[noisy[:, 1].round().astype(int), noisy[:, 0].round().astype(int)]
    noisy[~inside] = line[~inside]
    return noisy


def background_scribble(mask: np.ndarray, rng: np.random.Generator, gap_px: float = 4.0, max_points: int = 48) -> np.ndarray:
    """Background stroke outside the structure, near its border: a ring `gap_px`..`gap_px+2` px out,
    covering a random ~half of it (a user marks what to leave out, not all around)."""
    mask = np.asarray(mask, bool)
    outside = ndi.distance_transform_edt(~mask)
    ring = (outside >= gap_px) & (outside < gap_px + 2)
    ys, xs = np.nonzero(ring)
    if len(xs) == 0:
        return np.zeros((0, 2), np.float32)
    cy, cx = ndi.center_of_mass(mask)
    ang = np.arctan2(ys - cy, xs - cx)
    a0 = rng.uniform(-np.pi, np.pi)
    keep = np.cos(ang - a0) > 0  # half the ring, centred on a random direction
    xs, ys, ang = xs[keep], ys[keep], ang[keep]
    if len(xs) == 0:
        return np.zeros((0, 2), np.float32)
    order = np.argsort(np.angle(np.exp(1j * (ang - a0))))
    line = np.stack([xs[order], ys[order]], 1).astype(np.float32)
    if len(line) > max_points:
        line = line[np.linspace(0, len(line) - 1, max_points).round().astype(int)]
    return line
