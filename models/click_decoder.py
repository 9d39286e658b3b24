"""A second reader for clicks: LiteMedSAM's prompt encoder + mask decoder fine-tuned to read clicks.

LiteMedSAM was trained on boxes, so a click alone decodes to an empty mask and prompting/clicks.py
turns clicks into box proposals chosen by a learned ranker. A twin of the prompt encoder and mask
decoder fine-tuned on clicks (bench/train_click_decoder.py, on images disjoint from the benchmarks)
answers a click directly, in one decode, with SAM's three nested masks. For a structure large enough
for the model frame it answers the click itself (`prompting.clicks.read_answer`: the segmenter decodes
a prompt of clicks alone with it, `SamSegmenter.reads_clicks`): on atlas parcels and the whole brain
its answer beats the ranker's pick among box proposals. Small structures (nuclei: a few embedding
cells) and crisp outlines that LiteMedSAM's box decoder draws better still go through the proposals,
where its three masks are evidence the ranker weighs (each proposal's IoU with each of them,
`prompting.clicks.click_candidates`).

The checkpoint is bundled (`models/click_decoder.pt`: int8 changes to LiteMedSAM's own decoder weights,
4.2 MB, masks at IoU >= 0.99 with the float32 twin's). `$CLINSEG_CLICK_DECODER` names
another checkpoint (`bench/train_click_decoder.py train --out`), or `off` to read clicks without it.
When the segmenter runs on OpenVINO, the twin does too (`use_openvino`: exported once to ONNX beside
the segmenter's exports, keyed by its weights; a reading takes ~85-100 ms in PyTorch eager on 2 cores,
~40 ms on OpenVINO f32, ~18 ms bf16): its first reading runs both and keeps OpenVINO only if every
mask agrees with PyTorch's (IoU >= 0.97).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .decoder_checkpoint import (DELTA_FORMAT, TwinDecoder, checkpoint_states, configured_checkpoint, load_twin,  # noqa: F401 (re-exported)
                                 mask_iou, save_checkpoint)

BUNDLED_CHECKPOINT = Path(__file__).with_name("click_decoder.pt")
CHECKPOINT_ENV = "CLINSEG_CLICK_DECODER"


@dataclass(frozen=True)
class ClickReading:
    """The twin's answer to a set of clicks, on the slice grid."""
    masks: np.ndarray  # (3, H, W) bool: SAM's three nested outputs
    iou: np.ndarray  # (3,) the twin's own quality estimates

    @property
    def best(self) -> np.ndarray:
        return self.masks[int(np.argmax(self.iou))]


class ClickDecoder(TwinDecoder):
    """Fine-tuned copies of a segmenter's prompt encoder and mask decoder (the encoder is shared)."""

    NAME = "click decoder"
    EXPORT_NAME = "click_decoder"
    DYNAMIC_AXES = {"point_coords": {1: "points"}, "point_labels": {1: "points"}}

    def __init__(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, source: str):
        super().__init__(prompt_encoder, mask_decoder, source)
        # the last reading: a click is read to decide how to answer it, then decoded (the same reading)
        self._last: tuple | None = None

    def example_prompt(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.tensor([[[60.0, 70.0], [10.0, 10.0]]]), torch.tensor([[1.0, 0.0]]), torch.zeros(1)

    def use_openvino(self, threads: int | None = None, export_root: str | os.PathLike | None = None) -> str:
        """Compile the twin with OpenVINO (bf16 where native, else f32); on any failure PyTorch stays,
        and the reason is returned."""
        self._last = None  # a reading by the other runtime is not this one's
        return super().use_openvino(threads, export_root)

    def _read_openvino(self, features: torch.Tensor, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        side = self.prompt_encoder.mask_input_size
        # segment_anything's PromptEncoder pads clicks without a box with one "not a point" (label -1)
        coords = np.concatenate([coords, np.zeros((1, 1, 2), np.float32)], 1)
        labels = np.concatenate([labels, -np.ones((1, 1), np.float32)], 1)
        low_res, iou = self._graph.run({
            "image_embeddings": np.ascontiguousarray(features.float().numpy()),
            "point_coords": np.ascontiguousarray(coords, np.float32), "point_labels": np.ascontiguousarray(labels, np.float32),
            "mask_input": np.zeros((1, 1, *side), np.float32), "has_mask_input": np.zeros(1, np.float32)})
        return low_res[:, 1:], iou[:, 1:]  # SAM's three multimask tokens

    @classmethod
    def from_checkpoint(cls, sam, path: str | os.PathLike) -> "ClickDecoder":
        """Copies of `sam`'s prompt encoder and mask decoder with the checkpoint's weights (strict)."""
        pe, md = load_twin(sam, path, "click decoder", CHECKPOINT_ENV)
        return cls(pe, md, str(path))

    def read(self, embedding, points: Sequence, transform) -> ClickReading:
        """Points (x, y, positive on the slice grid) against `embedding` -> the three masks on that grid."""
        low_res, iou = self.read_logits(embedding, points, transform)
        with torch.inference_mode():
            masks = transform.logits_to_image(low_res[0][:, None])[:, 0].numpy() > 0
        return ClickReading(masks, np.asarray(iou[0], np.float64))

    @torch.inference_mode()
    def read_logits(self, embedding, points: Sequence, transform) -> tuple[torch.Tensor, np.ndarray]:
        """The same reading in the model frame: low-res logits (1, 3, s, s) and the IoU head's (1, 3)."""
        key = (getattr(embedding, "key", None), tuple((float(p.x), float(p.y), bool(p.positive)) for p in points))
        last = self._last
        if key[0] is not None and last is not None and last[0] == key:
            return last[1].clone(), last[2].copy()
        low_res, iou = self._read_logits(embedding, points, transform)
        self._last = (key, low_res, np.asarray(iou))
        return low_res.clone(), np.asarray(iou).copy()

    def _read_logits(self, embedding, points: Sequence, transform) -> tuple[torch.Tensor, np.ndarray]:
        xy = transform.coords_to_model(np.array([[p.x + 0.5, p.y + 0.5] for p in points], np.float32))[None]
        labels = np.array([[1.0 if p.positive else 0.0 for p in points]], np.float32)
        if self._graph is not None:
            low_res, iou = self._read_openvino(embedding.features, xy, labels)
            low_res = torch.from_numpy(np.ascontiguousarray(low_res, np.float32))
            if self._validated:
                return low_res, np.asarray(iou)
            ref_low, ref_iou = self._read_torch(embedding.features, xy, labels)
            agreement = min(mask_iou(a > 0, b > 0) for a, b in zip(low_res[0].numpy(), ref_low[0].numpy()))
            if agreement >= self.MIN_AGREEMENT:
                self._validated = True
                return low_res, np.asarray(iou)
            self.step_aside(agreement)
            return ref_low, ref_iou
        return self._read_torch(embedding.features, xy, labels)

    def _read_torch(self, features: torch.Tensor, xy: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        sparse, dense = self.prompt_encoder(points=(torch.from_numpy(xy), torch.from_numpy(labels)), boxes=None, masks=None)
        low_res, iou = self.mask_decoder(image_embeddings=features.float(), image_pe=self.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
        return low_res, iou.numpy()


def click_decoder_for(sam, name: str) -> ClickDecoder | None:
    """The click decoder a backend gets: the bundled one for LiteMedSAM unless $CLINSEG_CLICK_DECODER
    says otherwise; none for other backends unless a checkpoint is named."""
    path = configured_checkpoint(CHECKPOINT_ENV, BUNDLED_CHECKPOINT, name)
    return None if path is None else ClickDecoder.from_checkpoint(sam, path)
