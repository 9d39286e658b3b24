"""Fusion: several PromptSets about ONE object (a typed query's box, gaze fixations, clicks, scribbles,
metadata) -> the one PromptSet the segmenter takes. Every rule is a small named function, applied in
a fixed order by `fuse`, and every decision leaves a note (the user sees why a prompt was dropped).

Rules (docs/prompting.md lists them with examples):
1. `rank`: sources are ranked: what the user drew or clicked (box, click, scribble) > a refinement >
   gaze > text > localiser > metadata; within a rank, higher confidence wins.
2. `choose_box`: the top-ranked box is kept. A lower-ranked box that overlaps it (IoU >= 0.3) agrees
   and is dropped quietly; one that does not is a conflict: dropped, with a note saying so.
3. `place_positive`: a positive point inside the box is kept (text box + gaze fixation inside it:
   keep the box, add the fixation as a positive point). A positive point outside the box from an
   explicit user source (click, scribble) widens the box to take it in, if that grows the box by no
   more than `max_widen` of its size on each side; otherwise it is rejected with the reason. A point
   outside the box from an inferred source (gaze, text, ...) is dropped as a stray.
4. `place_negative`: negative points inside the box are kept (negative evidence); outside it they
   say nothing the box does not already say and are dropped.
5. `resolve_point_conflicts`: a positive and a negative point closer than `conflict_radius_px`
   contradict each other: the higher-ranked one stays.
6. The mask prompt (previous logits) comes from the highest-ranked PromptSet that has one.
A fused prompt with neither box nor positive point raises `FusionConflictError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from integrations.errors import InvalidPromptError

from .promptset import Box, Point, PromptSet, PromptSource

SOURCE_RANK: dict[PromptSource, int] = {
    PromptSource.BOX: 5,
    PromptSource.CLICK: 5,
    PromptSource.SCRIBBLE: 5,
    PromptSource.REFINEMENT: 4,
    PromptSource.GAZE: 3,
    PromptSource.TEXT: 2,
    PromptSource.LOCALISER: 2,
    PromptSource.METADATA: 1,
}
EXPLICIT = frozenset({PromptSource.BOX, PromptSource.CLICK, PromptSource.SCRIBBLE, PromptSource.REFINEMENT})


class FusionConflictError(InvalidPromptError):
    """The prompts contradict each other so that nothing usable is left."""


@dataclass(frozen=True)
class FusionPolicy:
    agree_iou: float = 0.3  # boxes overlapping at least this much describe the same object
    max_widen: float = 0.5  # a point may widen the box by at most this fraction of its size per side
    widen_margin_px: float = 3.0  # margin kept around a point the box was widened for
    conflict_radius_px: float = 3.0
    widen_sources: frozenset = field(default_factory=lambda: frozenset({PromptSource.CLICK, PromptSource.SCRIBBLE}))


def rank(source: PromptSource, confidence: float) -> tuple[int, float]:
    return SOURCE_RANK.get(source, 0), float(confidence)


def _box_iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0) + 1)
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0) + 1)
    inter = iw * ih
    union = (a.width + 1) * (a.height + 1) + (b.width + 1) * (b.height + 1) - inter
    return inter / union if union > 0 else 0.0


def choose_box(boxes: Sequence[Box], policy: FusionPolicy = FusionPolicy()) -> tuple[Box | None, list[str]]:
    """Rule 2: the top-ranked box; others agree (dropped quietly) or conflict (dropped with a note)."""
    if not boxes:
        return None, []
    ordered = sorted(boxes, key=lambda b: rank(b.source, b.confidence), reverse=True)
    top, notes = ordered[0], []
    for b in ordered[1:]:
        iou = _box_iou(top, b)
        if iou < policy.agree_iou:
            notes.append(f"conflict: the {b.source.value} box does not overlap the {top.source.value} box "
                         f"(IoU {iou:.2f}); kept the {top.source.value} box.")
    return top, notes


def place_positive(box: Box, point: Point, policy: FusionPolicy = FusionPolicy()) -> tuple[Box, bool, str]:
    """Rule 3: (box, keep the point?, note). Inside: keep. Outside: widen (explicit source, small enough) or reject."""
    if box.contains(point.x, point.y):
        return box, True, ""
    where = f"({point.x:.0f}, {point.y:.0f})"
    if point.source not in policy.widen_sources:
        return box, False, f"dropped a {point.source.value} point at {where} outside the {box.source.value} box (a stray)."
    m = policy.widen_margin_px
    nx0, ny0 = min(box.x0, point.x - m), min(box.y0, point.y - m)
    nx1, ny1 = max(box.x1, point.x + m), max(box.y1, point.y + m)
    grow = max(box.x0 - nx0, nx1 - box.x1) / max(1.0, box.width), max(box.y0 - ny0, ny1 - box.y1) / max(1.0, box.height)
    if max(grow) > policy.max_widen:
        return box, False, (f"rejected the {point.source.value} point at {where}: it lies outside the {box.source.value} box "
                            f"and taking it in would grow the box by {max(grow):.0%} (limit {policy.max_widen:.0%}); "
                            f"redraw the box or click inside it.")
    widened = Box(nx0, ny0, nx1, ny1, box.source, box.confidence)
    return widened, True, f"widened the {box.source.value} box to take in the {point.source.value} point at {where}."


def place_negative(box: Box | None, point: Point) -> tuple[bool, str]:
    """Rule 4: a negative point is evidence only inside the box."""
    if box is None or box.contains(point.x, point.y):
        return True, ""
    return False, f"dropped a negative {point.source.value} point at ({point.x:.0f}, {point.y:.0f}): outside the box it excludes nothing more."


def resolve_point_conflicts(points: Sequence[Point], policy: FusionPolicy = FusionPolicy()) -> tuple[list[Point], list[str]]:
    """Rule 5: positive vs negative points within `conflict_radius_px`: the higher-ranked one stays."""
    pts = list(points)
    drop, notes = set(), []
    for i, a in enumerate(pts):
        for j in range(i + 1, len(pts)):
            b = pts[j]
            if a.positive == b.positive or i in drop or j in drop:
                continue
            if np.hypot(a.x - b.x, a.y - b.y) <= policy.conflict_radius_px:
                ra, rb = rank(a.source, a.confidence), rank(b.source, b.confidence)
                if ra == rb:  # equal standing: the later input is the user's correction
                    loser, winner = a, b
                    drop.add(i)
                else:
                    loser, winner = (b, a) if ra > rb else (a, b)
                    drop.add(j if ra > rb else i)
                notes.append(f"conflict: a {'positive' if loser.positive else 'negative'} {loser.source.value} point at "
                             f"({loser.x:.0f}, {loser.y:.0f}) contradicts a {winner.source.value} point; kept the "
                             f"{'positive' if winner.positive else 'negative'} {winner.source.value} point.")
    return [p for k, p in enumerate(pts) if k not in drop], notes


def fuse(prompts: Sequence[PromptSet], policy: FusionPolicy = FusionPolicy()) -> PromptSet:
    """Apply rules 1-6 to the PromptSets of one object; the result's notes explain every decision."""
    prompts = [p for p in prompts if p is not None and not p.is_empty]
    if not prompts:
        raise FusionConflictError("no prompt given: draw a box, click, scribble, look at or name the structure.")
    notes: list[str] = [n for p in prompts for n in p.notes]
    box, box_notes = choose_box([p.box for p in prompts if p.box is not None], policy)
    notes += box_notes
    points = sorted((pt for p in prompts for pt in p.points), key=lambda q: rank(q.source, q.confidence), reverse=True)
    kept: list[Point] = []
    for pt in points:
        if pt.positive:
            if box is None:
                kept.append(pt)
                continue
            box, ok, note = place_positive(box, pt, policy)
        else:
            ok, note = place_negative(box, pt)
        if note:
            notes.append(note)
        if ok:
            kept.append(pt)
    kept, conflict_notes = resolve_point_conflicts(kept, policy)
    notes += conflict_notes
    if box is None and not any(p.positive for p in kept):
        raise FusionConflictError("after fusion no box and no positive point is left: "
                                  + (" ".join(notes) if notes else "only negative evidence was given."))
    mask_src = sorted((p for p in prompts if p.mask_input is not None),
                      key=lambda p: max((rank(s, 1.0) for s in p.sources), default=(0, 0.0)), reverse=True)
    label = next((p.label for p in prompts if p.label), "")
    return PromptSet(points=tuple(kept), box=box, mask_input=mask_src[0].mask_input if mask_src else None,
                     label=label, notes=tuple(dict.fromkeys(notes)))


def fuse_and_propose(segmenter, embedding, image01: np.ndarray, prompts: Sequence[PromptSet],
                     policy: FusionPolicy = FusionPolicy()) -> PromptSet:
    """`fuse`, then, if no box survived, turn the points into a box (LiteMedSAM needs one)."""
    fused = fuse(prompts, policy)
    if fused.box is not None:
        return fused
    from .clicks import propose_from_points

    proposed = propose_from_points(segmenter, embedding, image01, fused.points)
    # clicks the click decoder answered stay clicks alone: a mask prompt would send them to the box decoder
    mask_input = fused.mask_input if proposed.box is not None else None
    return replace(proposed, mask_input=mask_input, label=fused.label, notes=fused.notes + proposed.notes)


def with_negative_points(prompt: PromptSet, points: Sequence[tuple[float, float]], source: PromptSource = PromptSource.CLICK,
                         confidence: float = 1.0) -> PromptSet:
    """Add negative evidence (x, y) points to a prompt."""
    return prompt.with_points(*(Point(float(x), float(y), False, source, confidence) for x, y in points))
