"""Clicks -> a box the segmenter can use, plus the clicks themselves.

LiteMedSAM was trained on boxes only: a click alone decodes to an empty mask (DESIGN.md). So a click
is turned into *box proposals*: boxes of several sizes and shapes around the clicked point(s), plus
boxes from image-driven region growing from the click on the windowed slice. All proposals are
decoded in ONE batch against the cached embedding (the encoder never runs again) and scored by
- agreement with the clicks: every positive click inside the mask, every negative click outside;
- the decoder's own IoU estimate;
- stability: the mask barely changes when the logit threshold moves (SAM's stability score);
- self-consistency: the mask's bounding box is close to the box that produced it (a box that is far
  too large or too small gives a mask that does not fill it, or one cut by the box edge).
The best proposals are then re-decoded once with their mask's own bounding box (a fixed-point step).

Iterative correction (`correct_with_click`): a new click re-decodes with the previous low-res logits
as `mask_input` and an updated box (widened to take a positive click in, cut to push a negative one
out), again choosing among a few box variants in one batch.

`prompting/` must not import `models/`: the segmenter comes in as an argument (dependency injection);
it needs `decode_logits(embedding, prompts, multimask)` and `transform_for(shape)` (SamSegmenter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from integrations.errors import InvalidPromptError

from .promptset import Box, Point, PromptSet, PromptSource


@dataclass(frozen=True)
class ClickConfig:
    # Half-sizes of the square-ish proposals, as fractions of the image's longest side.
    scales: tuple[float, ...] = (0.02, 0.035, 0.05, 0.07, 0.1, 0.14, 0.19, 0.26, 0.35, 0.45)
    aspects: tuple[float, ...] = (1.0, 0.5, 2.0)  # width / height
    grow_tolerances: tuple[float, ...] = (0.04, 0.08, 0.14)  # |I - I_seed| in windowed [0, 1] units
    refine_top: int = 4  # proposals re-decoded with their own mask's box
    refine_margin: float = 0.04  # margin added to a mask's box when refining, fraction of its size
    # Score weights. Centrality dominates: a user clicks near the middle of what they mean, so the
    # right mask has the click near its deepest interior point; a neighbouring larger structure (the
    # whole brain around a gyrus) contains the click too, but near its edge. Measured on a 26-case
    # dev subset (bench/prompts.py): IoU+stability+box-fit alone picked such larger structures
    # (Dice 0.36), adding centrality and neighbour agreement gave 0.58.
    w_iou: float = 1.0
    w_stability: float = 0.0
    w_consistency: float = 0.0
    w_centrality: float = 3.0
    w_neighbours: float = 1.0  # mask agrees with those of similar boxes (stable under box changes)
    w_points: float = 3.0


def check_points(points: Sequence[Point], image_shape: tuple[int, int]) -> None:
    """Reject points no model can use, with the reason (NaN, outside the image, no positive one)."""
    h, w = image_shape
    if not points:
        raise InvalidPromptError("no click given: click inside the structure (and optionally outside it to exclude).")
    for p in points:
        if not (math.isfinite(p.x) and math.isfinite(p.y)):
            raise InvalidPromptError(f"a {p.source.value} point has non-numeric coordinates ({p.x}, {p.y}).")
        if not (0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
            raise InvalidPromptError(f"a {p.source.value} point ({p.x:g}, {p.y:g}) lies outside the {w}x{h} image.")
    if not any(p.positive for p in points):
        raise InvalidPromptError("only negative clicks were given: click at least once inside the structure.")


def _clip_box(b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([max(0.0, b[0]), max(0.0, b[1]), min(w - 1.0, b[2]), min(h - 1.0, b[3])], np.float32)


def scale_proposals(points: Sequence[Point], shape: tuple[int, int], cfg: ClickConfig) -> list[np.ndarray]:
    """Boxes of several sizes and aspect ratios around the bounding box of the positive points."""
    pos = np.array([[p.x, p.y] for p in points if p.positive], np.float32)
    x0, y0 = pos.min(0)
    x1, y1 = pos.max(0)
    side = float(max(shape))
    out = []
    for s in cfg.scales:
        for a in cfg.aspects:
            hw = max(2.0, s * side * math.sqrt(a))
            hh = max(2.0, s * side / math.sqrt(a))
            out.append(_clip_box(np.array([x0 - hw, y0 - hh, x1 + hw, y1 + hh], np.float32), shape))
    return out


def grow_proposals(image01: np.ndarray, points: Sequence[Point], cfg: ClickConfig) -> list[np.ndarray]:
    """Bounding boxes of the connected regions of similar intensity around the positive clicks.

    Why: for a structure that differs from its surroundings, a flood fill from the click finds its
    extent directly, which the fixed-scale grid only approximates.
    """
    img = np.asarray(image01, np.float32)
    if img.ndim == 3:
        img = img.mean(-1)
    smooth = ndi.gaussian_filter(img, 1.0)
    h, w = img.shape
    pos = [p for p in points if p.positive]
    out = []
    for tol in cfg.grow_tolerances:
        region = np.zeros(img.shape, bool)
        for p in pos:
            yi, xi = int(round(p.y)), int(round(p.x))
            seed = float(np.median(smooth[max(0, yi - 1): yi + 2, max(0, xi - 1): xi + 2]))
            lab, _ = ndi.label(np.abs(smooth - seed) <= tol)
            if lab[yi, xi] > 0:
                region |= lab == lab[yi, xi]
        if not region.any() or region.mean() > 0.6:  # the background leaked in: no information
            continue
        ys, xs = np.nonzero(region)
        m = 2.0
        out.append(_clip_box(np.array([xs.min() - m, ys.min() - m, xs.max() + m, ys.max() + m], np.float32), img.shape))
    return out


@dataclass
class _Scored:
    box: np.ndarray
    mask: np.ndarray
    logits: np.ndarray  # (1, 256, 256) low-res
    score: float
    iou: float
    stability: float
    consistency: float
    points_ok: float
    centrality: float = 0.0
    neighbours: float = 0.0


def _centrality(mask: np.ndarray, points: Sequence[Point]) -> float:
    """Mean over positive points of (interior distance at the point) / (largest interior distance):
    1 when the point is the mask's deepest point, 0 on its edge or outside."""
    pos = [p for p in points if p.positive]
    rows = np.nonzero(mask.any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    if not pos or len(rows) == 0:
        return 0.0
    y0, x0 = rows[0], cols[0]
    crop = mask[y0: rows[-1] + 1, x0: cols[-1] + 1]
    dt = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    top = float(dt.max())
    vals = []
    for p in pos:
        yi, xi = int(round(p.y)) - y0, int(round(p.x)) - x0
        inside = 0 <= yi < crop.shape[0] and 0 <= xi < crop.shape[1]
        vals.append(float(dt[yi, xi]) / top if inside and top > 0 else 0.0)
    return float(np.mean(vals))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    u = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / u if u else 0.0


def _neighbour_agreement(scored: list, min_box_iou: float = 0.5) -> None:
    """Fill `.neighbours`: mean mask IoU with candidates whose boxes overlap this one's by at least
    `min_box_iou` (a real object's mask stays put when the box changes a little; a box-filling
    artefact follows the box)."""
    for i, s in enumerate(scored):
        vals = [_mask_iou(s.mask, t.mask) for j, t in enumerate(scored) if j != i and _box_iou(s.box, t.box) >= min_box_iou]
        s.neighbours = float(np.mean(vals)) if vals else 0.0


def _mask_box(mask: np.ndarray) -> np.ndarray | None:
    rows = np.nonzero(mask.any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return float(inter / union) if union > 0 else 0.0


def _points_agreement(mask: np.ndarray, points: Sequence[Point]) -> float:
    """Fraction of clicks the mask agrees with (positive inside, negative outside)."""
    h, w = mask.shape
    ok = 0
    for p in points:
        inside = bool(mask[min(h - 1, int(round(p.y))), min(w - 1, int(round(p.x)))])
        ok += inside == p.positive
    return ok / len(points)


def score_boxes(segmenter, embedding, boxes: Sequence[np.ndarray], points: Sequence[Point],
                cfg: ClickConfig, extra: Sequence[Point] = (), mask_input: np.ndarray | None = None) -> list[_Scored]:
    """Decode every box in ONE batch and score each mask (higher is better).

    `extra` points are given to the decoder with each box (corrections); `points` are what the mask
    must agree with.
    """
    import torch

    prompts = [PromptSet(points=tuple(extra), box=Box(*map(float, b)), mask_input=mask_input) for b in boxes]
    low_res, iou = segmenter.decode_logits(embedding, prompts, multimask=False)
    transform = segmenter.transform_for(embedding.original_size)
    with torch.inference_mode():
        full = transform.logits_to_image(low_res)[:, 0].numpy()  # (B, H, W)
    out = []
    for i, b in enumerate(boxes):
        f = full[i]
        mask = f > 0
        hi, lo = int((f > 1.0).sum()), int((f > -1.0).sum())
        stability = hi / lo if lo else 0.0
        mb = _mask_box(mask)
        consistency = _box_iou(mb, b) if mb is not None else 0.0
        agree = _points_agreement(mask, points) if mb is not None else 0.0
        q = float(iou[i, 0])
        cen = _centrality(mask, points) if cfg.w_centrality else 0.0
        out.append(_Scored(np.asarray(b, np.float32), mask, low_res[i, 0:1].numpy().copy(), 0.0, q, stability,
                           consistency, agree, cen))
    if cfg.w_neighbours:
        _neighbour_agreement(out)
    for s in out:
        s.score = (cfg.w_iou * s.iou + cfg.w_stability * s.stability + cfg.w_consistency * s.consistency
                   + cfg.w_points * s.points_ok + cfg.w_centrality * s.centrality + cfg.w_neighbours * s.neighbours)
    return out


def _with_margin(b: np.ndarray, frac: float, shape: tuple[int, int]) -> np.ndarray:
    mx = max(1.0, frac * (b[2] - b[0] + 1))
    my = max(1.0, frac * (b[3] - b[1] + 1))
    return _clip_box(np.array([b[0] - mx, b[1] - my, b[2] + mx, b[3] + my], np.float32), shape)


def _dedupe(boxes: list[np.ndarray]) -> list[np.ndarray]:
    seen, out = set(), []
    for b in boxes:
        k = tuple(np.round(b).astype(int).tolist())
        if k not in seen and b[2] - b[0] >= 1 and b[3] - b[1] >= 1:
            seen.add(k)
            out.append(b)
    return out


def best_box_for_points(segmenter, embedding, image01: np.ndarray, points: Sequence[Point],
                        cfg: ClickConfig = ClickConfig()) -> _Scored:
    """The best-scoring proposal (after one self-consistency refinement round)."""
    shape = tuple(embedding.original_size)
    check_points(points, shape)
    boxes = _dedupe(scale_proposals(points, shape, cfg) + grow_proposals(image01, points, cfg))
    scored = sorted(score_boxes(segmenter, embedding, boxes, points, cfg), key=lambda s: -s.score)
    parents, refined_boxes = [], []
    for s in scored[: cfg.refine_top]:
        mb = _mask_box(s.mask)
        if mb is not None:
            parents.append(s)
            refined_boxes.append(_with_margin(mb, cfg.refine_margin, shape))
    if refined_boxes:
        # one batch; a refined box's "neighbour" is the proposal it came from (a fixed point of
        # box -> mask -> box is what a box-trained model segments consistently)
        refined = score_boxes(segmenter, embedding, refined_boxes, points, replace(cfg, w_neighbours=0.0))
        for r, parent in zip(refined, parents):
            r.neighbours = _mask_iou(r.mask, parent.mask)
            r.score += cfg.w_neighbours * r.neighbours
        scored = sorted(scored[: cfg.refine_top] + refined, key=lambda s: -s.score)
    return scored[0]


def _source_of(points: Sequence[Point]) -> PromptSource:
    pos = [p for p in points if p.positive]
    return pos[0].source if pos else PromptSource.CLICK


def propose_from_points(segmenter, embedding, image01: np.ndarray, points: Sequence[Point],
                        cfg: ClickConfig = ClickConfig()) -> PromptSet:
    """Positive (and negative) points -> a PromptSet with the chosen box, the points and notes.

    Works for 1..N positive points; negative points push proposals that cover them down the ranking.
    The box carries the points' source (click, gaze, ...) and, as confidence, how well it scored.
    """
    points = tuple(points)
    best = best_box_for_points(segmenter, embedding, image01, points, cfg)
    b = best.box
    n_pos = sum(p.positive for p in points)
    conf = float(np.clip(best.iou * best.points_ok, 0.0, 1.0))
    note = (f"{n_pos} positive / {len(points) - n_pos} negative {_source_of(points).value} point(s) -> box "
            f"({b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}) chosen among proposals "
            f"(decoder IoU {best.iou:.2f}, stability {best.stability:.2f}, box fit {best.consistency:.2f}, "
            f"click centrality {best.centrality:.2f}, points agreeing {best.points_ok:.0%})")
    # The chosen proposal's own logits go along as the mask prompt: LiteMedSAM, trained on boxes only,
    # degrades when a point is added to a box (disc test: Dice 0.96 -> 0.80); with its box-only
    # logits as mask_input the same box + point decodes back to 0.95. The point stays in the prompt
    # (it is evidence for fusion, corrections and backends that use points).
    ps = PromptSet(points=points, box=Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), _source_of(points), conf),
                   mask_input=best.logits)
    return ps.with_note(note)


def correction_boxes(box: np.ndarray, click: Point, shape: tuple[int, int]) -> list[np.ndarray]:
    """Box variants that respond to one corrective click.

    A positive click outside the box widens it to take the click in (with several margins). A
    negative click inside the box may mean the box reaches too far on that side: the box is cut just
    past the click on the nearest side. The unchanged box is always a candidate (the click may be
    enough as a point prompt plus the previous mask).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    out = [np.array([x0, y0, x1, y1], np.float32)]
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    if click.positive:
        for m in (0.03, 0.08, 0.15):
            mx, my = m * bw + 2, m * bh + 2
            out.append(np.array([min(x0, click.x - mx), min(y0, click.y - my), max(x1, click.x + mx), max(y1, click.y + my)], np.float32))
    elif Box(x0, y0, x1, y1).contains(click.x, click.y):
        gaps = {"left": click.x - x0, "right": x1 - click.x, "top": click.y - y0, "bottom": y1 - click.y}
        for side in sorted(gaps, key=gaps.get)[:2]:
            nb = [x0, y0, x1, y1]
            if side == "left":
                nb[0] = click.x + 1
            elif side == "right":
                nb[2] = click.x - 1
            elif side == "top":
                nb[1] = click.y + 1
            else:
                nb[3] = click.y - 1
            out.append(np.array(nb, np.float32))
    return _dedupe([_clip_box(b, shape) for b in out])


def correct_with_click(segmenter, embedding, prompt: PromptSet, previous_logits: np.ndarray | None, click: Point,
                       cfg: ClickConfig = ClickConfig()) -> PromptSet:
    """One more click on an existing result -> the next PromptSet (box updated, previous mask as prompt).

    `previous_logits` is the last Segmentation's `low_res_logits`. Box variants (see
    `correction_boxes`) are decoded in one batch, each with and without the previous mask, and the
    one that agrees best with ALL clicks so far wins.
    """
    shape = tuple(embedding.original_size)
    points = prompt.points + (click,)
    check_points(points, shape)
    if prompt.box is None:
        return _repropose(segmenter, embedding, points, cfg)
    boxes = correction_boxes(prompt.box.as_array(), click, shape)
    # corrective clicks sit on the error, not in the middle of the object: no centrality prior here
    ccfg = replace(cfg, w_centrality=0.0, w_neighbours=0.0)
    variants = score_boxes(segmenter, embedding, boxes, points, ccfg, extra=points, mask_input=previous_logits)
    if previous_logits is not None:
        plain = score_boxes(segmenter, embedding, boxes, points, ccfg, extra=points)
        for v in plain:
            v.score -= 1e-3  # ties go to the variant that keeps the previous mask
        variants += plain
        use_prev = {id(v): True for v in variants[: len(boxes)]}
    else:
        use_prev = {}
    best = max(variants, key=lambda s: s.score)
    b = best.box
    kind = "positive" if click.positive else "negative"
    ps = PromptSet(points=points, box=Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), prompt.box.source, prompt.box.confidence),
                   mask_input=previous_logits if use_prev.get(id(best)) else None, label=prompt.label, notes=prompt.notes)
    return ps.with_note(f"{kind} correction at ({click.x:.0f}, {click.y:.0f}) -> box ({b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}), "
                        f"{'previous mask kept as prompt' if use_prev.get(id(best)) else 'previous mask dropped'}, "
                        f"clicks agreeing {best.points_ok:.0%}")


def _repropose(segmenter, embedding, points: Sequence[Point], cfg: ClickConfig) -> PromptSet:
    """A correction on a prompt without a box: propose afresh from all points (no image growing)."""
    best = best_box_for_points(segmenter, embedding, np.zeros(embedding.original_size, np.float32), points,
                               replace(cfg, grow_tolerances=()))
    b = best.box
    return PromptSet(points=tuple(points), box=Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), _source_of(points),
                                                   float(best.iou))).with_note("re-proposed a box from all clicks")
