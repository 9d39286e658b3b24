"""A decoder for the next slice of a 3-D propagation: LiteMedSAM's prompt encoder + mask decoder
fine-tuned to read the previous slice's mask beside the box.

Box propagation under-segments: LiteMedSAM draws a little inside each box, the next box comes from
that mask, and the shortfall carries from slice to slice (docs/volume.md). Fed the previous mask as
SAM's dense mask prompt, LiteMedSAM (trained on boxes alone) does worse, not better. This twin of its
prompt encoder and mask decoder was fine-tuned (bench/train_propagation_decoder.py, on deformed
subjects and atlas regions disjoint from bench/volume.py's) on exactly the propagation step: the
neighbouring slice's mask (LiteMedSAM's own or the label's, often eroded by 1-3 px) as the prior,
the box around it (+5 % + 2 px, propagation's own box) as the prompt, the label on this slice as
the target, and an empty target where the structure has ended. It learns how far the structure
reaches past an under-drawn prior and that a structure can end. Propagation uses it by default
(`PropagationConfig.prior`; `clinseg segment-3d --boxes-only` turns it off), with a chain decoded from
boxes alone beside it that carries on where the decoder's own stop rule ends a structure: alone the
decoder drew fuller masks but stopped early and tied with boxes alone on the volume benchmark; with
that handover it gains (docs/volume.md).

The prior goes in as a binary mask in the model frame, +-`PRIOR_LOGIT` (what the training fed; the
previous decode's raw logits are not used: a prior may come from a zoomed crop or a user's edit).
The checkpoint is bundled (`models/propagation_decoder.pt`, int8 changes to LiteMedSAM's decoder
weights, models/decoder_checkpoint.py); `$CLINSEG_PROPAGATION_DECODER` names another checkpoint, or
`off` to propagate with boxes alone. Other backends have none unless a checkpoint is named.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .decoder_checkpoint import TwinDecoder, configured_checkpoint, load_twin, mask_iou
from .transforms import SliceTransform

BUNDLED_CHECKPOINT = Path(__file__).with_name("propagation_decoder.pt")
CHECKPOINT_ENV = "CLINSEG_PROPAGATION_DECODER"
PRIOR_LOGIT = 8.0


def prior_in_model_frame(mask: np.ndarray, transform: SliceTransform, side: int) -> np.ndarray:
    """A slice-grid mask as the decoder's (side, side) mask input: area-resized to the model frame's
    content, padded as background, binarised to +-PRIOR_LOGIT."""
    import cv2

    ih, iw = transform.input_size
    small = cv2.resize(np.asarray(mask, np.float32), (iw, ih), interpolation=cv2.INTER_AREA) > 0.5
    frame = np.zeros((transform.target, transform.target), bool)
    frame[:ih, :iw] = small
    if side != transform.target:
        frame = cv2.resize(frame.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) > 0.5
    return np.where(frame, PRIOR_LOGIT, -PRIOR_LOGIT).astype(np.float32)


class PropagationDecoder(TwinDecoder):
    """Fine-tuned copies of a segmenter's prompt encoder and mask decoder (the image encoder is shared).

    Compiled by OpenVINO in f32 (a brain through Colin27: 8.2 s against 11.3 s in PyTorch, the same
    masks; bf16 was faster, 7.1 s, but each slice's small differences carried into the next one's
    prior: Dice 0.967 with PyTorch's 3-D mask)."""

    NAME = "propagation decoder"
    EXPORT_NAME = "propagation_decoder"
    PRECISION = "f32"

    def example_prompt(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.tensor([[[10.0, 10.0], [60.0, 70.0]]]), torch.tensor([[2.0, 3.0]]), torch.ones(1)

    @classmethod
    def from_checkpoint(cls, sam, path: str | os.PathLike) -> "PropagationDecoder":
        pe, md = load_twin(sam, path, "propagation decoder", CHECKPOINT_ENV)
        return cls(pe, md, str(path))

    @property
    def mask_input_side(self) -> int:
        return int(self.prompt_encoder.mask_input_size[0])

    @torch.inference_mode()
    def decode_logits(self, features: torch.Tensor, box_model: np.ndarray, prior: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One box (x0, y0, x1, y1 in the model frame) and its prior (`prior_in_model_frame`) ->
        low-res logits (1, 1, s, s) and the IoU head's estimate (1, 1)."""
        if self._graph is None:
            return self._decode_torch(features, box_model, prior)
        # the box as SAM's prompt encoder sends it: two corner points labelled 2 and 3
        low_res, iou = self._graph.run({
            "image_embeddings": np.ascontiguousarray(features.float().numpy()),
            "point_coords": np.asarray(box_model, np.float32).reshape(1, 2, 2),
            "point_labels": np.array([[2.0, 3.0]], np.float32),
            "mask_input": np.asarray(prior, np.float32).reshape(1, 1, *prior.shape[-2:]),
            "has_mask_input": np.ones(1, np.float32)})
        low_res = torch.from_numpy(np.ascontiguousarray(low_res[:, :1], np.float32))  # the single-mask token
        iou = torch.from_numpy(np.ascontiguousarray(iou[:, :1], np.float32))
        if self._validated:
            return low_res, iou
        ref_low, ref_iou = self._decode_torch(features, box_model, prior)
        agreement = mask_iou(low_res.numpy() > 0, ref_low.numpy() > 0)
        if agreement >= self.MIN_AGREEMENT:
            self._validated = True
            return low_res, iou
        self.step_aside(agreement)
        return ref_low, ref_iou

    def _decode_torch(self, features: torch.Tensor, box_model: np.ndarray, prior: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = torch.as_tensor(np.asarray(box_model, np.float32).reshape(1, 4))
        masks = torch.as_tensor(np.asarray(prior, np.float32).reshape(1, 1, *prior.shape[-2:]))
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=masks)
        return self.mask_decoder(image_embeddings=features.float(), image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


def propagation_decoder_for(sam, name: str) -> PropagationDecoder | None:
    """The propagation decoder a backend gets: the bundled one for LiteMedSAM unless
    $CLINSEG_PROPAGATION_DECODER says otherwise; none for other backends unless a checkpoint is named."""
    path = configured_checkpoint(CHECKPOINT_ENV, BUNDLED_CHECKPOINT, name)
    return None if path is None else PropagationDecoder.from_checkpoint(sam, path)
