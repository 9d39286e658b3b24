"""A SAM-family segmenter on `segment_anything`'s Sam / PromptEncoder / MaskDecoder.

The model (weights), the transform (slice <-> model frame) and this predictor stay apart, as in
segment_anything's own predictor: swap the encoder or the resize policy, the decode path is the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam

from integrations.errors import InvalidPromptError
from prompting.promptset import PromptSet

from .cache import EmbeddingCache, content_key
from .segmentation import ImageEmbedding, Segmentation
from .transforms import SliceTransform

if TYPE_CHECKING:
    from .click_decoder import ClickReading

_IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Preprocessing:
    input_size: int  # S of the S x S encoder input
    resize: str  # "longest" | "stretch"
    normalize: str  # "unit": [0, 1] as is; "imagenet": x255 then SAM's pixel mean/std

    def describe(self) -> str:
        return f"{self.input_size}-{self.resize}-{self.normalize}"


class SamSegmenter:
    def __init__(self, name: str, sam: Sam, preprocessing: Preprocessing, cache: EmbeddingCache | None = None,
                 version: str = ""):
        self.name = name
        self.sam = sam.eval()
        self.preprocessing = preprocessing
        self.cache = cache if cache is not None else EmbeddingCache()
        self.version = version or name  # identifies weights + preprocessing in results and stores
        # Inference runtime (models/runtime.py): None = PyTorch eager on self.sam; the report says
        # which runtime is active and why (set by models.runtime.attach_runtime).
        self.runtime = None
        self.runtime_report = None
        # A click-reading twin of the decoder (models/click_decoder.py), set by the registry; None = none.
        self.click_decoder = None
        # A twin that reads the previous slice's mask beside the box (models/propagation_decoder.py), for
        # 3-D propagation; set by the registry; None = propagate with boxes alone.
        self.propagation_decoder = None

    def reads_clicks(self, prompt: PromptSet) -> bool:
        """Clicks alone (no box, no previous mask) are decoded by the click decoder when there is one:
        LiteMedSAM, trained on boxes, gives an empty mask for them (DESIGN.md)."""
        return (self.click_decoder is not None and prompt.box is None and prompt.mask_input is None
                and any(p.positive for p in prompt.points))

    def _read_logits(self, embedding: ImageEmbedding, prompts: Sequence[PromptSet], multimask: bool):
        """decode_logits for click-only prompts: the click decoder's three masks, or the one its IoU head
        rates best (its outputs are SAM's multimask ones, with no single-mask output to fall back on)."""
        transform = self.transform_for(embedding.original_size)
        read = [self.click_decoder.read_logits(embedding, p.points, transform) for p in prompts]
        low = torch.cat([lo for lo, _ in read])
        iou = torch.from_numpy(np.concatenate([np.asarray(q, np.float32) for _, q in read]))
        if multimask:
            return low, iou
        k = iou.argmax(1)
        rows = torch.arange(len(prompts))
        return low[rows, k][:, None], iou[rows, k][:, None]

    def read_clicks(self, embedding: ImageEmbedding, points) -> ClickReading | None:
        """The click decoder's three masks for these points (slice grid), or None without one."""
        if self.click_decoder is None or not any(p.positive for p in points):
            return None
        return self.click_decoder.read(embedding, points, self.transform_for(embedding.original_size))

    # -- encoder -----------------------------------------------------------------------------
    def transform_for(self, shape: tuple[int, int]) -> SliceTransform:
        return SliceTransform(tuple(int(s) for s in shape), self.preprocessing.input_size, self.preprocessing.resize)

    def _check_image(self, image01: np.ndarray) -> np.ndarray:
        img = np.asarray(image01)
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
            raise InvalidPromptError(f"a slice must be (H, W) or (H, W, 3); got shape {img.shape}.")
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if min(img.shape[:2]) < 2:
            raise InvalidPromptError(f"a slice of {img.shape[1]}x{img.shape[0]} pixels is too small to segment.")
        if not np.isfinite(img).all():
            raise InvalidPromptError("the slice contains NaN or infinite values; window it before segmenting.")
        return img.astype(np.float32, copy=False)

    def model_input(self, image01: np.ndarray) -> torch.Tensor:
        img = self._check_image(image01)
        t = self.transform_for(img.shape[:2]).image_to_model(img)
        if self.preprocessing.normalize == "imagenet":
            ih, iw = self.transform_for(img.shape[:2]).input_size
            t = t * 255.0
            t[..., :ih, :iw] = (t[..., :ih, :iw] - _IMAGENET_MEAN) / _IMAGENET_STD
        return t

    def embedding_key(self, image01: np.ndarray) -> str:
        # a reduced-precision encoder (bf16) tags its embeddings: they never mix with fp32 ones
        tag = getattr(self.runtime, "encoder_tag", "")
        return content_key(image01, self.version, self.preprocessing.describe() + (f"|{tag}" if tag else ""))

    @torch.inference_mode()
    def encode_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        if self.runtime is not None:
            return self.runtime.encode(batch)
        return self.sam.image_encoder(batch)

    def embed(self, image01: np.ndarray) -> ImageEmbedding:
        img = self._check_image(image01)
        key = self.embedding_key(img)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        transform = self.transform_for(img.shape[:2])
        features = self.encode_tensor(self.model_input(img))
        emb = ImageEmbedding(features=features, original_size=transform.original_size,
                             input_size=transform.input_size, key=key, backend=self.version)
        self.cache.put(key, emb)
        return emb

    # -- decoder -----------------------------------------------------------------------------
    def decode(self, embedding: ImageEmbedding, prompt: PromptSet, multimask: bool = False) -> Segmentation:
        return self.decode_batch(embedding, [prompt], multimask=multimask)[0]

    @torch.inference_mode()
    def decode_logits(self, embedding: ImageEmbedding, prompts: Sequence[PromptSet], multimask: bool = False,
                      screening: bool = False):
        """Batch decode. Returns (low-res logits (B, K, s, s), predicted IoU (B, K)) in the model frame.

        screening=True: the masks will only be compared with each other to pick one prompt (a
        click's box proposals), which is then decoded normally; the runtime may use a faster, less
        exact decoder for them (OpenVINO's bf16 twin on CPUs with native bf16, validated at load)."""
        if not prompts:
            raise InvalidPromptError("no prompt given.")
        if embedding.backend != self.version:
            raise ValueError(f"embedding made by {embedding.backend}, decoder is {self.version}")
        transform = SliceTransform(embedding.original_size, self.preprocessing.input_size, self.preprocessing.resize)
        for p in prompts:
            p.validate(embedding.original_size)
        prompts = [p.clipped(embedding.original_size) for p in prompts]

        by_twin = [self.reads_clicks(p) for p in prompts]
        if any(by_twin):
            if all(by_twin):
                return self._read_logits(embedding, prompts, multimask)
            idx_twin = [i for i, t in enumerate(by_twin) if t]
            idx_rest = [i for i, t in enumerate(by_twin) if not t]
            l1, q1 = self._read_logits(embedding, [prompts[i] for i in idx_twin], multimask)
            l2, q2 = self.decode_logits(embedding, [prompts[i] for i in idx_rest], multimask, screening)
            order = np.argsort(idx_twin + idx_rest)
            return torch.cat([l1, l2])[order], torch.cat([q1, q2])[order]

        has_box = [p.box is not None for p in prompts]
        if any(has_box) and not all(has_box):
            # The prompt encoder takes one layout per batch; mixed batches decode in two passes.
            idx_box = [i for i, b in enumerate(has_box) if b]
            idx_nobox = [i for i, b in enumerate(has_box) if not b]
            l1, q1 = self.decode_logits(embedding, [prompts[i] for i in idx_box], multimask, screening)
            l2, q2 = self.decode_logits(embedding, [prompts[i] for i in idx_nobox], multimask, screening)
            order = np.argsort(idx_box + idx_nobox)
            return torch.cat([l1, l2])[order], torch.cat([q1, q2])[order]

        boxes = None
        if has_box[0]:
            boxes = torch.from_numpy(np.stack([transform.box_to_model(p.box.as_array())[0] for p in prompts]))
        points = None
        n_pts = max(len(p.points) for p in prompts)
        if n_pts:
            coords = np.zeros((len(prompts), n_pts, 2), np.float32)
            labels = -np.ones((len(prompts), n_pts), np.float32)  # -1: padding, ignored by SAM
            for i, p in enumerate(prompts):
                for j, pt in enumerate(p.points):
                    # +0.5: SAM takes pixel centres, our points are pixel indices
                    coords[i, j] = transform.coords_to_model(np.array([pt.x + 0.5, pt.y + 0.5]))
                    labels[i, j] = 1.0 if pt.positive else 0.0
            points = (torch.from_numpy(coords), torch.from_numpy(labels))
        masks = None
        mask_inputs = [p.mask_input for p in prompts]
        if any(m is not None for m in mask_inputs):
            side = self.sam.prompt_encoder.mask_input_size
            filled = [np.asarray(m, np.float32).reshape(1, *side) if m is not None else np.full((1, *side), -20.0, np.float32)
                      for m in mask_inputs]
            masks = torch.from_numpy(np.stack(filled))
        if points is None and boxes is None and masks is not None:
            raise InvalidPromptError("a previous mask alone is not a prompt; add a box, click or scribble.")

        if self.runtime is not None:  # same prompts, same token selection as MaskDecoder.forward
            low_res, iou = self.runtime.decode_all(embedding.features, points, boxes, masks, screening=screening)
            keep = slice(1, None) if multimask else slice(0, 1)
            return low_res[:, keep], iou[:, keep]
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return low_res, iou

    def decode_batch(self, embedding: ImageEmbedding, prompts: Sequence[PromptSet], multimask: bool = False) -> list[Segmentation]:
        low_res, iou = self.decode_logits(embedding, prompts, multimask)
        return self._segmentations(embedding, prompts, low_res, iou, multimask)

    def decode_with_prior(self, embedding: ImageEmbedding, prompt: PromptSet, prior: np.ndarray) -> Segmentation:
        """A box prompt and a mask on the slice grid that the structure here continues from (the previous
        slice's, in 3-D propagation), decoded by the propagation decoder. Without one, or without a box,
        the prompt alone is decoded."""
        if self.propagation_decoder is None or prompt.box is None:
            return self.decode(embedding, prompt)
        if embedding.backend != self.version:
            raise ValueError(f"embedding made by {embedding.backend}, decoder is {self.version}")
        prior = np.asarray(prior, dtype=bool)
        if prior.shape != tuple(embedding.original_size):
            raise InvalidPromptError(f"the prior mask is {prior.shape[::-1]} pixels; the slice is "
                                     f"{tuple(embedding.original_size)[::-1]}.")
        prompt.validate(embedding.original_size)
        prompt = prompt.clipped(embedding.original_size)
        from .propagation_decoder import prior_in_model_frame

        transform = self.transform_for(embedding.original_size)
        frame = prior_in_model_frame(prior, transform, self.propagation_decoder.mask_input_side)
        low_res, iou = self.propagation_decoder.decode_logits(embedding.features, transform.box_to_model(prompt.box.as_array()), frame)
        return self._segmentations(embedding, [prompt], low_res, iou, False)[0]

    def _segmentations(self, embedding: ImageEmbedding, prompts: Sequence[PromptSet], low_res: torch.Tensor,
                       iou: torch.Tensor, multimask: bool) -> list[Segmentation]:
        transform = SliceTransform(embedding.original_size, self.preprocessing.input_size, self.preprocessing.resize)
        # numpy from here on: torch ops this small cost more in thread-pool wake-ups than in work
        low_np, iou_np = low_res.numpy(), iou.numpy()
        full = transform.logits_to_image_np(low_np)  # (B, K, H, W)
        out = []
        for i, p in enumerate(prompts):
            scores = iou_np[i]
            order = np.argsort(-scores) if multimask else np.arange(len(scores))
            best = int(order[0])
            masks = full[i] > 0
            seg = Segmentation(
                mask=masks[best],
                predicted_iou=float(scores[best]),
                low_res_logits=low_np[i, best : best + 1].copy(),
                backend=self.version,
                label=p.label,
                candidates=[(masks[k], float(scores[k])) for k in order] if multimask else [],
                notes=list(p.notes),
            )
            out.append(seg)
        return out
