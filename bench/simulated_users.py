"""Simulated users of DESIGN.md: every prompt mode is measured with the same, seeded, imperfect user.

- box: the mask's bounding box; jittered: each edge moved by U(-10 %, +10 %) of the box size;
- click: the interior point farthest from the border (distance transform) plus N(0, 2 px);
- correction click: at the largest error region (missed -> positive, spurious -> negative), at the
  point of that region farthest from its border;
- scribble: the skeleton of the eroded mask as a polyline (its longest path: one stroke end to end); background scribble: a stroke outside
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


def _longest_stroke(skeleton: np.ndarray) -> np.ndarray:
    """The longest path through a skeleton (its largest 8-connected piece) as an (N, 2) polyline (x, y).

    A user scribbling along a structure draws one continuous stroke from one end of it to the other.
    Walking the skeleton greedily from an end stops at the first fork's dead end, which on a branched
    skeleton (the brain's, around the ventricles) was a twig 19 pixels long on a brain 125 pixels wide. The
    geodesic diameter (two Dijkstra sweeps; exact on a tree, near it on a skeleton with loops) is the
    stroke that runs the structure's length."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, dijkstra

    ys, xs = np.nonzero(skeleton)
    n = len(xs)
    if n <= 2:
        return np.stack([xs, ys], 1).astype(np.float32)
    index = np.full(skeleton.shape, -1, np.int64)
    index[ys, xs] = np.arange(n)
    h, w = skeleton.shape
    rows, cols, lengths = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each 8-neighbour pair once
        y2, x2 = ys + dy, xs + dx
        ok = (y2 < h) & (x2 >= 0) & (x2 < w)
        ok[ok] = index[y2[ok], x2[ok]] >= 0
        a, b = np.flatnonzero(ok), index[y2[ok], x2[ok]]
        rows.append(a)
        cols.append(b)
        lengths.append(np.full(len(a), float(np.hypot(dy, dx))))
    graph = coo_matrix((np.concatenate(lengths), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    _, piece = connected_components(graph, directed=False)
    start = int(np.flatnonzero(piece == np.bincount(piece).argmax())[0])
    dist = dijkstra(graph, directed=False, indices=start)
    end_a = int(np.argmax(np.where(np.isfinite(dist), dist, -1.0)))
    dist, pred = dijkstra(graph, directed=False, indices=end_a, return_predecessors=True)
    node = int(np.argmax(np.where(np.isfinite(dist), dist, -1.0)))
    path = [node]
    while node != end_a:
        node = int(pred[node])
        path.append(node)
    return np.stack([xs[path], ys[path]], 1).astype(np.float32)


def scribble(mask: np.ndarray, rng: np.random.Generator, erosion_frac: float = 0.2, max_points: int = 64,
             sigma: float = 1.0) -> np.ndarray:
    """Foreground stroke: the longest path through the skeleton of the eroded mask, as an (N, 2) float
    polyline (x, y), with hand noise."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, bool)
    dt = _inner_distance(mask)
    eroded = dt > max(1.0, erosion_frac * float(dt.max()))
    if not eroded.any():
        eroded = dt >= dt.max()
    sk = skeletonize(eroded)
    if not sk.any():
        sk = eroded
    line = _longest_stroke(sk)
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
