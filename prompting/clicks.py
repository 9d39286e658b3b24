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
it needs `decode_logits(embedding, prompts, multimask, screening)` and `transform_for(shape)`
(SamSegmenter).
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
    refine_top: int = 64  # proposals re-decoded with their own mask's box (all of them by default: one batch)
    refine_margin: float = 0.04  # margin added to a mask's box when refining, fraction of its size
    # Score weights, chosen on two disjoint 26-case dev subsets (bench/prompts.py --offset 0 and 0.5;
    # docs/prompting.md). A user clicks near the middle of what they mean: the right mask has the
    # click at its deepest interior point, whatever its size (depth fit: a Gaussian in the depth gap,
    # sigma = gap_px + gap_frac x the mask's largest interior distance); a larger structure that merely
    # contains the click (the hemisphere around a gyrus) has it far from its own deepest point. Among
    # masks that fit, a real object is a fixed point of box -> mask -> box (neighbours: IoU with the
    # mask of the box it was refined from) and fills the box that produced it (consistency); a small
    # size term breaks ties towards the larger of two nested fitting structures (a sub-part is also
    # centred on a click by chance). The older centrality (depth at click / largest depth) scored
    # 0.56 on the first subset, this score 0.63.
    w_iou: float = 0.5
    w_stability: float = 0.0
    w_consistency: float = 1.0
    w_centrality: float = 0.0
    w_neighbours: float = 2.0  # mask agrees with those of similar boxes (stable under box changes)
    w_points: float = 3.0
    w_gap: float = 2.0
    gap_px: float = 2.5  # the click's expected distance from the deepest point (hand noise)
    gap_frac: float = 0.2
    w_size: float = 0.2  # per unit of log(mask pixels)
    keep_overlap: float = 0.5  # a correction's mask keeps/stays within this much of the previous one (_nested_overlap)
    # ...and keeps a comparable size, both ways: measured, exempting growth brought brain click3 from
    # 0.48 to 0.75 but nuclei from 0.78 to 0.53 (growth into neighbours); the symmetric check keeps
    # click3 >= click1 in every set of both dev subsets
    keep_size_ratio: float = 0.4
    # ...except for a positive click far outside the previous mask (farther than this many of its
    # equivalent radii): the user points at a part the result does not reach at all, e.g. a parcel was
    # found where the whole organ was meant; growing several-fold is then what was asked.
    far_click_radii: float | None = 1.0
    # ...and for a negative click this deep inside the previous mask (interior distance over its
    # largest): the user rejects the structure found (a hemisphere where a parcel was meant), so
    # shrinking several-fold is what was asked, and the fresh proposal from all clicks is preferred
    # to a trimmed box when it agrees with them better than the result did.
    deep_negative: float | None = 0.5
    # A correction click this close to the shown mask's edge (slice px) moves that edge locally instead
    # of changing the box (`apply_click_edits`). A hand lands ~2 px from where it aims (DESIGN.md's
    # user), so a click on a 1-2 px sliver of error is as likely to fall on the wrong side of the edge;
    # re-deciding the box for it cut nuclei by 0.06-0.29 Dice (bench/prompts.py, docs/prompting.md).
    edge_px: float = 5.0  # ~2.5 x the 2 px SD of a hand's aim (DESIGN.md's simulated user)
    # The learned proposal ranker (prompting/proposal_ranker.py, bundled coefficients) replaces the
    # hand score above when the image is available; None = hand score only.
    ranker: str | None = "click"
    # Clicks the segmenter's click decoder answers itself (one decode, `read_answer`) when its answer
    # covers at least this many pixels of the model frame (LiteMedSAM: 256 x 256); smaller structures
    # span a few embedding cells, which its 256-px output draws coarsely, and go through the box
    # proposals and their zoomed re-reading instead (measured: nuclei 0.82 / 0.75 read, 0.88 / 0.84
    # proposed; AAL parcels and the brain the other way, docs/prompting.md). None: always propose.
    read_min_area: float | None = 200.0
    # ...and when LiteMedSAM's own decoder, given the box around that answer, rates its mask at least
    # this high, the structure has a crisp outline, which the box decoder draws better than the click
    # decoder (16 synthetic ellipses and a disc: 0.81 read, 0.99 by box proposals): that box is then
    # the prompt (decoded, zoomed and corrected as any box). None: the reading always answers.
    read_box_iou: float | None = 0.9


# Backends trained with box prompts only: their decoder does worse, not better, when clicks or a
# previous mask are added to a box (LiteMedSAM: DESIGN.md; measured in bench/prompts.py: tight box
# + click on a disc 0.96 -> 0.80 Dice, and every click mode lost 0.01-0.05 Dice with the points and
# logits fed in). For them the box carries the whole prompt; points stay in the PromptSet as evidence.
BOX_TRAINED_BACKENDS = frozenset({"litemedsam"})


def is_box_trained(segmenter) -> bool:
    return getattr(segmenter, "name", "") in BOX_TRAINED_BACKENDS


def decoder_prompt(segmenter, prompt: PromptSet) -> PromptSet:
    """What the decoder should be given for `prompt`: for a box-trained backend, a prompt that has a
    box is decoded from the box alone (points and previous logits dropped); otherwise unchanged."""
    if prompt.box is not None and is_box_trained(segmenter) and (prompt.points or prompt.mask_input is not None):
        return replace(prompt, points=(), mask_input=None)
    return prompt


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
    if image01 is None or not cfg.grow_tolerances:
        return []
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
    depth_fit: float = 0.0  # how well the clicks sit at the mask's deepest point, in [0, 1]
    area: float = 0.0  # mask pixels
    gap: float = float("inf")  # mean depth gap of the positive clicks, px (see _depth_stats)
    top: float = 0.0  # the mask's largest interior distance, px
    refined: bool = False  # decoded from a previous proposal's own mask box (fixed-point step)
    terms: dict | None = None  # stroke measurements (prompting.scribbles.stroke_terms) for stroke proposals
    read: tuple[float, ...] | None = None  # IoU with a click decoder's masks (READ_FEATURES order), if one read the clicks


def _centrality(mask: np.ndarray, points: Sequence[Point]) -> float:
    """Mean over positive points of (interior distance at the point) / (largest interior distance):
    1 when the point is the mask's deepest point, 0 on its edge or outside."""
    return _depth_stats(mask, points)[0]


def _depth_stats(mask: np.ndarray, points: Sequence[Point]) -> tuple[float, float, float]:
    """(centrality, mean depth gap in px, largest interior distance in px) for the positive points.

    The depth gap is (largest interior distance) - (interior distance at the click): ~0 when the
    click is at the mask's deepest point, whatever the mask's size; a larger structure that merely
    contains the click (the hemisphere around a gyrus) has the click far from its own deepest point."""
    pos = [p for p in points if p.positive]
    rows = np.nonzero(mask.any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    if not pos or len(rows) == 0:
        return 0.0, float("inf"), 0.0
    y0, x0 = rows[0], cols[0]
    crop = mask[y0: rows[-1] + 1, x0: cols[-1] + 1]
    dt = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    top = float(dt.max())
    vals, gaps = [], []
    for p in pos:
        yi, xi = int(round(p.y)) - y0, int(round(p.x)) - x0
        inside = 0 <= yi < crop.shape[0] and 0 <= xi < crop.shape[1]
        d = float(dt[yi, xi]) if inside else 0.0
        vals.append(d / top if top > 0 else 0.0)
        gaps.append(top - d)
    return float(np.mean(vals)), float(np.mean(gaps)), top


def hull_gap(mask: np.ndarray, points: Sequence[Point]) -> float:
    """Mean over positive points of the depth gap (largest interior distance - interior distance at
    the point) in the mask's convex hull, relative to that largest distance (+ 1 px): 0 at the hull's
    deepest point, ~1 on its edge or outside, 1 for an empty mask.

    Why: a whole organ is seldom a convex blob on a slice (the brain's midline fissure and ventricles
    cut deep notches into it), so a click at its middle can sit near the edge of the organ's own mask
    while lying at the middle of its outline; a parcel containing the click has no such excuse."""
    from skimage.morphology import convex_hull_image

    pos = [p for p in points if p.positive]
    box = _mask_box(mask)
    if not pos or box is None:
        return 1.0
    x0, y0, x1, y1 = (int(v) for v in box)
    hull = convex_hull_image(np.pad(mask[y0: y1 + 1, x0: x1 + 1], 1))
    dt = ndi.distance_transform_edt(hull)
    top = float(dt.max())
    gaps = []
    for p in pos:
        yi, xi = int(round(p.y)) - y0 + 1, int(round(p.x)) - x0 + 1
        d = float(dt[yi, xi]) if 0 <= yi < dt.shape[0] and 0 <= xi < dt.shape[1] else 0.0
        gaps.append((top - d) / (top + 1.0))
    return float(np.clip(np.mean(gaps), 0.0, 1.0))


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
    # screening: these masks only rank the boxes; the chosen box is decoded again by the caller
    low_res, iou = segmenter.decode_logits(embedding, prompts, multimask=False, screening=True)
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
        cen, gap, top = _depth_stats(mask, points) if (cfg.w_centrality or cfg.w_gap) else (0.0, float("inf"), 0.0)
        fit = float(np.exp(-0.5 * (gap / (cfg.gap_px + cfg.gap_frac * top)) ** 2)) if np.isfinite(gap) else 0.0
        out.append(_Scored(np.asarray(b, np.float32), mask, low_res[i, 0:1].numpy().copy(), 0.0, q, stability,
                           consistency, agree, cen, depth_fit=fit, area=float(mask.sum()), gap=gap, top=top))
    if cfg.w_neighbours:
        _neighbour_agreement(out)
    for s in out:
        s.score = (cfg.w_iou * s.iou + cfg.w_stability * s.stability + cfg.w_consistency * s.consistency
                   + cfg.w_points * s.points_ok + cfg.w_centrality * s.centrality + cfg.w_neighbours * s.neighbours
                   + cfg.w_gap * s.depth_fit + cfg.w_size * math.log(s.area + 1.0))
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


def click_candidates(segmenter, embedding, image01: np.ndarray | None, points: Sequence[Point],
                     cfg: ClickConfig = ClickConfig(), read: bool = True) -> list[_Scored]:
    """Every proposal for the clicks, hand-scored: the first batch (scale grid + region growing) and
    its fixed-point refinements (each mask's own box + margin, `.refined`), two batched decodes;
    with `read`, each one's agreement with the segmenter's click decoder (`.read`) when it has one."""
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
    if not refined_boxes:
        return _with_reading(segmenter, embedding, points, scored) if read else scored
    # one batch; a refined box's "neighbour" is the proposal it came from (a fixed point of
    # box -> mask -> box is what a box-trained model segments consistently)
    refined = score_boxes(segmenter, embedding, refined_boxes, points, replace(cfg, w_neighbours=0.0))
    for r, parent in zip(refined, parents):
        r.neighbours = _mask_iou(r.mask, parent.mask)
        r.score += cfg.w_neighbours * r.neighbours
        r.refined = True
    every = scored[: cfg.refine_top] + refined
    return _with_reading(segmenter, embedding, points, every) if read else every


def _with_reading(segmenter, embedding, points: Sequence[Point], cands: list[_Scored]) -> list[_Scored]:
    """Each candidate's agreement with the segmenter's click decoder (`read_clicks`), when it has one:
    IoU with each of its three masks and with the one it rates best."""
    read = getattr(segmenter, "read_clicks", None)
    reading = read(embedding, points) if read is not None else None
    if reading is None:
        return cands
    outs = list(reading.masks) + [reading.best]
    areas = [float(m.sum()) for m in outs]
    for s in cands:
        inter = [float((s.mask & m).sum()) for m in outs]
        s.read = tuple(i / max(s.area + b - i, 1.0) for i, b in zip(inter, areas))
    return cands


def click_features(cands: Sequence[_Scored], image01: np.ndarray, points: Sequence[Point]) -> dict[str, np.ndarray]:
    """The proposal ranker's feature table (prompting.proposal_ranker.CLICK_FEATURES) for click proposals."""
    from .proposal_ranker import READ_FEATURES, ImageContext, image_features, intensity_deviation, set_features

    h, w = np.asarray(image01).shape[:2]
    ctx = ImageContext.of(image01)
    pos = np.array([[p.x, p.y] for p in points if p.positive], np.float64).reshape(-1, 2)
    read = bool(cands) and all(s.read is not None for s in cands)  # a click decoder's opinion, on every proposal
    rows = []
    for s in cands:
        f = image_features(s.mask, s.box, ctx)
        gap_rel = s.gap / (s.top + 1.0) if np.isfinite(s.gap) else 1.0
        f.update(points_ok=s.points_ok, depth_fit=s.depth_fit, centrality=s.centrality, neighbours=s.neighbours,
                 consistency=s.consistency, iou=s.iou, stability=s.stability,
                 log_area=math.log((s.area + 1.0) / (h * w)), refined=float(s.refined),
                 click_dev=intensity_deviation(s.mask, ctx, pos), gap_rel=float(min(gap_rel, 1.0)),
                 hull_gap_rel=hull_gap(s.mask, points))
        if read:
            f.update(zip(READ_FEATURES, s.read))
        rows.append(f)
    table = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]} if rows else {}
    table.update(set_features([s.mask for s in cands]))
    return table


def click_scores(cands: Sequence[_Scored], image01: np.ndarray, points: Sequence[Point], kind: str = "click") -> np.ndarray:
    """The learned ranker's scores (the one that reads the click decoder's opinion when every candidate has it)."""
    from .proposal_ranker import ranker_for

    table = click_features(cands, image01, points)
    return ranker_for(kind, table).score(table)


def rank_candidates(cands: Sequence[_Scored], image01: np.ndarray | None, points: Sequence[Point],
                    cfg: ClickConfig) -> None:
    """Replace the hand scores by the learned ranker's (`cfg.ranker`), when there is an image to look at."""
    if not cfg.ranker or image01 is None or not cands:
        return
    scores = click_scores(cands, image01, points, cfg.ranker)
    for s, v in zip(cands, scores):
        s.score = float(v)


def best_box_for_points(segmenter, embedding, image01: np.ndarray | None, points: Sequence[Point],
                        cfg: ClickConfig = ClickConfig()) -> _Scored:
    """The best proposal (after one self-consistency refinement round), by the learned ranker when
    `cfg.ranker` is set and the image is given, else by the hand score."""
    cands = click_candidates(segmenter, embedding, image01, points, cfg, read=bool(cfg.ranker) and image01 is not None)
    rank_candidates(cands, image01, points, cfg)
    return max(cands, key=lambda s: s.score)


# A stroke is drawn ON the structure: a reading that leaves out more than this fraction of its pixels
# (a 3-px stroke grazing the edge loses a few) is not the structure the user marked.
READ_COVER_SLACK = 0.02


def _source_of(points: Sequence[Point]) -> PromptSource:
    pos = [p for p in points if p.positive]
    return pos[0].source if pos else PromptSource.CLICK


def answered_reading(segmenter, embedding, points: Sequence[Point], cfg: ClickConfig = ClickConfig(),
                     must_cover: np.ndarray | None = None):
    """(the click decoder's reading of these points, the index of its best mask) when `read_answer`
    answers with it; None when it does not (see there). Costs one reading (kept by the click decoder,
    so a `read_answer` after it reads nothing again) and no box decode."""
    points = tuple(points)
    if cfg.read_min_area is None or _source_of(points) not in (PromptSource.CLICK, PromptSource.SCRIBBLE):
        return None
    read = getattr(segmenter, "read_clicks", None)
    reading = read(embedding, points) if read is not None else None
    if reading is None:
        return None
    k = int(np.argmax(reading.iou))
    h, w = embedding.original_size
    ih, iw = segmenter.transform_for((h, w)).input_size
    area = float(reading.masks[k].sum()) * ih * iw / float(h * w)
    if area < cfg.read_min_area:
        return None
    if must_cover is not None and must_cover.any() and float(reading.masks[k][must_cover].mean()) < 1.0 - READ_COVER_SLACK:
        return None
    return reading, k


def read_answer(segmenter, embedding, points: Sequence[Point], cfg: ClickConfig = ClickConfig(),
                must_cover: np.ndarray | None = None) -> PromptSet | None:
    """Clicks (or points along strokes) that the segmenter's click decoder answers itself: a PromptSet
    of the points alone (the segmenter decodes such a prompt with its click decoder,
    `SamSegmenter.reads_clicks`) or, where LiteMedSAM rates its mask for the box around the answer
    >= `cfg.read_box_iou`, the points with that box. None when there is no click decoder, the points
    are gaze (gaze has its own reader), the answer is smaller than `cfg.read_min_area` model-frame
    pixels, or it leaves out more than `READ_COVER_SLACK` of `must_cover` (an (H, W) bool map of
    pixels the user marked as the structure: the strokes the points were sampled from)."""
    points = tuple(points)
    answered = answered_reading(segmenter, embedding, points, cfg, must_cover)
    if answered is None:
        return None
    reading, k = answered
    source = _source_of(points)
    h, w = embedding.original_size
    n_pos = sum(p.positive for p in points)
    what = "click(s)" if source == PromptSource.CLICK else "point(s) along the strokes"
    said = (f"{n_pos} positive / {len(points) - n_pos} negative {what} read by the click decoder (the mask of "
            f"its three it rates best: IoU {float(reading.iou[k]):.2f}, {int(reading.masks[k].sum())} px)")
    if cfg.read_box_iou is not None:
        b = _with_margin(_mask_box(reading.masks[k]), cfg.refine_margin, (h, w))
        check = segmenter.decode(embedding, PromptSet.from_box(*(float(v) for v in b)))
        if check.predicted_iou >= cfg.read_box_iou:
            box = Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), source, float(check.predicted_iou))
            return PromptSet(points=points, box=box, mask_input=check.low_res_logits).with_note(
                f"{said}; LiteMedSAM draws the box around it, ({b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}), "
                f"with IoU {check.predicted_iou:.2f}: that box is the prompt")
    return PromptSet(points=points).with_note(said)


def propose_from_points(segmenter, embedding, image01: np.ndarray, points: Sequence[Point],
                        cfg: ClickConfig = ClickConfig()) -> PromptSet:
    """Positive (and negative) points -> a PromptSet with the chosen box, the points and notes.

    Works for 1..N positive points; negative points push proposals that cover them down the ranking.
    The box carries the points' source (click, gaze, ...) and, as confidence, how well it scored.
    Clicks that the click decoder answers (`read_answer`) come back without a box (the segmenter reads
    them with it) or, for a crisp outline, with the box around its answer.
    """
    points = tuple(points)
    answered = read_answer(segmenter, embedding, points, cfg)
    if answered is not None:
        return answered
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
    """Box variants that respond to one corrective click (the unchanged box first).

    A positive click outside the box widens it to take the click in (several margins). A positive
    click inside the box (the mask missed a part the box already holds) grows the box a little
    towards the click and all round (a box-trained model under-segments a tight box's corners). A
    negative click inside the box may mean the box reaches too far on that side: the box is cut just
    past the click (and a few pixels further) on the two nearest sides, and shrunk a little all round.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    out = [np.array([x0, y0, x1, y1], np.float32)]
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    inside = Box(x0, y0, x1, y1).contains(click.x, click.y)
    if click.positive:
        for m in (0.03, 0.08, 0.15):
            mx, my = m * bw + 2, m * bh + 2
            out.append(np.array([min(x0, click.x - mx), min(y0, click.y - my), max(x1, click.x + mx), max(y1, click.y + my)], np.float32))
        if inside:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            for m in (0.05, 0.1):
                mx, my = m * bw + 1, m * bh + 1
                out.append(np.array([x0 - mx * (click.x < cx), y0 - my * (click.y < cy), x1 + mx * (click.x >= cx),
                                     y1 + my * (click.y >= cy)], np.float32))
                out.append(np.array([x0 - mx, y0 - my, x1 + mx, y1 + my], np.float32))
    elif inside:
        gaps = {"left": click.x - x0, "right": x1 - click.x, "top": click.y - y0, "bottom": y1 - click.y}
        for side in sorted(gaps, key=gaps.get)[:2]:
            for extra in (1.0, 3.0 + 0.05 * (bw if side in ("left", "right") else bh)):
                nb = [x0, y0, x1, y1]
                if side == "left":
                    nb[0] = click.x + extra
                elif side == "right":
                    nb[2] = click.x - extra
                elif side == "top":
                    nb[1] = click.y + extra
                else:
                    nb[3] = click.y - extra
                if nb[2] - nb[0] >= 1 and nb[3] - nb[1] >= 1:
                    out.append(np.array(nb, np.float32))
        for m in (0.05, 0.1):
            mx, my = m * bw, m * bh
            out.append(np.array([x0 + mx, y0 + my, x1 - mx, y1 - my], np.float32))
    return _dedupe([_clip_box(b, shape) for b in out])


def correct_with_click(segmenter, embedding, prompt: PromptSet, previous_logits: np.ndarray | None, click: Point,
                       cfg: ClickConfig = ClickConfig(), previous_mask: np.ndarray | None = None) -> PromptSet:
    """One more click on an existing result -> the next PromptSet (box moved, all clicks kept).

    `previous_logits` is the last Segmentation's `low_res_logits` (whole-slice frame), `previous_mask`
    the mask the user saw (it may come from a zoomed decode; it wins when given). Box variants (see
    `correction_boxes`) plus a fresh proposal from all clicks are decoded in one batch; a variant is
    accepted only if its mask agrees with MORE of the clicks so far (positives inside, negatives
    outside) than the unchanged box's mask and the previous mask do, so a correction never makes the
    result disagree with what the user already said. Among accepted variants the one scoring best on
    click agreement + decoder IoU + overlap with the previous mask wins (a correction fixes the error
    and leaves the rest). For a box-trained backend (LiteMedSAM) the clicks and previous logits are
    not given to the decoder: measured, they make its masks worse (docs/prompting.md); they act
    through the box. A click within `cfg.edge_px` of the shown mask's edge keeps the box: the edge
    moves there (`apply_click_edits`, applied to every decode of the returned prompt), and variants
    are judged by their masks with those edits, as they would be shown.
    """
    shape = tuple(embedding.original_size)
    points = prompt.points + (click,)
    check_points(points, shape)
    if prompt.box is None:
        return read_answer(segmenter, embedding, points, cfg) or _repropose(segmenter, embedding, points, cfg)
    if previous_mask is None and previous_logits is not None:
        previous_mask = _logits_to_mask(segmenter, embedding, previous_logits)
    if previous_mask is not None and np.asarray(previous_mask).shape == shape:
        depth = edge_click_depth(np.asarray(previous_mask, bool), click)
        if 0.0 < depth <= cfg.edge_px:
            kind = "positive" if click.positive else "negative"
            ps = replace(prompt, points=points, mask_input=None if is_box_trained(segmenter) else previous_logits)
            return ps.with_note(f"{kind} correction at ({click.x:.0f}, {click.y:.0f}), {depth:.1f} px from the mask's edge: "
                                f"the edge moves there (box kept)")
    box_only = is_box_trained(segmenter)
    boxes = correction_boxes(prompt.box.as_array(), click, shape)
    fresh = None
    if sum(p.positive for p in points) >= 1:
        fresh = best_box_for_points(segmenter, embedding, None, points, replace(cfg, grow_tolerances=())).box
        boxes = _dedupe(boxes + [fresh])
    ccfg = replace(cfg, w_centrality=0.0, w_neighbours=0.0, w_gap=0.0, w_size=0.0)
    variants = score_boxes(segmenter, embedding, boxes, points, ccfg, extra=() if box_only else points,
                           mask_input=None if box_only else previous_logits)
    for v in variants:  # judged as they would be shown: with the clicks' edits (apply_click_edits)
        v.mask = apply_click_edits(v.mask, points, cfg)
        v.points_ok = _points_agreement(v.mask, points)
    unchanged = variants[0]
    before = unchanged.points_ok
    if previous_mask is not None and np.asarray(previous_mask).shape == shape:
        before = max(before, _points_agreement(np.asarray(previous_mask, bool), points))
    prev = np.asarray(previous_mask, bool) if previous_mask is not None and np.asarray(previous_mask).shape == shape else unchanged.mask
    # ...and it must keep most of the previous mask: a box that agrees with the clicks by jumping to
    # another structure is not a correction (measured: such jumps took cases from 0.85 to 0.1 Dice).
    far = cfg.far_click_radii is not None and click.positive and _far_outside(prev, click, cfg.far_click_radii)
    # (its depth in the mask relative to the largest: _centrality, taking the click as a positive point)
    deep = (cfg.deep_negative is not None and not click.positive
            and _centrality(prev, [replace(click, positive=True)]) >= cfg.deep_negative)
    better = [v for v in variants[1:] if v.points_ok > before + 1e-9
              and _nested_overlap(v.mask, prev) >= cfg.keep_overlap
              and (far or deep or _size_ratio(v.mask, prev) >= cfg.keep_size_ratio)]
    kind = "positive" if click.positive else "negative"
    if not better:
        ps = replace(prompt, points=points, mask_input=None if box_only else previous_logits)
        return ps.with_note(f"{kind} correction at ({click.x:.0f}, {click.y:.0f}): no box change agreed with the clicks "
                            f"better than the current result; box kept, click recorded")
    # a negative click deep inside rejects the result's structure: the clicks are read afresh (the
    # fresh proposal) rather than the rejected mask trimmed
    renewed = [v for v in better if deep and fresh is not None and np.array_equal(np.round(v.box), np.round(fresh))]
    best = renewed[0] if renewed else max(better, key=lambda v: cfg.w_points * v.points_ok + cfg.w_iou * v.iou
                                          + 2.0 * _mask_iou(v.mask, prev))
    b = best.box
    ps = PromptSet(points=points, box=Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), prompt.box.source, prompt.box.confidence),
                   mask_input=None if box_only else previous_logits, label=prompt.label, notes=prompt.notes)
    how = "; deep inside the result: all clicks read afresh" if renewed else ""
    return ps.with_note(f"{kind} correction at ({click.x:.0f}, {click.y:.0f}) -> box ({b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}), "
                        f"clicks agreeing {best.points_ok:.0%} (before {before:.0%}){how}")


def edge_click_depth(mask: np.ndarray, click: Point, limit: int = 16) -> float:
    """How far `click` lies on the wrong side of `mask`'s edge, in px: a negative click's depth inside
    the mask, a positive click's distance outside it (to the nearest pixel centre across the edge); 0
    when the mask already agrees with the click (or is empty). Measured in a window of +-`limit` px:
    a depth beyond it reads as about `limit`."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    x, y = int(np.clip(round(click.x), 0, w - 1)), int(np.clip(round(click.y), 0, h - 1))
    if not mask.any() or bool(mask[y, x]) == click.positive:
        return 0.0
    side = ~mask if click.positive else mask  # the click's side of the edge
    y0, y1, x0, x1 = max(0, y - limit), min(h, y + limit + 1), max(0, x - limit), min(w, x + limit + 1)
    win = side[y0:y1, x0:x1]
    if win.all():  # nothing across the edge within the window
        return float(limit + 1)
    return float(ndi.distance_transform_edt(win)[y - y0, x - x0])


def apply_click_edits(mask: np.ndarray, points: Sequence[Point], cfg: ClickConfig = ClickConfig()) -> np.ndarray:
    """The mask with every click near its edge honoured locally, and holes clicked into filled. A
    positive click in a hole of the mask (background the mask encloses) fills that hole. A negative click inside the mask
    within `cfg.edge_px` of its edge moves the edge in past the click: the mask's pixels no deeper
    than the click, within depth + 1 px of it, go (a shave along the edge, not a hole). A positive
    click that close outside moves the edge out to it the same way. The decoder answers boxes
    (LiteMedSAM), so an edge correction cannot be said to it; the result must still agree with the
    click. Clicks deeper inside or farther out are the box's job (`correct_with_click`) and are left
    alone here. Pure: returns a new array."""
    out = np.asarray(mask, bool).copy()
    h, w = out.shape
    for p in points:
        if p.source != PromptSource.CLICK or not (math.isfinite(p.x) and math.isfinite(p.y)):
            continue
        x, y = int(np.clip(round(p.x), 0, w - 1)), int(np.clip(round(p.y), 0, h - 1))
        if p.positive and out.any() and not out[y, x]:
            hole = _enclosed_component(out, x, y)
            if hole is not None:  # a positive click in a hole of the mask (a ventricle inside the brain): fill it
                out |= hole
                continue
        depth = edge_click_depth(out, p)
        if not 0.0 < depth <= cfg.edge_px:
            continue
        reach = int(math.ceil(depth + 1))
        y0, y1, x0, x1 = max(0, y - reach), min(h, y + reach + 1), max(0, x - reach), min(w, x + reach + 1)
        # distance of each pixel on the click's side to the edge (0 across it), in a margin around the
        # window; the edge lies within `depth` of the click, so the margin always holds it
        m0, m1, n0, n1 = max(0, y0 - reach), min(h, y1 + reach), max(0, x0 - reach), min(w, x1 + reach)
        side = ~out[m0:m1, n0:n1] if p.positive else out[m0:m1, n0:n1]
        dist = ndi.distance_transform_edt(side)[y0 - m0: y1 - m0, x0 - n0: x1 - n0]
        yy, xx = np.ogrid[y0:y1, x0:x1]
        band = (dist > 0) & (dist <= depth + 1e-6) & ((xx - x) ** 2 + (yy - y) ** 2 <= reach ** 2)
        out[y0:y1, x0:x1][band] = p.positive  # positive: background pixels join; negative: mask pixels go
    return out


def _enclosed_component(mask: np.ndarray, x: int, y: int) -> np.ndarray | None:
    """The background component of `mask` holding (x, y) when the mask encloses it (it does not reach
    the image's border), else None."""
    lab, _ = ndi.label(~mask)
    k = lab[y, x]
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    return None if k == 0 or k in border else lab == k


def _nested_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / min(|a|, |b|): 1 when one mask holds the other (a correction grew or cut the result),
    low when they are different structures."""
    n = min(int(a.sum()), int(b.sum()))
    return int(np.logical_and(a, b).sum()) / n if n else 0.0


def _far_outside(mask: np.ndarray, click: Point, radii: float) -> bool:
    """Whether `click` lies outside `mask` by more than `radii` x the mask's equivalent radius."""
    n = int(mask.sum())
    if n == 0:
        return False
    h, w = mask.shape
    x, y = int(np.clip(round(click.x), 0, w - 1)), int(np.clip(round(click.y), 0, h - 1))
    if mask[y, x]:
        return False
    ys, xs = np.nonzero(mask)
    d = float(np.sqrt(((xs - x) ** 2 + (ys - y) ** 2).min()))
    return d > radii * math.sqrt(n / math.pi)


def _size_ratio(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = int(a.sum()), int(b.sum())
    return min(na, nb) / max(na, nb) if max(na, nb) else 0.0


def _logits_to_mask(segmenter, embedding, logits: np.ndarray) -> np.ndarray:
    import torch

    transform = segmenter.transform_for(embedding.original_size)
    with torch.inference_mode():
        full = transform.logits_to_image(torch.as_tensor(np.asarray(logits, np.float32)).reshape(1, 1, *np.shape(logits)[-2:]))
    return full[0, 0].numpy() > 0


def _repropose(segmenter, embedding, points: Sequence[Point], cfg: ClickConfig) -> PromptSet:
    """A correction on a prompt without a box: propose afresh from all points (no image growing)."""
    best = best_box_for_points(segmenter, embedding, np.zeros(embedding.original_size, np.float32), points,
                               replace(cfg, grow_tolerances=(), ranker=None))
    b = best.box
    return PromptSet(points=tuple(points), box=Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), _source_of(points),
                                                   float(best.iou))).with_note("re-proposed a box from all clicks")
