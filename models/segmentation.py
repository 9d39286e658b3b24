"""What a segmenter returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageEmbedding:
    """A slice after the image encoder: everything the decoder needs, nothing it has to recompute."""

    features: torch.Tensor  # (1, C, h, w) image embedding
    original_size: tuple[int, int]  # (H, W) of the slice
    input_size: tuple[int, int]  # (h, w) of the resized image inside the model's square input
    key: str  # cache key: content hash + backend + preprocessing
    backend: str

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


@dataclass
class Segmentation:
    mask: np.ndarray  # (H, W) bool, slice pixels
    predicted_iou: float  # the decoder's own estimate of its IoU
    low_res_logits: np.ndarray  # (1, 256, 256) model frame; feed back as mask_input to refine
    backend: str = ""
    slice_index: int | None = None
    label: str = ""
    # Multimask candidates (mask, predicted IoU), best first, when asked for.
    candidates: list[tuple[np.ndarray, float]] = field(default_factory=list)
    uncertainty_map: np.ndarray | None = None  # (H, W) float32 in [0, 1]: per-pixel disagreement
    uncertainty: float | None = None  # one scalar: higher is less sure
    flags: list[str] = field(default_factory=list)  # e.g. metadata violations, said to the user
    notes: list[str] = field(default_factory=list)  # how the prompt was understood
    # (x0, y0, x1, y1) crop the result was decoded on (models/zoom.py), None for the whole slice.
    # low_res_logits live in that crop's model frame: refine on the full slice only when None.
    zoom: tuple[int, int, int, int] | None = None

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    def bbox(self) -> tuple[int, int, int, int] | None:
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
