"""Foreground strokes read again on a zoomed crop: the one-shot path for scribbles.

On the whole slice a small structure covers a few embedding cells, so every mask the strokes'
proposals decode there is coarse, and `models.zoom`'s gated re-decode of the chosen box cannot fix
a box that came from a coarse mask. As for gaze (`models.gaze_zoom`), the READING is repeated on the
crop: the same strokes, shifted into a crop around the chosen box, go through the same proposals
(`prompting.scribbles.stroke_candidates`) against the crop's embedding, and the learned stroke
ranker then chooses, on the whole slice, among the whole-slice proposals and every crop proposal.
A whole-slice proposal winning keeps the whole-slice result (with the usual gated zoom).
Measured on the dev sets' AAL regions and nuclei (docs/prompting.md): +0.03 Dice on both subsets,
where ranking the crop's proposals alone lost on one of them. Cost: one encoder pass for the crop
(cached by content) and the crop's ~60 screening decodes.

Only foreground strokes without a user box take this path: with a box or background strokes the
user has drawn the frame, and the gated zoom of that frame is the one-shot step.
`prompting/` must not import `models/`; this module sits on the models side and takes both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from prompting.clicks import decoder_prompt
from prompting.promptset import Box, PromptSet, PromptSource
from prompting.scribbles import Scribble, ScribbleConfig, rasterize, stroke_candidates, stroke_features

from .segmentation import Segmentation
from .zoom import ZoomPolicy, segment_adaptive, to_slice_frame, zoom_crop


@dataclass
class ScribbleResult:
    """The one-shot scribble answer: the prompt to show/export and its Segmentation (slice frame)."""
    prompt: PromptSet
    segmentation: Segmentation
    zoomed: bool  # the winner is a crop proposal
    candidates: int = 0  # how many masks the final choice saw (0: no choice was made here)
    notes: list[str] = field(default_factory=list)


def _shifted(strokes: Sequence[Scribble], dx: float, dy: float) -> list[Scribble]:
    return [replace(s, points=np.asarray(s.points, np.float32) - np.array([dx, dy], np.float32)) for s in strokes]


def sharpen_scribbles(segmenter, image01: np.ndarray, strokes: Sequence[Scribble], prompt: PromptSet,
                      config: ScribbleConfig = ScribbleConfig(), policy: ZoomPolicy | None = ZoomPolicy(),
                      uncertainty: bool = False) -> ScribbleResult:
    """`prompt` (from `propose_from_scribbles(..., strokes, image01=image01)` on the whole slice) -> the
    one-shot result.

    The whole-slice result is `models.zoom.segment_adaptive` of the prompt's decoder prompt. It stands
    when there is no learned choice (`config.ranker` None), when a stroke is a background one, when
    the box is too large to zoom, or when no crop proposal outranks the whole slice's.
    `uncertainty`: a crop winner gets its uncertainty map (models.uncertainty) from the crop's decoder."""
    shape = image01.shape[:2]
    decoded = decoder_prompt(segmenter, prompt)
    base = segment_adaptive(segmenter, image01, decoded, policy)
    whole = ScribbleResult(prompt, base, False)
    fg_strokes = [s for s in strokes if s.positive]
    if (policy is None or config.ranker is None or decoded.box is None or not fg_strokes
            or len(fg_strokes) < len(strokes) or not policy.applies(decoded.clipped(shape).box, shape)):
        return whole
    from prompting.proposal_ranker import load_ranker

    fg = rasterize(fg_strokes, shape)
    crop = zoom_crop(image01, decoded, policy)
    x0, y0, x1, y1 = crop.window
    cshape = crop.image01.shape[:2]
    crop_fg = rasterize(_shifted(fg_strokes, x0, y0), cshape)
    if not crop_fg.any():
        return whole
    cemb = segmenter.embed(crop.image01)
    whole_cands = stroke_candidates(segmenter, segmenter.embed(image01), fg, shape, config)
    crop_cands = stroke_candidates(segmenter, cemb, crop_fg, cshape, config)
    pad = ((y0, shape[0] - y1), (x0, shape[1] - x1))
    offset = np.array([x0, y0, x0, y0], np.float32)
    # the ranker looks at every mask on the whole slice, as it was trained (stroke terms measured there)
    on_slice = [replace(c, mask=np.pad(c.mask, pad), box=c.box + offset, terms=None) for c in crop_cands]
    every = whole_cands + on_slice
    j = int(np.argmax(load_ranker(config.ranker).score(stroke_features(every, image01, fg))))
    n_whole = len(whole_cands)
    if j < n_whole:
        note = (f"zoomed reading tried ({len(on_slice)} masks on a {x1 - x0}x{y1 - y0} px crop); "
                "a whole-slice proposal kept")
        base.notes.append(note)
        return ScribbleResult(prompt, base, False, len(every), [note])
    c = crop_cands[j - n_whole]
    # the mask ranked is the one kept; its box's decode on the crop supplies the logits and the rating
    crop_prompt = PromptSet(box=Box(*map(float, c.box)))
    seg = replace(segmenter.decode(cemb, crop_prompt), mask=c.mask)
    if uncertainty:
        from .uncertainty import add_uncertainty

        add_uncertainty(segmenter, cemb, crop_prompt, seg)
    seg = to_slice_frame(segmenter, seg, crop, shape)
    seg.label, seg.slice_index = base.label, base.slice_index
    note = (f"zoomed reading: the strokes read again on a {x1 - x0}x{y1 - y0} px crop; the learned choice over "
            f"{len(every)} masks (whole slice and crop) kept a crop proposal")
    seg.notes.append(note)
    ys, xs = np.nonzero(seg.mask)
    b = on_slice[j - n_whole].box if not len(xs) else np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    box = Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), PromptSource.SCRIBBLE,
              float(np.clip(seg.predicted_iou, 0.0, 1.0)))
    return ScribbleResult(replace(prompt, box=box, mask_input=None).with_note(note), seg, True, len(every), [note])
