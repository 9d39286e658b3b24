"""Clicks and strokes read again on a zoomed crop: the one-shot path for them.

On the whole slice a small structure covers a few embedding cells, so every mask the proposals of
a click or a stroke decode there is coarse, and `models.zoom`'s gated re-decode of the chosen box
cannot fix a box that came from a coarse mask. As for gaze (`models.gaze_zoom`), the READING is
repeated on the crop: the same clicks or strokes, shifted into a crop around the chosen box
(re-encoded), go through the same proposals against the crop's embedding, and the learned ranker
then chooses, on the whole slice, among the whole-slice proposals and every crop proposal. A
whole-slice proposal winning keeps the whole-slice result (with the usual gated zoom, unless its
re-decode contradicts the winning proposal's mask).
Measured on the dev sets' AAL regions and nuclei (docs/prompting.md): one stroke +0.03 Dice on both
subsets, one click +0.025 on average over eight draws of the simulated user (ranking the crop's
proposals alone lost); after correction clicks it gained nothing dependable, so the app's Sharpen
runs it for one click only. Cost: one encoder pass for the crop (cached by content) and
two rounds of ~60 screening decodes.

Strokes take this path only when they are all foreground strokes without a user box: with a box or
background strokes the user has drawn the frame, and the gated zoom of that frame is the one-shot step.
`prompting/` must not import `models/`; this module sits on the models side and takes both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from prompting.clicks import ClickConfig, _mask_iou, click_candidates, click_scores, decoder_prompt
from prompting.promptset import Box, Point, PromptSet, PromptSource
from prompting.scribbles import Scribble, ScribbleConfig, rasterize, stroke_candidates, stroke_features

from .segmentation import Segmentation
from .zoom import ZoomPolicy, segment_adaptive, to_slice_frame, zoom_crop


@dataclass
class ZoomedReading:
    """The one-shot answer: the prompt to show/export and its Segmentation (slice frame)."""
    prompt: PromptSet
    segmentation: Segmentation
    zoomed: bool  # the winner is a crop proposal
    candidates: int = 0  # how many masks the final choice saw (0: no choice was made here)
    notes: list[str] = field(default_factory=list)
    declined: str = ""  # why the gated zoom's re-decode was not kept although rated higher ("" when it was not at issue)


# read(embedding, image01, dx, dy): the user's input shifted by (-dx, -dy) into that image's frame,
# proposed against that embedding ([] when nothing of the input lies in the image)
Reader = Callable[[object, np.ndarray, int, int], list]


def reread_on_crop(segmenter, image01: np.ndarray, prompt: PromptSet, read: Reader,
                   score: Callable[[list], np.ndarray], what: str, source: PromptSource,
                   policy: ZoomPolicy | None = ZoomPolicy(), uncertainty: bool = False) -> ZoomedReading:
    """`prompt` (the whole-slice proposal's) -> the one-shot result.

    The whole-slice result is `models.zoom.segment_adaptive` of the prompt's decoder prompt; it stands
    when the box is too large to zoom or when no crop proposal outranks the whole slice's. `score`
    rates proposals whose masks and boxes are on the slice grid. `uncertainty`: a crop winner gets its
    uncertainty map (models.uncertainty) from the crop's decoder."""
    shape = image01.shape[:2]
    decoded = decoder_prompt(segmenter, prompt)
    base = segment_adaptive(segmenter, image01, decoded, policy)
    whole = ZoomedReading(prompt, base, False)
    if policy is None or decoded.box is None or not policy.applies(decoded.clipped(shape).box, shape):
        return whole
    crop = zoom_crop(image01, decoded, policy)
    x0, y0, x1, y1 = crop.window
    cemb = segmenter.embed(crop.image01)
    crop_cands = read(cemb, crop.image01, x0, y0)
    if not crop_cands:
        return whole
    wemb = segmenter.embed(image01)
    whole_cands = read(wemb, image01, 0, 0)
    pad = ((y0, shape[0] - y1), (x0, shape[1] - x1))
    offset = np.array([x0, y0, x0, y0], np.float32)
    # the ranker looks at every mask on the whole slice, as it was trained (stroke terms measured there)
    on_slice = [replace(c, mask=np.pad(c.mask, pad), box=c.box + offset, terms=None) for c in crop_cands]
    every = whole_cands + on_slice
    j = int(np.argmax(score(every)))
    n_whole = len(whole_cands)
    if j < n_whole:
        note = (f"zoomed reading tried ({len(on_slice)} masks on a {x1 - x0}x{y1 - y0} px crop); "
                "a whole-slice proposal kept")
        kept = _agreeing_with(segmenter, wemb, decoded, base, every[j].mask)
        declined = kept.notes[-1] if kept is not base else ""
        kept.notes.append(note)
        return ZoomedReading(prompt, kept, False, len(every), [note], declined)
    c = crop_cands[j - n_whole]
    # the mask ranked is the one kept; its box's decode on the crop supplies the logits and the rating
    crop_prompt = PromptSet(box=Box(*map(float, c.box)))
    seg = replace(segmenter.decode(cemb, crop_prompt), mask=c.mask)
    if uncertainty:
        from .uncertainty import add_uncertainty

        add_uncertainty(segmenter, cemb, crop_prompt, seg)
    seg = to_slice_frame(segmenter, seg, crop, shape)
    seg.label, seg.slice_index = base.label, base.slice_index
    note = (f"zoomed reading: the {what} read again on a {x1 - x0}x{y1 - y0} px crop; the learned choice over "
            f"{len(every)} masks (whole slice and crop) kept a crop proposal")
    seg.notes.append(note)
    ys, xs = np.nonzero(seg.mask)
    b = on_slice[j - n_whole].box if not len(xs) else np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    box = Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), source, float(np.clip(seg.predicted_iou, 0.0, 1.0)))
    return ZoomedReading(replace(prompt, box=box, mask_input=None).with_note(note), seg, True, len(every), [note])


# The gated zoom's re-decode of the chosen box may contradict the mask the learned choice just
# preferred to every crop proposal (seen on a nucleus: the crop's decode 0.32 Dice, rated higher by the
# decoder, against 0.92 for the whole-slice mask): below this IoU with it, the whole-slice decode stands.
MIN_WINNER_AGREEMENT = 0.5


def _agreeing_with(segmenter, embedding, prompt: PromptSet, result: Segmentation, winner: np.ndarray) -> Segmentation:
    """`result` (the gated zoom's), or the whole-slice decode of `prompt` (against `embedding`, the
    slice's) when only that agrees with `winner`."""
    agreement = _mask_iou(result.mask, winner)
    if not result.mask.any() or agreement >= MIN_WINNER_AGREEMENT:
        return result
    plain = segmenter.decode(embedding, prompt)
    if _mask_iou(plain.mask, winner) <= agreement:
        return result
    plain.label, plain.slice_index = result.label, result.slice_index
    plain.notes.append(f"the zoomed re-decode disagreed with the chosen proposal (IoU {agreement:.2f}); "
                       "kept the whole-slice decode")
    return plain


def sharpen_scribbles(segmenter, image01: np.ndarray, strokes: Sequence[Scribble], prompt: PromptSet,
                      config: ScribbleConfig = ScribbleConfig(), policy: ZoomPolicy | None = ZoomPolicy(),
                      uncertainty: bool = False) -> ZoomedReading:
    """`prompt` (from `propose_from_scribbles(..., strokes, image01=image01)`) -> the one-shot result.
    Without a learned choice (`config.ranker` None), or with a background stroke, the whole-slice
    result (gated zoom) stands."""
    fg_strokes = [s for s in strokes if s.positive]
    if config.ranker is None or not fg_strokes or len(fg_strokes) < len(strokes):
        return ZoomedReading(prompt, segment_adaptive(segmenter, image01, decoder_prompt(segmenter, prompt), policy), False)
    from prompting.proposal_ranker import load_ranker

    fg = rasterize(fg_strokes, image01.shape[:2])

    def read(embedding, image: np.ndarray, dx: int, dy: int) -> list:
        shape = image.shape[:2]
        shifted = [replace(s, points=np.asarray(s.points, np.float32) - np.array([dx, dy], np.float32)) for s in fg_strokes]
        drawn = rasterize(shifted, shape)
        return stroke_candidates(segmenter, embedding, drawn, shape, config) if drawn.any() else []

    ranker = load_ranker(config.ranker)
    return reread_on_crop(segmenter, image01, prompt, read, lambda c: ranker.score(stroke_features(c, image01, fg)),
                          "strokes", PromptSource.SCRIBBLE, policy, uncertainty)


def sharpen_clicks(segmenter, image01: np.ndarray, points: Sequence[Point], prompt: PromptSet,
                   config: ClickConfig = ClickConfig(), policy: ZoomPolicy | None = ZoomPolicy(),
                   uncertainty: bool = False) -> ZoomedReading:
    """`prompt` (from `propose_from_points` or `correct_with_click` for these clicks, positive and
    negative) -> the one-shot result: every click read again, on the whole slice and on the crop.
    Without a learned choice (`config.ranker` None) the whole-slice result (gated zoom) stands."""
    points = tuple(points)
    if config.ranker is None or not any(p.positive for p in points):
        return ZoomedReading(prompt, segment_adaptive(segmenter, image01, decoder_prompt(segmenter, prompt), policy), False)

    def read(embedding, image: np.ndarray, dx: int, dy: int) -> list:
        h, w = image.shape[:2]
        shifted = tuple(replace(p, x=p.x - dx, y=p.y - dy) for p in points
                        if 0 <= p.x - dx <= w - 1 and 0 <= p.y - dy <= h - 1)
        return click_candidates(segmenter, embedding, image, shifted, config) if any(p.positive for p in shifted) else []

    return reread_on_crop(segmenter, image01, prompt, read, lambda c: click_scores(c, image01, points, config.ranker),
                          "clicks", next(p.source for p in points if p.positive), policy, uncertainty)
