"""How sure is a result? SAM-U style prompt-perturbation uncertainty.

The same object is decoded under K slightly different prompts (the box's edges jittered by a few
percent of its size, points moved by a pixel or two) in ONE batch call against the cached
embedding, optionally also with the decoder's multimask outputs. Where the masks agree the model is
sure; where they disagree (an edge that moves with the box, a region only some masks include) it is
not. A crisp target gives the same mask whatever the box; an ambiguous one does not.

- per-pixel map: 4 f (1 - f), f = fraction of sampled masks containing the pixel (0 = all agree,
  1 = half/half), blurred by nothing, in [0, 1];
- scalar: 1 - mean IoU of the sampled masks with their consensus (majority) mask, in [0, 1]:
  "how much of the result would change if the prompt were drawn slightly differently".
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from prompting.promptset import Box, Point, PromptSet

from .segmentation import ImageEmbedding, Segmentation


@dataclass(frozen=True)
class UncertaintyConfig:
    samples: int = 12  # K jittered prompts (plus the original)
    box_jitter: float = 0.08  # std of each box edge's shift, as a fraction of the box size
    point_jitter_px: float = 2.0
    # Also the decoder's 3 multimask outputs of every sample: with jittered boxes alone the score
    # ranked errors poorly under the default window (Spearman 0.11/0.30 on two bench/prompts.py
    # subsets), with them 0.74/0.76.
    multimask: bool = True
    seed: int = 0


def jittered_prompts(prompt: PromptSet, image_shape: tuple[int, int], cfg: UncertaintyConfig) -> list[PromptSet]:
    """The original prompt followed by K perturbed copies (seeded, so a result is reproducible)."""
    rng = np.random.default_rng(cfg.seed)
    h, w = image_shape
    out = [prompt]
    for _ in range(cfg.samples):
        p = prompt
        if prompt.box is not None:
            b = prompt.box
            bw, bh = max(1.0, b.width), max(1.0, b.height)
            d = rng.normal(0, cfg.box_jitter, 4) * np.array([bw, bh, bw, bh])
            x0, y0, x1, y1 = b.x0 + d[0], b.y0 + d[1], b.x1 + d[2], b.y1 + d[3]
            x0, x1 = float(np.clip(min(x0, x1 - 1), 0, w - 2)), float(np.clip(max(x1, x0 + 1), 1, w - 1))
            y0, y1 = float(np.clip(min(y0, y1 - 1), 0, h - 2)), float(np.clip(max(y1, y0 + 1), 1, h - 1))
            p = p.with_box(Box(x0, y0, x1, y1, b.source, b.confidence))
        if prompt.points:
            pts = tuple(Point(float(np.clip(q.x + rng.normal(0, cfg.point_jitter_px), 0, w - 1)),
                              float(np.clip(q.y + rng.normal(0, cfg.point_jitter_px), 0, h - 1)),
                              q.positive, q.source, q.confidence) for q in prompt.points)
            p = replace(p, points=pts)
        out.append(p)
    return out


def disagreement(masks: np.ndarray) -> tuple[np.ndarray, float]:
    """(N, H, W) bool sampled masks -> (per-pixel map in [0, 1], scalar score in [0, 1])."""
    masks = np.asarray(masks, bool)
    f = masks.mean(0, dtype=np.float32)
    pmap = (4.0 * f * (1.0 - f)).astype(np.float32)
    consensus = f >= 0.5
    inter = np.logical_and(masks, consensus).reshape(len(masks), -1).sum(1)
    union = np.logical_or(masks, consensus).reshape(len(masks), -1).sum(1)
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return pmap, float(1.0 - ious.mean())


def sample_masks(segmenter, embedding: ImageEmbedding, prompts: list[PromptSet], multimask: bool):
    """Decode the prompts in one batch -> (masks (N, H, W) bool, low-res (B, 1, s, s), IoU (B,)) of the
    single-mask outputs; with multimask, the 3 multimask outputs of every prompt are added to `masks`."""
    transform = segmenter.transform_for(embedding.original_size)
    low, iou = segmenter.decode_logits(embedding, prompts, multimask=False)
    with torch.inference_mode():
        full = transform.logits_to_image(low)[:, 0] > 0
    masks = [full.numpy()]
    if multimask:
        low_m, _ = segmenter.decode_logits(embedding, prompts, multimask=True)
        with torch.inference_mode():
            full_m = transform.logits_to_image(low_m) > 0
        masks.append(full_m.reshape(-1, *full_m.shape[-2:]).numpy())
    return np.concatenate(masks), low, iou[:, 0]


def segment_with_uncertainty(segmenter, embedding: ImageEmbedding, prompt: PromptSet,
                             cfg: UncertaintyConfig = UncertaintyConfig()) -> Segmentation:
    """Decode `prompt` and fill `uncertainty_map` and `uncertainty` from K perturbed prompts (one batch)."""
    prompt.validate(embedding.original_size)
    prompts = jittered_prompts(prompt.clipped(embedding.original_size), embedding.original_size, cfg)
    masks, low, iou = sample_masks(segmenter, embedding, prompts, cfg.multimask)
    pmap, score = disagreement(masks)
    seg = Segmentation(mask=masks[0], predicted_iou=float(iou[0]), low_res_logits=low[0].numpy().copy(),
                       backend=embedding.backend, label=prompt.label, notes=list(prompt.notes))
    seg.uncertainty_map = pmap
    seg.uncertainty = score
    seg.notes.append(f"uncertainty {score:.2f} from {cfg.samples} perturbed prompts"
                     f"{' + multimask outputs' if cfg.multimask else ''}")
    return seg


def add_uncertainty(segmenter, embedding: ImageEmbedding, prompt: PromptSet, seg: Segmentation,
                    cfg: UncertaintyConfig = UncertaintyConfig()) -> Segmentation:
    """Fill an existing Segmentation's uncertainty (its own mask counts as one of the samples)."""
    prompts = jittered_prompts(prompt.clipped(embedding.original_size), embedding.original_size, cfg)[1:]
    masks, _, _ = sample_masks(segmenter, embedding, prompts, cfg.multimask)
    pmap, score = disagreement(np.concatenate([seg.mask[None], masks]))
    seg.uncertainty_map = pmap
    seg.uncertainty = score
    return seg
