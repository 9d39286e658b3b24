"""Several prompt kinds for ONE object on one slice -> one prompt, through prompting.fusion.

Each result remembers the raw inputs the user gave for it (a drawn box, each click, each scribble,
the gaze proposal, the text query's box), one PromptSet per input, with its source. While all inputs
are of one kind, the tool's own refinement runs (a second click corrects the first, strokes add up):
those paths are tuned for their kind. As soon as the inputs are MIXED (a text box and a click, a box
and a background scribble, gaze and a click), they go through `prompting.fusion.fuse_and_propose`,
whose rules decide what is kept, widened or rejected; its notes are shown beside the result.

No Streamlit here (the views display `FusedPrompt.notes`); the segmenter is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from prompting.promptset import Point, PromptSet, PromptSource

# An input of one of these kinds replaces the earlier input of the same kind (the user redrew the
# box, gaze produced a newer proposal, a new query was asked); clicks and scribbles accumulate.
REPLACING_KINDS = frozenset({"box", "gaze", "text"})
KIND_OF_SOURCE = {
    PromptSource.BOX: "box", PromptSource.CLICK: "click", PromptSource.REFINEMENT: "click",
    PromptSource.SCRIBBLE: "scribble", PromptSource.GAZE: "gaze", PromptSource.TEXT: "text",
    PromptSource.LOCALISER: "text", PromptSource.METADATA: "text",
}
# The previous mask goes along as the mask prompt when the fused box is (nearly) the previous one
# (for backends that take points: SAM, MedSAM).
SAME_BOX_IOU = 0.5
# Backends trained on boxes only (DESIGN.md): a fused prompt with a box is decoded from the box
# alone, its points stay in the PromptSet as evidence (shown, fused again next time). Measured here
# on 80 simulated corrections (Colin27 demo slices 12/20/28, AAL regions, box 15 % loose, a negative
# click at the deepest point of the largest false-positive part): box alone Dice 0.705; box + the
# negative click + previous mask 0.673 (the clicked pixel stayed in the mask in 85 %); without the
# previous mask 0.569; box cut at the click 0.698; a watershed cut at the click 0.666.
# (Which backends are box-trained: prompting.clicks.is_box_trained.)


def input_kind(p: PromptSet) -> str:
    """The tool an input came from: box | click | scribble | gaze | text."""
    src = p.box.source if p.box is not None else (p.points[0].source if p.points else PromptSource.BOX)
    return KIND_OF_SOURCE.get(src, src.value)


def raw_click(x: float, y: float, positive: bool) -> PromptSet:
    return PromptSet(points=(Point(float(round(x)), float(round(y)), positive, PromptSource.CLICK),))


def raw_scribble(stroke, points_per_stroke: int = 3) -> PromptSet:
    """A stroke as fusion sees it: points along it (positive or negative, source scribble)."""
    from prompting.scribbles import sample_along

    return PromptSet(points=tuple(sample_along(stroke, points_per_stroke)))


def merged_inputs(earlier: Sequence[PromptSet], new: PromptSet) -> tuple[PromptSet, ...]:
    """The inputs after `new`: replaces an earlier input of a replacing kind, else adds to them."""
    k = input_kind(new)
    kept = tuple(p for p in earlier if not (k in REPLACING_KINDS and input_kind(p) == k))
    return kept + (new,)


def is_mixed(inputs: Sequence[PromptSet]) -> bool:
    return len({input_kind(p) for p in inputs}) > 1


def _box_iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0) + 1)
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0) + 1)
    union = (a.width + 1) * (a.height + 1) + (b.width + 1) * (b.height + 1) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _describe(inputs: Sequence[PromptSet]) -> str:
    counts: dict[str, int] = {}
    for p in inputs:
        k = input_kind(p)
        counts[k] = counts.get(k, 0) + 1
    return " + ".join(f"{n} {k}s" if n > 1 else k for k, n in counts.items())


@dataclass(frozen=True)
class FusedPrompt:
    prompt: PromptSet  # the fused prompt (kept as the result's prompt: box, points, notes)
    notes: tuple[str, ...]  # fusion's decisions, for the user: kept / widened / rejected and why
    decode: PromptSet | None = None  # what the decoder gets when it differs from `prompt`


def box_trained(segmenter) -> bool:
    from prompting.clicks import is_box_trained

    return is_box_trained(segmenter)


def unhonoured_negatives(prompt: PromptSet, mask: np.ndarray) -> list[str]:
    """Notes for negative points the decoded mask still covers: what to do instead."""
    out = []
    h, w = mask.shape
    for p in prompt.points:
        if not p.positive and 0 <= round(p.y) < h and 0 <= round(p.x) < w and mask[round(p.y), round(p.x)]:
            out.append(f"the negative {p.source.value} point at ({p.x:.0f}, {p.y:.0f}) is still inside the mask: this "
                       "box-trained model cannot exclude a point inside its box; draw a background scribble "
                       "(Scribble −) over that part to cut it, or a tighter box")
    return out


def summary(inputs: Sequence[PromptSet], fused: PromptSet) -> str:
    """One line saying what went in and what came out (fusion itself notes only the exceptions)."""
    pos = sum(p.positive for p in fused.points)
    neg = len(fused.points) - pos
    given = sum(len(p.points) for p in inputs)
    b = fused.box
    who = "drawn" if b is not None and b.source == PromptSource.BOX else (b.source.value if b is not None else "")
    box = f"the {who} box ({b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f})" if b is not None else "no box (points only)"
    return (f"{_describe(inputs)}: kept {box}, {pos} positive / {neg} negative point(s) of {given} given"
            + (f", {given - len(fused.points)} dropped" if given > len(fused.points) else ""))


def fuse_inputs(segmenter, embedding, image01: np.ndarray, inputs: Sequence[PromptSet],
                previous_prompt: PromptSet | None = None, previous_logits: np.ndarray | None = None,
                strokes: Sequence = ()) -> FusedPrompt:
    """Mixed inputs -> the prompt to decode (raises prompting.fusion.FusionConflictError when the
    inputs leave nothing usable; its message lists why).

    With scribbles among the inputs, the fused box is the frame the strokes refine
    (`propose_from_scribbles`: background strokes cut it where its mask contradicts them), and
    fusion's kept points ride along.
    """
    from prompting.fusion import fuse_and_propose

    fused = fuse_and_propose(segmenter, embedding, image01, list(inputs))
    notes = [summary(inputs, fused)] + [n for n in fused.notes]
    prompt = fused
    if strokes and fused.box is not None:
        from prompting.scribbles import propose_from_scribbles

        framed = propose_from_scribbles(segmenter, embedding, list(strokes), box=fused.box)
        prompt = replace(framed, points=fused.points, label=fused.label)
        notes += [n for n in framed.notes]
    elif prompt.mask_input is None and previous_logits is not None and previous_prompt is not None \
            and prompt.box is not None and previous_prompt.box is not None \
            and _box_iou(prompt.box, previous_prompt.box) >= SAME_BOX_IOU and not box_trained(segmenter):
        prompt = prompt.with_mask_input(previous_logits)
        notes.append("the previous mask went along as the mask prompt (same box)")
    decode = None
    if box_trained(segmenter) and prompt.box is not None and (prompt.points or prompt.mask_input is not None):
        decode = replace(prompt, points=(), mask_input=None)
        notes.append("decoded from the fused box alone (LiteMedSAM was trained on boxes; points are kept as evidence)")
    notes = tuple(dict.fromkeys(notes))
    return FusedPrompt(replace(prompt, notes=notes), notes, decode)
