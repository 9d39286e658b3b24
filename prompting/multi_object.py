"""Several targets on one slice in ONE batch decode, without overlaps unless asked.

Each object is its own PromptSet (its own box, points, label). They are decoded together against the
cached embedding; where two masks claim the same pixel, the object with the larger logit there keeps
it (the decoder is more certain about it), so labels never overlap in an export unless
`allow_overlap=True` (e.g. a lesion inside an organ, both wanted whole).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from integrations.errors import InvalidPromptError

from .promptset import PromptSet


def resolve_overlaps(logits: np.ndarray) -> np.ndarray:
    """(B, H, W) logits -> (B, H, W) bool masks, each pixel given to at most one object: the one with
    the largest positive logit."""
    logits = np.asarray(logits)
    fg = logits > 0
    winner = np.argmax(logits, axis=0)
    own = winner[None] == np.arange(len(logits))[:, None, None]
    return fg & own


def segment_objects(segmenter, embedding, prompts: Sequence[PromptSet], allow_overlap: bool = False) -> list:
    """Decode every object's PromptSet in one batch -> one Segmentation per object (same order).

    Labels must be distinct (they name the objects in exports); an empty label is given "object N".
    """
    import torch

    if not prompts:
        raise InvalidPromptError("no objects given: add at least one box, click or scribble per object.")
    labels = [p.label or f"object {i + 1}" for i, p in enumerate(prompts)]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup:
        raise InvalidPromptError(f"two objects share the label(s) {sorted(dup)}; give each object its own name.")
    segs = segmenter.decode_batch(embedding, list(prompts))
    low = torch.from_numpy(np.stack([s.low_res_logits for s in segs]))  # (B, 1, s, s)
    transform = segmenter.transform_for(embedding.original_size)
    with torch.inference_mode():
        full = transform.logits_to_image(low)[:, 0].numpy()
    masks = (full > 0) if allow_overlap else resolve_overlaps(full)
    for i, s in enumerate(segs):
        lost = int(s.mask.sum()) - int(masks[i].sum())
        s.label = labels[i]
        s.mask = masks[i]
        if lost > 0:
            s.notes.append(f"{lost} px shared with another object were given to the object the model is surer of there.")
    return segs


def label_map(segs: Sequence) -> np.ndarray:
    """Non-overlapping Segmentations -> (H, W) uint16 label image (0 background, i + 1 for segs[i])."""
    if not segs:
        raise InvalidPromptError("no segmentations to combine.")
    out = np.zeros(segs[0].mask.shape, np.uint16)
    for i, s in enumerate(segs):
        if (out[s.mask] > 0).any():
            raise InvalidPromptError(f"'{s.label}' overlaps an earlier object; decode with allow_overlap=False to resolve.")
        out[s.mask] = i + 1
    return out
