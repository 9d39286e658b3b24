"""The segmenter contract: encode a slice once, decode many prompts against it."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from prompting.promptset import PromptSet

from .segmentation import ImageEmbedding, Segmentation


@runtime_checkable
class Segmenter(Protocol):
    name: str

    def embed(self, image01: np.ndarray) -> ImageEmbedding:
        """(H, W) or (H, W, 3) image in [0, 1] -> embedding (cached by content)."""
        ...

    def decode(self, embedding: ImageEmbedding, prompt: PromptSet, multimask: bool = False) -> Segmentation:
        ...

    def decode_batch(self, embedding: ImageEmbedding, prompts: Sequence[PromptSet], multimask: bool = False) -> list[Segmentation]:
        ...
