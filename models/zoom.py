"""Zoomed decoding: re-encode a crop around a small target so it fills the model's input.

LiteMedSAM sees a slice at 256 px. A 25 px structure on a 217 px MRI slice covers ~30 model pixels
and ~2 embedding cells, so its boundary is guessed from very little. Cropping a window a few times
the box size and encoding that gives the decoder 5-10x more pixels of the target, at the cost of one
extra encoder pass per target (cached by content like any other image). The full-slice embedding
still answers instantly; the zoomed result replaces it when ready.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from integrations.errors import InvalidPromptError
from prompting.promptset import Box, Point, PromptSet

from .segmentation import Segmentation


@dataclass(frozen=True)
class ZoomPolicy:
    context: float = 2.5  # crop side / longest box side
    min_side: int = 48  # never crop smaller than this many slice pixels
    max_fraction: float = 0.5  # zoom only when the box's longest side is below this fraction of the slice's shortest
    renormalise: bool = True  # min-max the crop itself, as LiteMedSAM's training images were
    min_contrast: float = 0.25  # ...but only if the crop spans this fraction of the slice's range

    def applies(self, box: Box, image_shape: tuple[int, int]) -> bool:
        return max(box.width, box.height) + 1 < self.max_fraction * min(image_shape)


def crop_window(box: Box, image_shape: tuple[int, int], policy: ZoomPolicy) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive: a square around the box centre, shifted to stay inside."""
    h, w = image_shape
    side = int(round(max(box.width + 1, box.height + 1) * policy.context))
    side = max(side, policy.min_side)
    side_x, side_y = min(side, w), min(side, h)
    cx, cy = (box.x0 + box.x1 + 1) / 2.0, (box.y0 + box.y1 + 1) / 2.0
    x0 = int(round(cx - side_x / 2.0))
    y0 = int(round(cy - side_y / 2.0))
    x0 = min(max(0, x0), w - side_x)
    y0 = min(max(0, y0), h - side_y)
    return x0, y0, x0 + side_x, y0 + side_y


def _shift(prompt: PromptSet, dx: float, dy: float, shape: tuple[int, int]) -> PromptSet:
    h, w = shape
    b = prompt.box
    box = Box(max(0.0, b.x0 - dx), max(0.0, b.y0 - dy), min(w - 1.0, b.x1 - dx), min(h - 1.0, b.y1 - dy), b.source, b.confidence)
    pts = tuple(replace(p, x=p.x - dx, y=p.y - dy) for p in prompt.points if 0 <= p.x - dx <= w - 1 and 0 <= p.y - dy <= h - 1)
    # previous logits are in the full slice's model frame: meaningless for the crop
    return replace(prompt, box=box, points=pts, mask_input=None)


@dataclass(frozen=True)
class ZoomCrop:
    """A window of the slice around a prompt's box, as the encoder will see it."""
    image01: np.ndarray  # the crop, min-max stretched when it has real contrast (policy.renormalise)
    window: tuple[int, int, int, int]  # (x0, y0, x1, y1) in slice pixels, end exclusive
    prompt: PromptSet  # the prompt in crop pixels (no previous logits: they belong to the slice's frame)


def zoom_crop(image01: np.ndarray, prompt: PromptSet, policy: ZoomPolicy = ZoomPolicy()) -> ZoomCrop:
    """The crop a zoomed decode encodes (`prompt` must have a box)."""
    if prompt.box is None:
        raise InvalidPromptError("zoomed segmentation needs a box (clicks, scribbles, gaze and text give one first).")
    shape = image01.shape[:2]
    prompt.validate(shape)
    prompt = prompt.clipped(shape)
    x0, y0, x1, y1 = crop_window(prompt.box, shape, policy)
    crop = np.asarray(image01[y0:y1, x0:x1], dtype=np.float32)
    if policy.renormalise:
        # Only a crop with real contrast is stretched: stretching flat air would turn noise into a "structure".
        lo, hi = float(crop.min()), float(crop.max())
        full_range = float(image01.max() - image01.min())
        if hi - lo >= policy.min_contrast * full_range and hi > lo:
            crop = (crop - lo) / (hi - lo)
    return ZoomCrop(crop, (x0, y0, x1, y1), _shift(prompt, x0, y0, crop.shape[:2]))


def to_slice_frame(segmenter, seg: Segmentation, crop: ZoomCrop, shape: tuple[int, int]) -> Segmentation:
    """A Segmentation decoded on `crop`, put back on the slice: mask, candidates and uncertainty map
    pasted into the window, the low-resolution logits resampled into the slice's model frame (so
    they can be fed back as a mask prompt on the whole slice like any other result's)."""
    x0, y0, x1, y1 = crop.window
    pad = ((y0, shape[0] - y1), (x0, shape[1] - x1))
    full = np.zeros(shape, bool)
    full[y0:y1, x0:x1] = seg.mask
    seg.mask = full
    seg.candidates = [(np.pad(m, pad), s) for m, s in seg.candidates]
    if seg.uncertainty_map is not None:
        seg.uncertainty_map = np.pad(np.asarray(seg.uncertainty_map), pad)
    if seg.low_res_logits is not None:
        low = np.asarray(seg.low_res_logits, np.float32)
        on_crop = segmenter.transform_for(crop.image01.shape[:2]).logits_to_image_np(low)  # (1, hc, wc)
        on_slice = np.full((low.shape[0], *shape), -20.0, np.float32)
        on_slice[:, y0:y1, x0:x1] = on_crop
        seg.low_res_logits = segmenter.transform_for(shape).image_to_logits_np(on_slice, low.shape[-1])
    seg.zoom = (x0, y0, x1, y1)
    seg.notes.append(f"zoomed: re-encoded a {x1 - x0}x{y1 - y0} px crop around the box")
    return seg


def segment_zoomed(segmenter, image01: np.ndarray, prompt: PromptSet, policy: ZoomPolicy = ZoomPolicy()) -> Segmentation:
    """Decode `prompt` (which must have a box) on a crop around its box; the result comes back on the
    slice grid (`to_slice_frame`)."""
    crop = zoom_crop(image01, prompt, policy)
    seg = segmenter.decode(segmenter.embed(crop.image01), crop.prompt)
    return to_slice_frame(segmenter, seg, crop, image01.shape[:2])


# A zoomed result replaces the full-slice one only when the decoder rates it clearly better:
# on Colin27 AAL regions zooming gains ~0.11 Dice; on crowded nuclei it loses unless so gated
# (bench/accuracy.py prints both).
ZOOM_IOU_MARGIN = 0.05


def box_is_flat(image01: np.ndarray, box: Box, min_contrast: float = 0.01) -> bool:
    """True when the box holds no image contrast (uniform air or padding): there is nothing to segment."""
    h, w = image01.shape[:2]
    x0, y0 = max(0, int(np.floor(box.x0))), max(0, int(np.floor(box.y0)))
    x1, y1 = min(w, int(np.ceil(box.x1)) + 1), min(h, int(np.ceil(box.y1)) + 1)
    region = image01[y0:y1, x0:x1]
    full = float(image01.max() - image01.min())
    return region.size == 0 or float(region.max() - region.min()) <= min_contrast * max(full, 1e-6)


def segment_adaptive(segmenter, image01: np.ndarray, prompt: PromptSet, policy: ZoomPolicy | None = ZoomPolicy()) -> Segmentation:
    """Full-slice decode, then, for a small box, a zoomed decode kept if its predicted IoU is higher by a margin."""
    base = segmenter.decode(segmenter.embed(image01), prompt)
    if prompt.box is not None and box_is_flat(image01, prompt.clipped(image01.shape[:2]).box):
        # SAM paints blobs even into uniform air (seen: 56 px with predicted IoU 0.68); say so instead.
        base.mask = np.zeros_like(base.mask)
        base.flags.append("the box holds no image contrast (uniform background): nothing to segment there")
        return base
    return refine_with_zoom(segmenter, image01, prompt, base, policy)


def refine_with_zoom(segmenter, image01: np.ndarray, prompt: PromptSet, base: Segmentation,
                     policy: ZoomPolicy | None = ZoomPolicy()) -> Segmentation:
    """`base` (a whole-slice result for `prompt`), or the zoomed result when the decoder rates it clearly better."""
    if policy is None or prompt.box is None or not policy.applies(prompt.clipped(image01.shape[:2]).box, image01.shape[:2]):
        return base
    return keep_better(base, segment_zoomed(segmenter, image01, prompt, policy))


def keep_better(base: Segmentation, zoomed: Segmentation) -> Segmentation:
    """The gate of `refine_with_zoom`: `zoomed` (the same prompt decoded on a crop, slice frame) when
    the decoder rates it ZOOM_IOU_MARGIN higher than the whole-slice `base`, else `base` (noted)."""
    if zoomed.predicted_iou >= base.predicted_iou + ZOOM_IOU_MARGIN:
        zoomed.label, zoomed.slice_index = base.label, base.slice_index
        zoomed.notes = base.notes + zoomed.notes[-1:]
        zoomed.flags = base.flags + zoomed.flags
        return zoomed
    base.notes.append(f"zoom tried: predicted IoU {zoomed.predicted_iou:.2f} vs {base.predicted_iou:.2f} on the whole slice; kept the whole-slice result")
    return base
