"""Segment on several co-registered MRI sequences at once.

With an adapter checkpoint configured (argument, or the CLINSEG_ADAPTER_CHECKPOINT environment
variable), each sequence is embedded by the frozen encoder (cached) and the cross-attention adapter
fuses the embeddings into one for the mask decoder.

Without one, the documented NON-LEARNED fallback is "sequences as channels": the first three
sequences (in the order given) become the R, G, B input channels of the encoder (two sequences:
A, B and their mean; one: grey). Nothing is learned about how the sequences relate, and the result's
`notes` say that this fallback was used, so no one mistakes it for the adapter.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from integrations.errors import InvalidPromptError
from prompting.promptset import PromptSet

from .adapter import CrossSequenceAdapter, load_adapter
from .segmentation import ImageEmbedding, Segmentation

ADAPTER_ENV = "CLINSEG_ADAPTER_CHECKPOINT"

CHANNELS_NOTE = ("multi-sequence fusion: no adapter checkpoint configured, so the non-learned fallback "
                 "'sequences as channels' was used ({channels}); train one with `clinseg train-adapter` "
                 "and set " + ADAPTER_ENV + " for learned cross-attention fusion")


def channel_image(images: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """(H, W, 3) image from up to three sequences, and which sequence went to which channel."""
    names = list(images)
    if not names:
        raise InvalidPromptError("no sequence given.")
    arrs = [np.asarray(images[n], np.float32) for n in names]
    shape = arrs[0].shape
    if any(a.shape != shape or a.ndim != 2 for a in arrs):
        raise InvalidPromptError(f"sequences must be co-registered 2-D slices of one size; got {[a.shape for a in arrs]}")
    if len(arrs) == 1:
        return arrs[0], f"{names[0]} as grey"
    if len(arrs) == 2:
        return np.stack([arrs[0], arrs[1], (arrs[0] + arrs[1]) / 2], axis=2), f"R={names[0]}, G={names[1]}, B=mean"
    used = f"R={names[0]}, G={names[1]}, B={names[2]}"
    if len(arrs) > 3:
        used += f"; not used: {', '.join(names[3:])}"
    return np.stack(arrs[:3], axis=2), used


@dataclass
class FusedEmbedding:
    embedding: ImageEmbedding
    mode: str  # "adapter" | "channels"
    notes: tuple[str, ...]


class MultiSequenceSegmenter:
    """Embed several sequences of one slice into one embedding, then decode prompts against it."""

    def __init__(self, segmenter, checkpoint: str | os.PathLike | None = None):
        self.segmenter = segmenter
        path = checkpoint if checkpoint is not None else os.environ.get(ADAPTER_ENV) or None
        self.adapter: CrossSequenceAdapter | None = None
        self.checkpoint: Path | None = None
        if path:
            self.adapter, _ = load_adapter(path, backend=segmenter.version)
            self.checkpoint = Path(path)

    @property
    def mode(self) -> str:
        return "adapter" if self.adapter is not None else "channels"

    @property
    def sequences(self) -> tuple[str, ...] | None:
        return tuple(self.adapter.config.sequences) if self.adapter is not None else None

    def embed(self, images: Mapping[str, np.ndarray]) -> FusedEmbedding:
        """`images`: sequence name -> (H, W) slice in [0, 1], windowed per sequence."""
        if self.adapter is None:
            img, channels = channel_image(images)
            return FusedEmbedding(self.segmenter.embed(img), "channels", (CHANNELS_NOTE.format(channels=channels),))
        missing = [s for s in self.adapter.config.sequences if s not in images]
        if missing:
            raise InvalidPromptError(f"the adapter fuses {', '.join(self.adapter.config.sequences)}; missing: {', '.join(missing)}")
        embs = [self.segmenter.embed(images[s]) for s in self.adapter.config.sequences]
        shapes = {e.original_size for e in embs}
        if len(shapes) != 1:
            raise InvalidPromptError(f"sequences must be co-registered slices of one size; got {sorted(shapes)}")
        with torch.inference_mode():
            fused = self.adapter(torch.stack([e.features[0] for e in embs])[None])
        key = hashlib.sha256(("|".join(e.key for e in embs) + f"|adapter:{self.checkpoint}").encode()).hexdigest()[:40]
        emb = ImageEmbedding(features=fused, original_size=embs[0].original_size, input_size=embs[0].input_size,
                             key=key, backend=self.segmenter.version)
        note = (f"multi-sequence fusion: cross-attention adapter {self.checkpoint.name if self.checkpoint else ''} "
                f"({self.adapter.config.primary} attends to {', '.join(s for s in self.adapter.config.sequences if s != self.adapter.config.primary)})")
        return FusedEmbedding(emb, "adapter", (note,))

    def segment(self, images: Mapping[str, np.ndarray], prompt: PromptSet, multimask: bool = False) -> Segmentation:
        fused = self.embed(images)
        seg = self.segmenter.decode(fused.embedding, prompt, multimask=multimask)
        seg.notes = list(seg.notes) + list(fused.notes)
        return seg


def segment_multisequence(segmenter, images: Mapping[str, np.ndarray], prompt: PromptSet,
                          checkpoint: str | os.PathLike | None = None) -> Segmentation:
    return MultiSequenceSegmenter(segmenter, checkpoint).segment(images, prompt)
