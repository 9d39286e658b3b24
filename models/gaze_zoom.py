"""A gaze result looked at again on a zoomed crop: the one-shot path for gaze.

The whole-slice gaze proposal (`prompting.gaze.propose_box`) chooses among masks decoded at the
slice's resolution, where a small structure covers a few embedding cells. For a tight box the zoomed
re-encode (`models.zoom`) gains ~0.17 Dice on Colin27 AAL regions; for the gaze box it gained nothing
(bench/gaze.py, docs/gaze.md), because that box is the bounding box of a coarse whole-slice mask and
the zoomed decode of a wrong box is as wrong. So here the READING is repeated on the crop: the same
fixations, shifted into the crop, go through the same gaze proposal (candidate boxes, vote, learned
choice) against the crop's embedding, and the learned gaze ranker then chooses, on the whole slice,
among the whole-slice candidates, the chosen box decoded on the crop, and every zoomed candidate.
A whole-slice candidate winning keeps the whole-slice result (with `models.zoom.refine_with_zoom`'s
usual gated zoom). Cost: one encoder pass for the crop (cached by content) and ~10 decodes.

`prompting/` must not import `models/`; this module sits on the models side and takes both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from integrations.errors import InvalidPromptError
from prompting.gaze import (Fixation, GazePromptConfig, GazeProposal, ViewingGeometry, _mask_box, decoder_prompt,
                            fixation_arrays, fixation_cover, gaze_prompt)
from prompting.gaze_ranking import GazeCandidate, rank
from prompting.promptset import Box, Point, PromptSet, PromptSource

from .segmentation import Segmentation
from .zoom import ZoomPolicy, keep_better, to_slice_frame, zoom_crop


@dataclass
class GazeResult:
    """The one-shot gaze answer: the prompt to show/export and its Segmentation (slice frame)."""
    prompt: PromptSet
    segmentation: Segmentation
    zoomed: bool  # the winner was decoded on the crop
    candidates: int = 0  # how many masks the final choice saw
    notes: list[str] = field(default_factory=list)


def _shift_box(b: Box, dx: float, dy: float) -> Box:
    return Box(b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy, b.source, b.confidence)


def sharpen_gaze(segmenter, image01: np.ndarray, proposal: GazeProposal, fixations: Sequence[Fixation],
                 geometry: ViewingGeometry, rejected: Sequence[Point] = (),
                 config: GazePromptConfig = GazePromptConfig(), policy: ZoomPolicy | None = ZoomPolicy()) -> GazeResult:
    """`proposal` (from `gaze_prompt(..., image01=image01)` on the whole slice) -> the one-shot result.

    Falls back to the whole-slice result with the gated zoom (`models.zoom.keep_better`, as
    `refine_with_zoom` decides; one crop encode and decode serve both) when there is no
    learned choice (`config.ranker` None, or the proposal kept no candidates), when the box is too
    large to zoom, or when the crop holds no usable fixation."""
    shape = image01.shape[:2]
    prompt = decoder_prompt(proposal.prompt, config)
    base = proposal.segmentation
    if policy is None or prompt.box is None or not policy.applies(prompt.clipped(shape).box, shape):
        return GazeResult(proposal.prompt, base, False, len(proposal.choices))
    crop = zoom_crop(image01, prompt, policy)
    x0, y0, x1, y1 = crop.window
    cshape = crop.image01.shape[:2]
    cemb = segmenter.embed(crop.image01)
    # the whole-slice choice's box decoded on the crop: refine_with_zoom's candidate (kept by its gate
    # when there is no learned choice) and one of the masks the learned choice sees
    boxed = to_slice_frame(segmenter, segmenter.decode(cemb, crop.prompt), crop, shape)
    whole = keep_better(base, boxed)
    fallback = GazeResult(proposal.prompt, whole, whole is boxed, len(proposal.choices))
    if config.ranker is None or not proposal.choices:
        return fallback
    zoomed = [(boxed, prompt.box)]
    inside = [replace(f, x=f.x - x0, y=f.y - y0) for f in fixations]
    crop_rejected = tuple(replace(p, x=p.x - x0, y=p.y - y0) for p in rejected
                          if 0 <= p.x - x0 <= cshape[1] - 1 and 0 <= p.y - y0 <= cshape[0] - 1)
    try:  # the reading repeated on the crop: its vote's result and each candidate box's own mask
        cprop = gaze_prompt(segmenter, cemb, cshape, inside, geometry, crop_rejected, config, image01=crop.image01)
    except InvalidPromptError:
        cprop = None
    pad = ((y0, shape[0] - y1), (x0, shape[1] - x1))
    crop_cands = list(cprop.choices) if cprop is not None else []
    core = proposal.cluster

    def candidate(mask: np.ndarray, box: Box, iou: float) -> GazeCandidate:
        return GazeCandidate(mask, box, float(iou), float(fixation_cover([mask], core, geometry, config)[0]), False, 0.5)

    cands = list(proposal.choices) + [candidate(s.mask, b, s.predicted_iou) for s, b in zoomed] \
        + [candidate(np.pad(c.mask, pad), _shift_box(c.box, x0, y0), c.predicted_iou) for c in crop_cands]
    j = int(np.argmax(rank(cands, image01, *fixation_arrays(core), config.ranker)))
    n_whole = len(proposal.choices)
    if j < n_whole:
        fallback.notes.append(f"zoomed reading tried ({len(cands) - n_whole} masks on a {x1 - x0}x{y1 - y0} px crop); "
                              "a whole-slice candidate kept")
        fallback.candidates = len(cands)
        return fallback
    if j == n_whole:
        seg, box, how = zoomed[0][0], zoomed[0][1], "the gaze box decoded on the crop"
    else:
        c = crop_cands[j - n_whole - 1]
        # the mask ranked is the one kept; its box's decode supplies the logits and the decoder's rating
        # (for a candidate box they are its own; the vote's mask is a pixel vote, as on the whole slice)
        seg = replace(segmenter.decode(cemb, PromptSet(box=c.box)), mask=c.mask)
        seg = to_slice_frame(segmenter, seg, crop, shape)
        how = "the crop's candidate vote" if c.is_vote else "a candidate box's own mask on the crop"
        box = _mask_box(seg.mask, seg.predicted_iou) or _shift_box(c.box, x0, y0)
    seg.label, seg.slice_index = whole.label, whole.slice_index
    note = (f"zoomed reading: the fixations read again on a {x1 - x0}x{y1 - y0} px crop; the learned choice over "
            f"{len(cands)} masks (whole slice and crop) kept {how}")
    seg.notes.append(note)
    out = replace(proposal.prompt, box=replace(box, source=PromptSource.GAZE, confidence=float(np.clip(seg.predicted_iou, 0, 1))),
                  mask_input=None).with_note(note)
    return GazeResult(out, seg, True, len(cands), [note])
