"""Scribbles -> prompts: foreground strokes say "this is it", background strokes say "not this".

A stroke is a polyline with a width, in slice pixels. Foreground strokes give
- an enclosing box (the strokes lie INSIDE the structure, so the box is grown past them; the right
  growth is chosen like a click's box: several margins decoded in one batch, scored by agreement
  with the strokes),
- positive points sampled along the strokes,
- a dense mask prompt (the rasterised strokes as low-res logits in the model frame).
Background strokes become negative points, and boxes that would cover them are cut or penalised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from integrations.errors import InvalidPromptError

from .clicks import ClickConfig, _clip_box, _dedupe, _mask_box, _mask_iou, _with_margin, read_answer, score_boxes
from .promptset import Box, Point, PromptSet, PromptSource
from .proposal_ranker import cut_by_box


@dataclass(frozen=True)
class Scribble:
    points: np.ndarray  # (N, 2) float (x, y) vertices of the polyline
    width: float = 3.0  # stroke width in pixels
    positive: bool = True  # foreground (True) or background (False)
    source: PromptSource = PromptSource.SCRIBBLE

    @staticmethod
    def of(xy: Sequence[Sequence[float]], width: float = 3.0, positive: bool = True) -> "Scribble":
        return Scribble(np.asarray(xy, np.float32).reshape(-1, 2), float(width), positive)

    @property
    def kind(self) -> str:
        return "foreground" if self.positive else "background"


def check_scribble(s: Scribble, image_shape: tuple[int, int]) -> None:
    """Reject strokes no model can use: empty, NaN, zero/negative width, entirely outside the image."""
    h, w = image_shape
    pts = np.asarray(s.points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise InvalidPromptError(f"the {s.kind} scribble is empty: draw a stroke over the structure.")
    if not np.isfinite(pts).all():
        raise InvalidPromptError(f"the {s.kind} scribble has non-numeric coordinates.")
    if not (math.isfinite(s.width) and s.width > 0):
        raise InvalidPromptError(f"the {s.kind} scribble has width {s.width}; use a positive stroke width in pixels.")
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    if not inside.any():
        raise InvalidPromptError(f"the {s.kind} scribble lies entirely outside the {w}x{h} image.")


def rasterize(scribbles: Sequence[Scribble], image_shape: tuple[int, int]) -> np.ndarray:
    """Strokes -> (H, W) bool, each segment drawn with its width (round caps), clipped to the image."""
    import cv2

    h, w = image_shape
    out = np.zeros((h, w), np.uint8)
    for s in scribbles:
        pts = np.round(np.asarray(s.points, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        thick = max(1, int(round(s.width)))
        if len(pts) == 1:
            cv2.circle(out, tuple(int(v) for v in pts[0, 0]), max(0, thick // 2), 1, -1)
        else:
            cv2.polylines(out, [pts], False, 1, thickness=thick)
    return out.astype(bool)


def sample_along(s: Scribble, n: int) -> list[Point]:
    """n points evenly spaced by arc length along the stroke (both ends included when n >= 2)."""
    pts = np.asarray(s.points, np.float64).reshape(-1, 2)
    if len(pts) == 1 or n <= 1:
        mid = pts[len(pts) // 2]
        return [Point(float(mid[0]), float(mid[1]), s.positive, s.source)]
    seg = np.sqrt(((pts[1:] - pts[:-1]) ** 2).sum(1))
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] == 0:
        return [Point(float(pts[0, 0]), float(pts[0, 1]), s.positive, s.source)]
    at = np.linspace(0, cum[-1], n)
    xs = np.interp(at, cum, pts[:, 0])
    ys = np.interp(at, cum, pts[:, 1])
    return [Point(float(x), float(y), s.positive, s.source) for x, y in zip(xs, ys)]


def mask_prompt(segmenter, image_shape: tuple[int, int], fg: np.ndarray, bg: np.ndarray | None = None,
                strength: float = 8.0) -> np.ndarray:
    """Rasterised strokes -> (1, 256, 256) low-res logits in the model frame (+strength on foreground
    strokes, -strength on background strokes and padding, 0 = no opinion elsewhere)."""
    import torch
    import torch.nn.functional as F

    t = segmenter.transform_for(tuple(image_shape))
    dense = np.zeros(image_shape, np.float32)
    dense[fg] = strength
    if bg is not None:
        dense[bg] = -strength
    ih, iw = t.input_size
    low = F.interpolate(torch.from_numpy(dense)[None, None], size=(ih, iw), mode="area")
    side = t.target
    low = F.pad(low, (0, side - iw, 0, side - ih), value=-strength)
    low = F.interpolate(low, size=(256, 256), mode="area")
    return low[0].numpy().astype(np.float32)


def _clip_xy(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    p = np.asarray(pts, np.float32).copy()
    p[:, 0] = np.clip(p[:, 0], 0, w - 1)
    p[:, 1] = np.clip(p[:, 1], 0, h - 1)
    return p


def _agreement_points(fg: np.ndarray, bg: np.ndarray, n: int = 24) -> list[Point]:
    """Pixels of the rasterised strokes to check a mask against (a subsample, both kinds)."""
    out = []
    for m, pos in ((fg, True), (bg, False)):
        ys, xs = np.nonzero(m)
        if len(xs):
            idx = np.linspace(0, len(xs) - 1, min(n, len(xs))).round().astype(int)
            out += [Point(float(xs[i]), float(ys[i]), pos, PromptSource.SCRIBBLE) for i in idx]
    return out


def scribble_boxes(fg: np.ndarray, bg: np.ndarray, shape: tuple[int, int], margins: Sequence[float]) -> list[np.ndarray]:
    """Boxes around the foreground strokes grown by each margin (fraction of the strokes' extent plus
    a few pixels: strokes run inside the structure), each also cut back to leave background strokes out."""
    ys, xs = np.nonzero(fg)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    w, h = x1 - x0 + 1, y1 - y0 + 1
    out = []
    for m in margins:
        ext = m * max(w, h) + 2.0
        b = _clip_box(np.array([x0 - ext, y0 - ext, x1 + ext, y1 + ext], np.float32), shape)
        out.append(b)
        if bg.any():
            out.append(_cut_to_exclude(b, bg, (x0, y0, x1, y1)))
    return _dedupe(out)


def _cut_to_exclude(b: np.ndarray, bg: np.ndarray, core: tuple[float, float, float, float]) -> np.ndarray:
    """Shrink each side of box b towards the foreground core until no background-stroke pixel is in the
    margin band on that side (a background stroke beside the structure marks where it ends)."""
    x0, y0, x1, y1 = (float(v) for v in b)
    cx0, cy0, cx1, cy1 = core
    ys, xs = np.nonzero(bg)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    xs, ys = xs[inside], ys[inside]
    left = xs[xs < cx0]
    right = xs[xs > cx1]
    top = ys[ys < cy0]
    bottom = ys[ys > cy1]
    if len(left):
        x0 = max(x0, float(left.max()) + 1)
    if len(right):
        x1 = min(x1, float(right.min()) - 1)
    if len(top):
        y0 = max(y0, float(top.max()) + 1)
    if len(bottom):
        y1 = min(y1, float(bottom.min()) - 1)
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], np.float32)


def _cut_nearest_side(b: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Box + background stroke, no foreground stroke: the stroke marks where the object ends on ONE
    side (the side its centroid leans to, relative to the box's half-size); the box is cut just before
    the stroke's pixels on that side. Strokes entirely outside the box change nothing."""
    x0, y0, x1, y1 = (float(v) for v in b)
    ys, xs = np.nonzero(bg)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    xs, ys = xs[inside], ys[inside]
    if len(xs) == 0:
        return np.array([x0, y0, x1, y1], np.float32)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    dx = (xs.mean() - cx) / max(1.0, (x1 - x0) / 2)
    dy = (ys.mean() - cy) / max(1.0, (y1 - y0) / 2)
    if abs(dx) >= abs(dy):
        if dx > 0:
            x1 = max(cx, float(xs.min()) - 1)
        else:
            x0 = min(cx, float(xs.max()) + 1)
    else:
        if dy > 0:
            y1 = max(cy, float(ys.min()) - 1)
        else:
            y0 = min(cy, float(ys.max()) + 1)
    return np.array([x0, y0, x1, y1], np.float32)


@dataclass(frozen=True)
class ScribbleConfig:
    margins: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)  # used with a box and background strokes
    # Foreground-only proposals: the strokes' bounding box grown by px + rel x (strokes' extent), all
    # combinations: a stroke along a thin structure needs a few pixels, along a round one a fraction.
    grow_px: tuple[float, ...] = (0, 2, 4, 7, 11, 16, 23, 32, 45)
    grow_rel: tuple[float, ...] = (0.0, 0.15, 0.3, 0.5)
    refine_margin: float = 0.04  # every proposal is re-decoded once with its mask's box + this margin
    # Score weights (chosen on two 26-case dev subsets, docs/prompting.md): a foreground stroke runs
    # INSIDE the structure (all stroke pixels in the mask) and along its MIDDLE (stroke pixels close
    # to the mask's medial axis and deep inside it), and the structure does not reach far beyond the
    # stroke (a mask spilling into a neighbour extends well past the stroke's ends and sides).
    w_inside: float = 3.0  # fraction of stroke pixels inside, plus the same again when all are
    w_medial: float = 1.0  # - mean distance of stroke pixels to the medial axis / largest depth
    w_depth: float = 1.0  # mean depth at stroke pixels / largest depth
    w_extent: float = 0.5  # - 99th percentile distance of mask pixels from the stroke / largest depth
    w_fit: float = 1.0  # box fit (mask box vs proposal box IoU)
    # - fraction of the proposal box's border the mask runs along: a mask cut by its box (a disc
    # under a box too flat for it, around a short stroke across its middle) fits the stroke's
    # medial axis well but continues past the box
    w_cut: float = 2.0
    points_per_stroke: int = 3
    negative_points_per_stroke: int = 2
    use_mask_prompt: bool = False  # LiteMedSAM was trained without mask prompts: off unless it helps
    # The learned proposal ranker (prompting/proposal_ranker.py) replaces the hand score for
    # foreground-only strokes when the image is given to propose_from_scribbles; None = hand score.
    ranker: str | None = "stroke"
    click: ClickConfig = ClickConfig()
    # Foreground strokes alone on a LARGE structure are answered by the click decoder reading
    # `read_points` points along each stroke (`prompting.clicks.read_answer`, its crisp-outline box rule
    # included) when its answer contains the strokes and covers at least `read_min_area` pixels of the
    # model frame (LiteMedSAM: 256 x 256): the box proposals around a stroke through a whole organ stop
    # short of its outline. Chosen on cases disjoint from bench/prompts.py (docs/prompting.md): strokes
    # on Colin27 slices 0.735 proposals -> 0.758 at 2,000 px (0.728 at 1,000: mid-sized parcels lose),
    # nuclei 0.799 -> 0.841. None: always propose.
    read_points: int = 5
    read_min_area: float | None = 2000.0


def _medial_axis(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(skeleton of the mask eroded to 20 % of its depth, interior distance map): where a stroke drawn
    "along the middle" of this mask would run."""
    from skimage.morphology import skeletonize

    dt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    core = dt > max(1.0, 0.2 * float(dt.max()))
    if not core.any():
        core = dt >= dt.max()
    sk = skeletonize(core)
    return (sk if sk.any() else core), dt


def stroke_terms(mask: np.ndarray, fg: np.ndarray) -> dict[str, float] | None:
    """The stroke-vs-mask measurements behind `stroke_fit` (None for an empty mask or stroke):
    inside (fraction of stroke pixels in the mask), medial (mean distance of stroke pixels to the
    mask's medial axis / its largest depth), depth (mean depth at the stroke / largest depth), extent
    (99th percentile distance of mask pixels from the stroke / largest depth)."""
    ys, xs = np.nonzero(fg)
    if not mask.any() or len(xs) == 0:
        return None
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    pad = 2
    y0, y1 = max(0, min(rows[0], ys.min()) - pad), min(mask.shape[0], max(rows[-1], ys.max()) + pad + 1)
    x0, x1 = max(0, min(cols[0], xs.min()) - pad), min(mask.shape[1], max(cols[-1], xs.max()) + pad + 1)
    m, f = mask[y0:y1, x0:x1], fg[y0:y1, x0:x1]
    sy, sx = ys - y0, xs - x0
    sk, dt = _medial_axis(m)
    top = max(float(dt.max()), 1.0)
    return {"inside": float(m[sy, sx].mean()),
            "medial": min(float(ndi.distance_transform_edt(~sk)[sy, sx].mean()) / top, 3.0),
            "depth": float(dt[sy, sx].mean()) / top,
            "extent": min(float(np.percentile(ndi.distance_transform_edt(~f)[m], 99)) / top, 5.0)}


def stroke_fit(mask: np.ndarray, fg: np.ndarray, cfg: "ScribbleConfig") -> float:
    """How plausible `mask` is as the structure the foreground strokes `fg` were drawn along."""
    t = stroke_terms(mask, fg)
    if t is None:
        return -1e9
    return (cfg.w_inside * (t["inside"] + (t["inside"] >= 0.98)) - cfg.w_medial * t["medial"] + cfg.w_depth * t["depth"]
            - cfg.w_extent * t["extent"])


def _stroke_proposals(fg: np.ndarray, shape: tuple[int, int], cfg: "ScribbleConfig") -> list[np.ndarray]:
    ys, xs = np.nonzero(fg)
    ext = max(float(np.ptp(xs)), float(np.ptp(ys))) + 1
    out = []
    for px in cfg.grow_px:
        for rel in cfg.grow_rel:
            e = px + rel * ext
            out.append(_clip_box(np.array([xs.min() - e, ys.min() - e, xs.max() + e, ys.max() + e], np.float32), shape))
    return _dedupe(out)


def stroke_candidates(segmenter, embedding, fg: np.ndarray, shape: tuple[int, int], cfg: "ScribbleConfig") -> list:
    """Foreground strokes only: proposals + their fixed-point refinements (two batches), hand-scored
    (`stroke_fit` + box fit - cut by the box); `.refined` and `.neighbours` (IoU between a proposal
    and its refinement) filled."""
    pts = _agreement_points(fg, np.zeros_like(fg))
    ccfg = replace(cfg.click, w_centrality=0.0, w_gap=0.0, w_neighbours=0.0, w_size=0.0)
    first = score_boxes(segmenter, embedding, _stroke_proposals(fg, shape, cfg), pts, ccfg)
    parents = [s for s in first if s.mask.any()]
    refined = score_boxes(segmenter, embedding, [_with_margin(_mask_box(s.mask), cfg.refine_margin, shape) for s in parents],
                          pts, ccfg) if parents else []
    for r, parent in zip(refined, parents):
        r.refined = True
        r.neighbours = parent.neighbours = _mask_iou(r.mask, parent.mask)
    every = first + refined
    for s in every:
        s.terms = stroke_terms(s.mask, fg)
        s.score = stroke_fit(s.mask, fg, cfg) + cfg.w_fit * s.consistency - cfg.w_cut * cut_by_box(s.mask, s.box)
    return every


def stroke_features(cands: Sequence, image01: np.ndarray, fg: np.ndarray) -> dict[str, np.ndarray]:
    """The proposal ranker's feature table (prompting.proposal_ranker.STROKE_FEATURES) for stroke proposals."""
    from .proposal_ranker import ImageContext, image_features, intensity_deviation, set_features

    h, w = fg.shape
    ctx = ImageContext.of(image01)
    ys, xs = np.nonzero(fg)
    idx = np.linspace(0, len(xs) - 1, min(64, len(xs))).round().astype(int) if len(xs) else np.zeros(0, int)
    xy = np.stack([xs[idx], ys[idx]], 1).astype(np.float64) if len(xs) else np.zeros((0, 2))
    rows = []
    for s in cands:
        t = getattr(s, "terms", None) or stroke_terms(s.mask, fg) or {"inside": 0.0, "medial": 3.0, "depth": 0.0, "extent": 5.0}
        f = image_features(s.mask, s.box, ctx)
        f.update(t, all_inside=float(t["inside"] >= 0.98), consistency=s.consistency, iou=s.iou,
                 stability=s.stability, log_area=math.log((s.area + 1.0) / (h * w)), refined=float(s.refined),
                 neighbours=s.neighbours, stroke_dev=intensity_deviation(s.mask, ctx, xy))
        rows.append(f)
    table = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]} if rows else {}
    table.update(set_features([s.mask for s in cands]))
    return table


def _best_for_strokes(segmenter, embedding, fg: np.ndarray, shape: tuple[int, int], cfg: "ScribbleConfig",
                      image01: np.ndarray | None = None):
    """Foreground strokes only: the best of `stroke_candidates`, by the learned ranker when `cfg.ranker`
    is set and the image is given, else by the hand score."""
    every = stroke_candidates(segmenter, embedding, fg, shape, cfg)
    if cfg.ranker and image01 is not None:
        from .proposal_ranker import load_ranker

        for s, v in zip(every, load_ranker(cfg.ranker).score(stroke_features(every, image01, fg))):
            s.score = float(v)
    return max(every, key=lambda s: s.score), len(every)


def propose_from_scribbles(segmenter, embedding, scribbles: Sequence[Scribble], box: Box | None = None,
                           cfg: ScribbleConfig = ScribbleConfig(), image01: np.ndarray | None = None) -> PromptSet:
    """Foreground/background strokes (and optionally a user box) -> one PromptSet.

    With foreground strokes only, a large structure is answered by the click decoder reading points
    along the strokes (`ScribbleConfig.read_min_area`, `_read_strokes`); otherwise boxes around the
    strokes (grown by several pixel and relative margins) and their fixed-point refinements (each mask's own box) are decoded in two batches and
    the mask the strokes fit best wins (`stroke_fit`: strokes inside, along its medial axis, not far
    from its every part). With background strokes too, boxes around the foreground strokes cut back
    to leave the background strokes out are scored by agreement with both.
    With a box, background strokes cut the box where they cross it (variants scored the same way) and
    become negative points.
    `image01` (the slice the embedding came from) lets the learned proposal ranker look at the image
    for foreground-only strokes; without it the hand score ranks.
    """
    shape = tuple(embedding.original_size)
    if not scribbles:
        raise InvalidPromptError("no scribble given: draw over the structure (and optionally around it).")
    for s in scribbles:
        check_scribble(s, shape)
    fg_s = [Scribble(_clip_xy(s.points, shape), s.width, True, s.source) for s in scribbles if s.positive]
    bg_s = [Scribble(_clip_xy(s.points, shape), s.width, False, s.source) for s in scribbles if not s.positive]
    fg = rasterize(fg_s, shape)
    bg = rasterize(bg_s, shape) & ~fg  # where strokes cross, the foreground stroke wins
    if box is None and not fg.any():
        raise InvalidPromptError("only background scribbles were given: draw one stroke on the structure, or a box.")
    if box is None and not bg.any():
        answered = _read_strokes(segmenter, embedding, fg_s, fg, cfg)
        if answered is not None:
            return answered
    check_pts = _agreement_points(fg, bg)
    points = [p for s in fg_s for p in sample_along(s, cfg.points_per_stroke)]
    points += [p for s in bg_s for p in sample_along(s, cfg.negative_points_per_stroke)]
    if box is not None:
        b = box.as_array()
        boxes = [_clip_box(b, shape)]
        if bg.any():
            core = (b[0] + 1, b[1] + 1, b[2] - 1, b[3] - 1)
            if fg.any():
                ys, xs = np.nonzero(fg)
                core = (xs.min(), ys.min(), xs.max(), ys.max())
                boxes.append(_cut_to_exclude(boxes[0], bg, core))
            else:
                boxes.append(_cut_nearest_side(boxes[0], bg))
        boxes = _dedupe(boxes)
    elif bg.any():
        boxes = scribble_boxes(fg, bg, shape, cfg.margins)
    else:
        boxes = None
    mask_input = mask_prompt(segmenter, shape, fg, bg) if cfg.use_mask_prompt else None
    if boxes is None:
        best, n_boxes = _best_for_strokes(segmenter, embedding, fg, shape, cfg, image01)
        scored = [best]
    else:
        scored = score_boxes(segmenter, embedding, boxes, check_pts, cfg.click, mask_input=mask_input)
        best, n_boxes = max(scored, key=lambda s: s.score), len(boxes)
    if box is not None and best is not scored[0] and best.points_ok <= scored[0].points_ok:
        # negative evidence only acts where the user's own box contradicts it: a background stroke the
        # box's mask already avoids must not cut the box (measured: tight box 0.86 -> 0.59 on nuclei)
        best = scored[0]
    bb = best.box
    src = box.source if box is not None else PromptSource.SCRIBBLE
    conf = box.confidence if box is not None else float(np.clip(best.iou * best.points_ok, 0, 1))
    # Without a dense stroke prompt, the chosen box's own logits are the mask prompt: LiteMedSAM
    # (box-trained) drifts when points are added to a box, the logits pull it back (see clicks.py).
    ps = PromptSet(points=tuple(points), box=Box(float(bb[0]), float(bb[1]), float(bb[2]), float(bb[3]), src, conf),
                   mask_input=mask_input if mask_input is not None else best.logits)
    n_fg, n_bg = len(fg_s), len(bg_s)
    return ps.with_note(f"{n_fg} foreground / {n_bg} background scribble(s) -> box ({bb[0]:.0f}, {bb[1]:.0f}, {bb[2]:.0f}, {bb[3]:.0f})"
                        f" chosen among {n_boxes} (stroke pixels agreeing {best.points_ok:.0%}, decoder IoU {best.iou:.2f})")


def _read_strokes(segmenter, embedding, fg_s: Sequence[Scribble], fg: np.ndarray, cfg: ScribbleConfig) -> PromptSet | None:
    """Foreground strokes alone -> the click decoder's answer (points along them, read once), or None
    when it does not answer them (no click decoder, too small an answer, strokes left out)."""
    if cfg.read_min_area is None:
        return None
    points = [p for s in fg_s for p in sample_along(s, cfg.read_points)]
    answered = read_answer(segmenter, embedding, points, replace(cfg.click, read_min_area=cfg.read_min_area), must_cover=fg)
    if answered is None:
        return None
    return answered.with_note(f"{len(fg_s)} foreground scribble(s) answered by the click decoder (a structure of "
                              f">= {cfg.read_min_area:.0f} model-frame px that contains the strokes)")


def negative_evidence(scribbles: Sequence[Scribble], image_shape: tuple[int, int]) -> np.ndarray:
    """The background strokes as an (H, W) bool map: pixels a result must not contain."""
    return rasterize([s for s in scribbles if not s.positive], image_shape)


def remove_negative(mask: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Drop connected components of `mask` that a background stroke crosses, unless the component is
    most of the mask (then only the stroke's pixels go: the stroke marks an edge, not the object)."""
    mask = np.asarray(mask, bool)
    if not negative.any() or not mask.any():
        return mask
    lab, n = ndi.label(mask)
    hit = np.unique(lab[negative & mask])
    hit = hit[hit > 0]
    out = mask.copy()
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    biggest = int(np.argmax(sizes)) + 1
    for k in hit:
        if k == biggest:
            out[negative] = False
        else:
            out[lab == k] = False
    return out
