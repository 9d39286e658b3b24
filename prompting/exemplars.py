"""Exemplar library: segmentations the user accepted, reused to find the same structure in new images.

PerSAM-style (Zhang et al. 2023, "Personalize Segment Anything with One Shot"): the accepted mask,
brought onto the image encoder's feature grid (64 x 64 for SAM/LiteMedSAM), weights a masked average
of the image embedding -> a prototype vector for the concept; a ring around the mask gives a
background prototype. On a new image, the cosine similarity of every feature cell with each gives
two maps; cells more similar to the target than to its surroundings, connected to the strongest
such cell, give the box, and the target similarity there, mapped through [SIM_FLOOR, SIM_GOOD],
the confidence.

Exemplars are keyed by the target's display name ("Hippocampus_L", "left kidney", "tumour") and by
the backend that made the embedding (prototypes of different encoders are not comparable). The
library persists to a folder (one .npz per exemplar), so accepted segmentations accumulate across
sessions. Nothing here imports `models/`: callers pass embeddings in (`ImageEmbedding`-like objects
with `.features (1, C, h, w)`, `.original_size`, `.input_size`, `.backend`).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .promptset import Box, PromptSource

SIM_FLOOR, SIM_GOOD = 0.35, 0.75
POSITION_SIGMA = 0.15  # of the image size: deformed subjects move structures by < ~10 %


@dataclass(frozen=True)
class Exemplar:
    concept: str
    backend: str
    prototype: np.ndarray  # (C,) unit vector
    background: np.ndarray  # (C,) unit vector: the mask's surroundings (a ring of 2x its size)
    size_frac: tuple[float, float]  # accepted mask's box (width / W, height / H): a size prior
    centre_frac: tuple[float, float]  # its centre (x / W, y / H): a position prior (left vs right putamen
    # look alike; where they are tells them apart)
    created: float = 0.0


@dataclass(frozen=True)
class ExemplarMatch:
    concept: str
    box: Box | None
    confidence: float
    peak_similarity: float
    similarity: np.ndarray  # (h, w) on the feature grid (valid region only)
    exemplars: int  # how many exemplars voted


def _features(embedding) -> np.ndarray:
    f = embedding.features
    f = f.detach().cpu().float().numpy() if hasattr(f, "detach") else np.asarray(f, np.float32)
    return f[0]  # (C, h, w)


def _valid_cells(embedding, grid: tuple[int, int]) -> tuple[int, int]:
    """Feature rows/cols that cover image content (the rest is the model's zero padding).

    Both resize policies fill the square input along the longest side, so the input side S is
    max(input_size) and one feature cell spans S / grid input pixels.
    """
    gh, gw = grid
    ih, iw = embedding.input_size
    side = max(ih, iw, 1)
    return max(1, min(gh, int(np.ceil(ih * gh / side)))), max(1, min(gw, int(np.ceil(iw * gw / side))))


def _mask_to_grid(mask: np.ndarray, embedding, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each valid feature cell covered by the mask, on the (h, w) feature grid."""
    from skimage.transform import resize

    vh, vw = _valid_cells(embedding, grid)
    out = np.zeros(grid, np.float32)
    out[:vh, :vw] = resize(np.asarray(mask, np.float32), (vh, vw), order=1, anti_aliasing=True)
    return out


def prototype(embedding, mask: np.ndarray) -> np.ndarray:
    """Masked average of the embedding over `mask` (H, W), as a unit vector (C,)."""
    f = _features(embedding)
    w = _mask_to_grid(mask, embedding, f.shape[1:])
    if w.sum() < 1e-3:
        raise ValueError("the mask is empty or too small to make an exemplar")
    v = (f * w[None]).sum((1, 2)) / w.sum()
    return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)


def background_prototype(embedding, mask: np.ndarray) -> np.ndarray:
    """Masked average over the mask's surroundings: a ring as wide as the mask's box, minus the mask."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    ys, xs = np.nonzero(mask)
    r = max(3, int(0.5 * max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)))
    ring = ndimage.binary_dilation(mask, iterations=r) & ~mask
    if not ring.any():
        ring = ~mask
    f = _features(embedding)
    w = _mask_to_grid(ring, embedding, f.shape[1:])
    v = (f * w[None]).sum((1, 2)) / max(w.sum(), 1e-6)
    return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)


def similarity_map(embedding, proto: np.ndarray) -> np.ndarray:
    """Cosine similarity of each valid feature cell with the prototype, (vh, vw)."""
    f = _features(embedding)
    vh, vw = _valid_cells(embedding, f.shape[1:])
    f = f[:, :vh, :vw]
    n = np.linalg.norm(f, axis=0) + 1e-8
    return np.tensordot(proto, f, axes=(0, 0)) / n


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "concept"


class ExemplarLibrary:
    """Accepted segmentations as prototypes; `folder` (optional) persists them."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self._items: list[Exemplar] = []
        if self.folder and self.folder.exists():
            self._load()

    def __len__(self) -> int:
        return len(self._items)

    def concepts(self) -> set[str]:
        return {e.concept for e in self._items}

    def has(self, concept: str, backend: str | None = None) -> bool:
        return any(e.concept == concept and (backend is None or e.backend == backend) for e in self._items)

    def add(self, concept: str, embedding, mask: np.ndarray) -> Exemplar:
        """Make an exemplar from an accepted mask on an embedded slice (and save it if persistent)."""
        mask = np.asarray(mask, bool)
        if mask.shape != tuple(embedding.original_size):
            raise ValueError(f"mask {mask.shape} does not match the embedded slice {tuple(embedding.original_size)}")
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise ValueError("an empty mask cannot become an exemplar")
        h, w = mask.shape
        ex = Exemplar(concept, embedding.backend, prototype(embedding, mask), background_prototype(embedding, mask),
                      ((xs.max() - xs.min() + 1) / w, (ys.max() - ys.min() + 1) / h),
                      ((xs.max() + xs.min()) / 2 / w, (ys.max() + ys.min()) / 2 / h), time.time())
        self._items.append(ex)
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            stem = f"{_safe(concept)}-{len(self._items):04d}"
            np.savez(self.folder / f"{stem}.npz", prototype=ex.prototype, background=ex.background,
                     meta=json.dumps({"concept": concept, "backend": ex.backend, "size_frac": list(ex.size_frac),
                                        "centre_frac": list(ex.centre_frac), "created": ex.created}))
        return ex

    def _load(self) -> None:
        for p in sorted(self.folder.glob("*.npz")):
            with np.load(p) as z:
                meta = json.loads(str(z["meta"]))
                self._items.append(Exemplar(meta["concept"], meta["backend"], z["prototype"].astype(np.float32),
                                            z["background"].astype(np.float32),
                                            tuple(meta["size_frac"]), tuple(meta["centre_frac"]),
                                            float(meta.get("created", 0.0))))

    def localise(self, concept: str, embedding) -> ExemplarMatch | None:
        """Box of `concept` in the embedded image, or None when there is no exemplar for it (this backend)."""
        items = [e for e in self._items if e.concept == concept and e.backend == embedding.backend]
        if not items:
            return None
        proto = _unit(np.mean([e.prototype for e in items], axis=0))
        back = _unit(np.mean([e.background for e in items], axis=0))
        sim = similarity_map(embedding, proto)
        # Nearest-prototype vote: cells more like the target than like its surroundings.
        contrast = sim - similarity_map(embedding, back)
        prior = _position_prior(contrast.shape, np.mean([e.centre_frac for e in items], axis=0))
        peak_at = np.unravel_index(int(np.argmax(np.where(contrast > 0, contrast * prior, contrast))), contrast.shape)
        peak = float(sim[peak_at])
        conf = float(np.clip((peak - SIM_FLOOR) / (SIM_GOOD - SIM_FLOOR), 0.0, 1.0))
        if contrast[peak_at] <= 0:  # nothing looks more like the target than like its background
            return ExemplarMatch(concept, None, 0.0, peak, sim, len(items))
        box = _region_box(contrast > 0, peak_at, embedding, np.mean([e.size_frac for e in items], axis=0), conf)
        return ExemplarMatch(concept, box, conf if box is not None else 0.0, peak, sim, len(items))


def _position_prior(shape: tuple[int, int], centre_frac, sigma_frac: float = POSITION_SIGMA) -> np.ndarray:
    """Gaussian weight around where the exemplars were, in image fractions (same framing assumed)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    d2 = ((xx + 0.5) / w - centre_frac[0]) ** 2 + ((yy + 0.5) / h - centre_frac[1]) ** 2
    return np.exp(-d2 / (2 * sigma_frac ** 2))


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)


def _region_box(inside: np.ndarray, peak_at, embedding, size_frac, confidence: float) -> Box | None:
    """Box (image pixels) of the connected region of `inside` cells around the peak.

    Its extent is clamped to 0.5x-2x the exemplar's size, because feature cells are coarse (4+
    pixels) and similar-looking neighbours can merge in.
    """
    from scipy import ndimage

    lab, _ = ndimage.label(inside)
    region = lab == lab[peak_at]
    ys, xs = np.nonzero(region)
    H, W = embedding.original_size
    vh, vw = inside.shape
    sy, sx = H / vh, W / vw  # image pixels per valid feature cell
    x0, x1 = xs.min() * sx, (xs.max() + 1) * sx - 1
    y0, y1 = ys.min() * sy, (ys.max() + 1) * sy - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw = float(np.clip(x1 - x0 + 1, 0.5 * size_frac[0] * W, 2.0 * size_frac[0] * W))
    bh = float(np.clip(y1 - y0 + 1, 0.5 * size_frac[1] * H, 2.0 * size_frac[1] * H))
    x0, x1 = max(0.0, cx - bw / 2), min(W - 1.0, cx + bw / 2)
    y0, y1 = max(0.0, cy - bh / 2), min(H - 1.0, cy + bh / 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return Box(float(x0), float(y0), float(x1), float(y1), PromptSource.LOCALISER, confidence)
