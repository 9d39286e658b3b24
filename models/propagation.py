"""Slice propagation: from a prompt on one slice (or a few), segment a structure through a volume.

The mask found on a slice gives the box prompt for its neighbour (slightly enlarged, because the
structure may grow), slice after slice, in both directions, until the object ends. "Ends" is
decided from what the model says about its own answer and from how the answer changes, because a
box-prompted SAM always segments *something* inside a box:
- area: the mask vanishes or falls below a fraction of the anchor's area;
- predicted IoU: the decoder's own quality estimate drops;
- stability (uncertainty): the mask changes a lot when the logit threshold moves by +-1;
- consistency: the mask barely overlaps the previous slice's mask (it jumped to something else),
  or it suddenly grows (it leaked into a neighbour);
- intensity: the mean intensity inside the mask jumps (it is now a different tissue).
The slice that triggers a stop is not part of the result. A prompt given on any slice re-anchors the
propagation there. Any view (axial, coronal, sagittal) works: the volume is resliced exactly
(models/volume_views.py) and the 3-D mask goes back to the source grid with its geometry.

Embeddings come from the segmenter's content-keyed cache, so a volume encoded once (by
`clinseg precompute`, the app's background precomputer, or an earlier run with a disk cache)
propagates at decoder speed; a running `VolumePrecomputer` can also be passed in as `embed`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from integrations.errors import InvalidPromptError
from integrations.volume import Volume
from integrations.windowing import apply_window, volume_window
from prompting.promptset import Box, PromptSet, PromptSource

from .segmentation import ImageEmbedding, Segmentation
from .volume_views import VolumeView, reslice


# progress(done, total, message): done/total count slices decoded against an upper bound.
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PropagationConfig:
    """When to go on and when to stop. Defaults chosen on Colin27 (bench/volume.py)."""

    box_margin: float = 0.05  # enlarge the previous mask's box by this fraction of its size, each side
    box_margin_px: float = 2.0  # ... plus this many pixels (a 1-pixel object still gets a usable box)
    min_area_px: int = 4
    min_area_fraction: float = 0.01  # of the anchor slice's area
    min_predicted_iou: float = 0.5
    min_stability: float = 0.5
    min_consistency: float = 0.2  # Dice between consecutive slices' masks
    max_growth: float = 2.0  # area ratio to the previous slice
    max_intensity_shift: float = 0.25  # |mean inside mask - previous slice's|, in window units [0, 1]
    max_slices: int | None = None  # per direction; None = to the volume's edge

    def describe(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SliceRecord:
    index: int  # slice index in the propagation's view
    area_px: int
    predicted_iou: float
    stability: float
    consistency: float  # Dice with the previous slice's mask (1.0 on anchors)
    intensity: float  # mean windowed intensity inside the mask
    anchor: bool  # a user/localiser prompt, not a propagated box
    box: tuple[float, float, float, float]


@dataclass
class StopEvent:
    direction: int  # +1 towards higher slice indices, -1 towards lower
    index: int  # the slice that was rejected (or the volume edge + direction)
    reason: str


@dataclass
class VolumeSegmentation:
    """A 3-D result on the source volume's grid, with how it was obtained."""

    mask: np.ndarray  # (z, y, x) bool on the SOURCE volume grid
    volume: Volume  # the source volume (geometry for writing)
    view: str
    slices: list[SliceRecord] = field(default_factory=list)
    stops: list[StopEvent] = field(default_factory=list)
    label: str = ""
    backend: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def voxel_count(self) -> int:
        return int(self.mask.sum())

    @property
    def volume_ml(self) -> float:
        return self.voxel_count * self.volume.voxel_volume_ml

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    @property
    def slice_range(self) -> tuple[int, int] | None:
        """(first, last) view slice holding the mask."""
        if not self.slices:
            return None
        idx = [s.index for s in self.slices if s.area_px > 0]
        return (min(idx), max(idx)) if idx else None

    def as_volume(self) -> Volume:
        """The mask as a uint8 Volume with the source geometry (write it with integrations.mask_io)."""
        return self.volume.with_voxels(self.mask.astype(np.uint8))

    def summary(self) -> dict:
        return {
            "label": self.label,
            "view": self.view,
            "voxels": self.voxel_count,
            "volume_ml": round(self.volume_ml, 3),
            "slice_range": list(self.slice_range) if self.slice_range else None,
            "slices": len(self.slices),
            "stops": [{"direction": s.direction, "slice": s.index, "reason": s.reason} for s in self.stops],
            "notes": list(self.notes),
        }


def stability_score(low_res_logits: np.ndarray, offset: float = 1.0) -> float:
    """IoU of the mask at logit thresholds +offset and -offset (SAM's stability score). 1.0 = sure."""
    lg = np.asarray(low_res_logits).reshape(-1)
    hi = int((lg > offset).sum())
    lo = int((lg > -offset).sum())
    return 1.0 if lo == 0 else hi / lo


def enlarge_box(box: tuple[int, int, int, int], shape: tuple[int, int], margin: float, margin_px: float) -> Box:
    x0, y0, x1, y1 = box
    mx = margin * (x1 - x0 + 1) + margin_px
    my = margin * (y1 - y0 + 1) + margin_px
    h, w = shape
    return Box(max(0.0, x0 - mx), max(0.0, y0 - my), min(w - 1.0, x1 + mx), min(h - 1.0, y1 + my),
               source=PromptSource.REFINEMENT)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


class _Propagator:
    def __init__(self, segmenter, view: VolumeView, bounds: tuple[float, float], seeds: Mapping[int, PromptSet],
                 config: PropagationConfig, progress: ProgressCallback | None, label: str,
                 embed: Callable[[int], ImageEmbedding] | None = None):
        self.segmenter = segmenter
        self.view = view
        self.bounds = bounds
        self.seeds = dict(seeds)
        self.config = config
        self.progress = progress
        self.label = label
        self.embed = embed
        self.n = view.volume.num_slices
        self.masks: dict[int, np.ndarray] = {}
        self.records: dict[int, SliceRecord] = {}
        self.stops: list[StopEvent] = []
        self.done = 0

    def image(self, z: int) -> np.ndarray:
        return apply_window(self.view.volume.voxels[z], self.bounds)

    def segment(self, z: int, prompt: PromptSet) -> tuple[Segmentation, np.ndarray]:
        img = self.image(z)
        emb = self.embed(z) if self.embed is not None else self.segmenter.embed(img)
        seg = self.segmenter.decode(emb, prompt)
        seg.slice_index = z
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.n, f"{self.view.name} slice {z}: {seg.area_px} px")
        return seg, img

    def record(self, z: int, seg: Segmentation, img: np.ndarray, prev_mask: np.ndarray | None, anchor: bool,
               box: Box) -> SliceRecord:
        grey = img if img.ndim == 2 else img.mean(axis=2)
        inside = grey[seg.mask]
        rec = SliceRecord(
            index=z, area_px=seg.area_px, predicted_iou=float(seg.predicted_iou),
            stability=stability_score(seg.low_res_logits),
            consistency=1.0 if prev_mask is None else _dice(seg.mask, prev_mask),
            intensity=float(inside.mean()) if inside.size else 0.0, anchor=anchor,
            box=(float(box.x0), float(box.y0), float(box.x1), float(box.y1)),
        )
        return rec

    def stop_reason(self, rec: SliceRecord, prev: SliceRecord, anchor: SliceRecord) -> str | None:
        c = self.config
        floor = max(c.min_area_px, c.min_area_fraction * anchor.area_px)
        if rec.area_px < floor:
            return f"object ended: mask area {rec.area_px} px < {floor:.0f} px"
        if rec.predicted_iou < c.min_predicted_iou:
            return f"low predicted IoU {rec.predicted_iou:.2f} < {c.min_predicted_iou}"
        if rec.stability < c.min_stability:
            return f"uncertain mask: stability {rec.stability:.2f} < {c.min_stability}"
        if rec.consistency < c.min_consistency:
            return f"inconsistent with the previous slice: Dice {rec.consistency:.2f} < {c.min_consistency}"
        if prev.area_px > 0 and rec.area_px > c.max_growth * prev.area_px:
            return f"mask leaked: area grew x{rec.area_px / prev.area_px:.1f} (> x{c.max_growth})"
        shift = abs(rec.intensity - prev.intensity)
        if shift > c.max_intensity_shift:
            return f"different tissue: mean intensity moved by {shift:.2f} (> {c.max_intensity_shift})"
        return None

    def anchor(self, z: int) -> SliceRecord | None:
        prompt = self.seeds[z]
        if not prompt.label and self.label:
            prompt = PromptSet(points=prompt.points, box=prompt.box, mask_input=prompt.mask_input, label=self.label,
                               notes=prompt.notes)
        seg, img = self.segment(z, prompt)
        box = prompt.box or Box(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        rec = self.record(z, seg, img, None, True, box)
        self.masks[z] = seg.mask
        self.records[z] = rec
        if seg.is_empty:
            self.stops.append(StopEvent(0, z, "the prompt on this slice gave an empty mask"))
            return None
        return rec

    def sweep(self, z0: int, direction: int, anchor: SliceRecord) -> None:
        prev = anchor
        z = z0 + direction
        steps = 0
        limit = self.config.max_slices
        while 0 <= z < self.n:
            if z in self.records:  # reached a slice done from another anchor
                return
            if limit is not None and steps >= limit:
                self.stops.append(StopEvent(direction, z, f"max_slices={limit} reached"))
                return
            if z in self.seeds:  # a prompt here re-anchors
                rec = self.anchor(z)
                if rec is None:
                    return
                anchor = prev = rec
                z += direction
                steps += 1
                continue
            box = enlarge_box(_mask_box(self.masks[prev.index]), self.view.volume.shape[1:], self.config.box_margin,
                              self.config.box_margin_px)
            seg, img = self.segment(z, PromptSet(box=box, label=self.label))
            rec = self.record(z, seg, img, self.masks[prev.index], False, box)
            reason = self.stop_reason(rec, prev, anchor)
            if reason is not None:
                self.stops.append(StopEvent(direction, z, reason))
                return
            self.masks[z] = seg.mask
            self.records[z] = rec
            prev = rec
            z += direction
            steps += 1
        self.stops.append(StopEvent(direction, z, "reached the edge of the volume"))

    def run(self) -> None:
        for z in sorted(self.seeds):
            if z in self.records:
                continue
            rec = self.anchor(z)
            if rec is None:
                continue
            self.sweep(z, -1, rec)
            self.sweep(z, +1, rec)


def _check_seeds(seeds: Mapping[int, PromptSet], view: VolumeView) -> dict[int, PromptSet]:
    if not seeds:
        raise InvalidPromptError("propagation needs a prompt on at least one slice.")
    out = {}
    n = view.volume.num_slices
    for z, prompt in seeds.items():
        z = int(z)
        if not 0 <= z < n:
            raise InvalidPromptError(f"slice {z} does not exist in the {view.name} view; it has slices 0..{n - 1}.")
        prompt.validate(view.volume.shape[1:])
        if prompt.box is None:
            # LiteMedSAM was trained on boxes only; a click alone gives an empty mask (DESIGN.md).
            raise InvalidPromptError(f"the prompt on slice {z} has no box; propagation starts from a box "
                                     "(draw one, or turn clicks/gaze/text into a box first).")
        out[z] = prompt
    return out


def propagate(
    segmenter,
    volume: Volume,
    seeds: Mapping[int, PromptSet],
    view: str = "axial",
    window: str | tuple[float, float] | None = None,
    config: PropagationConfig | None = None,
    progress: ProgressCallback | None = None,
    label: str = "",
    embed: Callable[[int], ImageEmbedding] | None = None,
) -> VolumeSegmentation:
    """Segment one structure through `volume` from box prompts on one or more slices of `view`.

    `seeds` maps a slice index of the view to its prompt (slice pixels of that view, see
    `models.volume_views.reslice`). `window` is a window name, explicit (low, high) bounds, or None
    for the modality's default; it is computed once over the whole volume so slices agree.
    `embed(z)`, e.g. a running `models.precompute.VolumePrecomputer(...).embedding` over the same
    volume and window, supplies axial embeddings from a background worker; by default slices are
    embedded through `segmenter.embed` (its content-keyed cache).
    """
    config = config or PropagationConfig()
    vv = reslice(volume, view)
    seeds = _check_seeds(seeds, vv)
    bounds = tuple(window) if isinstance(window, tuple) else volume_window(volume, window)
    if embed is not None and vv.name != "axial":
        raise ValueError("`embed` (a background precomputer's axial slices) only serves the axial view")
    prop = _Propagator(segmenter, vv, bounds, seeds, config, progress, label, embed)
    prop.run()

    stack = np.zeros(vv.volume.shape, dtype=bool)
    for z, m in prop.masks.items():
        if prop.records[z].area_px > 0:
            stack[z] = m
    mask = vv.to_source(stack)
    records = [prop.records[z] for z in sorted(prop.records)]
    result = VolumeSegmentation(mask=mask, volume=volume, view=vv.name, slices=records, stops=prop.stops, label=label,
                                backend=getattr(segmenter, "version", getattr(segmenter, "name", "")))
    rng = result.slice_range
    if rng is not None:
        result.notes.append(f"{vv.name} slices {rng[0]}..{rng[1]} from {len(seeds)} prompted slice(s); "
                            f"{result.volume_ml:.2f} mL")
    for s in prop.stops:
        if s.direction != 0:
            result.notes.append(f"stopped {'up' if s.direction > 0 else 'down'} at {vv.name} slice {s.index}: {s.reason}")
        else:
            result.notes.append(f"{vv.name} slice {s.index}: {s.reason}")
    return result
