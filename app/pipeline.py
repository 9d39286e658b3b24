"""Orchestration shared by the CLI, the app and batch jobs: study -> window -> embed -> decode."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from integrations.errors import InvalidPromptError
from integrations.volume import Volume
from integrations.windowing import slice_image, volume_window
from models.segmentation import Segmentation
from models.zoom import ZoomPolicy, segment_adaptive
from prompting.promptset import PromptSet


@dataclass
class SliceSession:
    """One slice of one study prepared for interactive segmentation (encoded once)."""

    volume: Volume
    slice_index: int
    bounds: tuple[float, float]
    image01: np.ndarray

    @staticmethod
    def open(volume: Volume, slice_index: int | None = None, window: str | None = None) -> "SliceSession":
        z = volume.num_slices // 2 if slice_index is None else int(slice_index)
        if not 0 <= z < volume.num_slices:
            raise InvalidPromptError(f"slice {z} does not exist; the study has slices 0..{volume.num_slices - 1}.")
        bounds = volume_window(volume, window)
        return SliceSession(volume, z, bounds, slice_image(volume, z, bounds))


def segment(segmenter, session: SliceSession, prompt: PromptSet, multimask: bool = False) -> Segmentation:
    """Interactive path: decode against the slice's cached embedding (milliseconds once encoded)."""
    emb = segmenter.embed(session.image01)
    seg = segmenter.decode(emb, prompt, multimask=multimask)
    seg.slice_index = session.slice_index
    return seg


def segment_best(segmenter, session: SliceSession, prompt: PromptSet, zoom: ZoomPolicy | None = ZoomPolicy()) -> Segmentation:
    """One-shot path (CLI, batch; the app's "Sharpen" runs its zoom step, app.actions.sharpen): also tries a zoomed re-encode for small targets."""
    seg = segment_adaptive(segmenter, session.image01, prompt, zoom)
    seg.slice_index = session.slice_index
    return seg
