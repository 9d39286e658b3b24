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
- intensity: the mean intensity inside the mask jumps from the previous slice's, or has drifted away
  from the prompted slice's (it is now a different tissue: the rule that stops the slow slide of an
  atlas region into its neighbour, e.g. amygdala -> hippocampus/cortex, on Colin27).
By default (`stop_rule="learned"`) these signals, with the sweep's history, go to a learned stop
model (models/propagation_stop.py) that predicts how much of the new mask is still the structure;
the hand rules decide only where the model's inputs fall outside what it was fitted on, and the
area floor always applies. The slice that triggers a stop is not part of the result.
The next box is the previous mask's box + a small margin ("mask" rule, the default). By default
(`prior`) the next slice is decoded from that box AND the previous slice's mask by the segmenter's
propagation decoder (models/propagation_decoder.py: LiteMedSAM's decoder fine-tuned for this step; a
box alone leaves the mask a little inside it, and the shortfall carries from slice to slice), and a
second chain decoded from boxes alone runs beside it: where the decoder's chain stops, the box
chain's slices carry on until its own stop (`prior_handover`). Without a propagation decoder (or with
`prior=False`) slices are decoded from boxes alone. Measured worse on Colin27 and kept as options
(bench/volume.py, docs/volume.md): a box re-inflated by the gap the model left
inside the anchor's box ("calibrated", damped), the previous logits as LiteMedSAM's own mask prompt
(it was trained on boxes only), and zoomed crops for small structures (`zoom`). A prompt
given on any slice re-anchors the propagation there. Finally the two other views check the 3-D mask
and fill in, within 2 mm of it, what the slice-by-slice boxes missed (models/cross_view.py;
`cross_view=None` turns this off). Any view (axial, coronal, sagittal) works: the volume is resliced
exactly (models/volume_views.py) and the 3-D mask goes back to the source grid with its geometry.

Embeddings come from the segmenter's content-keyed cache, so a volume encoded once (by
`clinseg precompute`, the app's background precomputer, or an earlier run with a disk cache)
propagates at decoder speed; a running `VolumePrecomputer` can also be passed in as `embed`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from integrations.errors import InvalidPromptError
from integrations.volume import Volume
from integrations.windowing import apply_window, volume_window
from prompting.promptset import Box, PromptSet, PromptSource

from .cross_view import CrossViewConfig, CrossViewReport, ProgressCallback, refine_across_views
from .propagation_stop import STOP_MODEL_PATH, STOP_MODEL_PRIOR_PATH, load_stop_model, stop_features
from .segmentation import ImageEmbedding, Segmentation
from .volume_views import VolumeView, reslice, slice_axis
from .zoom import ZoomPolicy, _shift, crop_window




@dataclass(frozen=True)
class PropagationConfig:
    """When to go on and when to stop. Defaults chosen on Colin27 (bench/volume.py)."""

    # Enlarge the previous mask's box by this fraction of its size, each side. Wider boxes undo more of
    # the shrinking (the model draws its mask inside the box) but leak; measured, 0.05 kept
    # (docs/volume.md: 0.10-0.20 with the learned stop won on the training regions, lost on bench/volume.py's).
    box_margin: float = 0.05
    box_margin_px: float = 2.0  # ... plus this many pixels (a 1-pixel object still gets a usable box)
    # The first slice after a prompted one: its box (before the margins) lies this far from the prompted
    # slice's mask box towards the prompt's own box (0: the mask's box, as for every later slice; 1: the
    # prompt's). LiteMedSAM draws its mask inside the box, sometimes well inside (a hippocampus: 77 px of
    # a 184-px section), and every later box, built from masks, inherits the shortfall; the user's box
    # says how far the structure reaches. Halfway, because the whole prompt box let the first mask grow
    # past what the stop models were fitted on (docs/volume.md, stop 33).
    anchor_box_weight: float = 0.5
    min_area_px: int = 4
    min_area_fraction: float = 0.01  # of the anchor slice's area
    min_predicted_iou: float = 0.5
    min_stability: float = 0.5
    min_consistency: float = 0.2  # Dice between consecutive slices' masks
    max_growth: float = 2.0  # area ratio to the previous slice
    max_intensity_shift: float = 0.25  # |mean inside mask - previous slice's|, in window units [0, 1]
    max_slices: int | None = None  # per direction; None = to the volume's edge
    # ... and the median against the ANCHOR's: a slow drift into a neighbouring tissue passes the
    # slice-to-slice test one small step at a time. None = off.
    max_anchor_intensity_shift: float | None = 0.08
    # A box-prompted LiteMedSAM draws its mask some way inside the box; a box built from that mask is
    # smaller again, and so on: the mask shrinks slice after slice. The anchor shows how far inside
    # the box the model draws for THIS structure; "calibrated" adds that gap back to each side.
    box_rule: str = "mask"  # "calibrated" or "mask" (previous mask's box + margins only)
    max_calibration: float = 0.5  # cap on the per-side gap, as a fraction of the mask box's size
    mask_prompt: bool = False  # also pass the previous slice's low-res logits as SAM's mask input
    # Decode each next slice with the previous slice's mask as a prior beside the box, through the
    # segmenter's propagation decoder (models/propagation_decoder.py) when it has one; the stop model
    # fitted on that decoder's traces then decides. With the handover below, 0.629 vs 0.601 for boxes
    # alone on bench/volume.py (docs/volume.md).
    prior: bool = True
    # With `prior`, a second chain of slices decoded from boxes alone runs beside the decoder's (one more
    # decode per slice, each chain's boxes from its own masks, each with the stop model fitted on its
    # decoder). Where the decoder's chain stops, the box chain's slices carry on until its own stop
    # model stops it: the decoder's stop model, fitted on regions the decoder was trained on, ends
    # some structures early, and past that point the box chain's masks measured better than the
    # decoder's (docs/volume.md). False: the decoder's chain alone.
    prior_handover: bool = True
    # Anatomy changes little between neighbouring slices: the box's width/height may change by at most
    # this fraction (+1 px) of the previous box's per slice, its centre move by at most max_box_shift
    # of its size. This damps the grow-shrink feedback between box and mask. None = undamped.
    max_box_change: float | None = 0.1
    max_box_shift: float = 0.15
    # Small structures: decode on a re-encoded crop around the box (models/zoom.py); the crop window
    # is kept from slice to slice while the box stays well inside it, so neighbouring slices share a
    # frame (and the previous logits stay meaningful as a mask prompt). None = whole slices only.
    zoom: ZoomPolicy | None = None
    # "learned": past the area floor, the bundled stop model (models/propagation_stop.py) decides
    # whether a slice is still the structure, the hand rules above only where its inputs fall outside
    # what it was fitted on; "hand": the hand rules alone.
    stop_rule: str = "learned"
    # After propagating, the two other views check the 3-D mask and fill in what it missed near its
    # edges (models/cross_view.py). None = the propagated slices alone.
    cross_view: CrossViewConfig | None = CrossViewConfig()

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
    median_intensity: float  # its median: robust to the 1-px rim of background a small mask carries
    anchor: bool  # a user/localiser prompt, not a propagated box
    box: tuple[float, float, float, float]
    # the learned stop rule's predicted share of this mask inside the structure (None: not asked)
    stop_score: float | None = None


@dataclass
class StopEvent:
    direction: int  # +1 towards higher slice indices, -1 towards lower
    index: int  # the slice that was rejected (or the volume edge + direction)
    reason: str


@dataclass
class _Chain:
    """One sequence of decodes through a sweep: each slice's box (and prior) comes from the chain's own
    previous mask. `stop` is set at the first slice its stop rule rejected."""
    prior: bool  # decoded through the propagation decoder (else from boxes alone)
    anchor: SliceRecord
    prev: SliceRecord
    mask: np.ndarray
    logits: np.ndarray
    history: list[SliceRecord]
    stop: StopEvent | None = None

    @classmethod
    def start(cls, prior: bool, anchor: SliceRecord, mask: np.ndarray, logits: np.ndarray) -> "_Chain":
        return cls(prior, anchor, anchor, mask, logits, [anchor])

    def advance(self, rec: SliceRecord, seg: Segmentation) -> None:
        self.prev, self.mask, self.logits = rec, seg.mask, seg.low_res_logits
        self.history.append(rec)


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
    cross_view: CrossViewReport | None = None  # what the other views added (None: not asked for)

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
        """(first, last) slice of the propagation's view holding the mask."""
        if not self.mask.any():
            return None
        axis = slice_axis(self.view)
        held = np.nonzero(self.mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        return int(held.min()), int(held.max())

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


class StickyZoom:
    """Zoomed decoding whose crop window is reused while the box stays inside its central part.

    One instance per sweep. Used by propagation and by bench/volume.py's per-slice baseline, so both
    go through the same decode path."""

    def __init__(self, policy: ZoomPolicy, keep_margin: float = 0.15):
        self.policy = policy
        self.keep_margin = keep_margin  # the box must stay this fraction of the window's side away from its edges
        self.window: tuple[int, int, int, int] | None = None

    def window_for(self, box: Box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        w = self.window
        if w is not None:
            side = max(w[2] - w[0], w[3] - w[1])
            m = self.keep_margin * side
            fits = (box.x0 >= w[0] + m or w[0] == 0) and (box.y0 >= w[1] + m or w[1] == 0) and \
                   (box.x1 <= w[2] - 1 - m or w[2] == shape[1]) and (box.y1 <= w[3] - 1 - m or w[3] == shape[0])
            big_enough = max(box.width, box.height) + 1 <= side / (self.policy.context * 0.6)
            small_enough = max(box.width, box.height) + 1 >= side / (self.policy.context * 1.6)
            if fits and big_enough and small_enough:
                return w
        self.window = crop_window(box, shape, self.policy)
        return self.window

    def decode(self, segmenter, image01: np.ndarray, prompt: PromptSet) -> tuple[Segmentation, ImageEmbedding]:
        """Decode `prompt` (with a box) on the crop; the mask comes back on the slice grid."""
        shape = image01.shape[:2]
        prompt = prompt.clipped(shape)
        previous = self.window
        x0, y0, x1, y1 = self.window_for(prompt.box, shape)
        crop = np.asarray(image01[y0:y1, x0:x1], dtype=np.float32)
        if self.policy.renormalise:
            # as models/zoom.py: stretch only a crop with real contrast (stretched flat air invents structures)
            lo, hi = float(crop.min()), float(crop.max())
            if hi > lo and hi - lo >= self.policy.min_contrast * float(image01.max() - image01.min()):
                crop = (crop - lo) / (hi - lo)
        emb = segmenter.embed(crop)
        shifted = _shift(prompt, x0, y0, crop.shape[:2])
        if prompt.mask_input is not None and previous == self.window:
            shifted = shifted.with_mask_input(prompt.mask_input)  # same frame as the previous slice's logits
        seg = segmenter.decode(emb, shifted)
        full = np.zeros(shape, bool)
        full[y0:y1, x0:x1] = seg.mask
        seg.mask = full
        seg.zoom = (x0, y0, x1, y1)
        return seg, emb


def _damped(box: tuple[float, float, float, float], prev: tuple[float, float, float, float], change: float,
            shift: float) -> tuple[float, float, float, float]:
    """`box` with its size kept within (1 +- change) x prev's (+-1 px) and its centre within shift x prev's size."""
    out = []
    for lo, hi, plo, phi in ((box[0], box[2], prev[0], prev[2]), (box[1], box[3], prev[1], prev[3])):
        psize = phi - plo + 1.0
        size = float(np.clip(hi - lo + 1.0, psize * (1 - change) - 1.0, psize * (1 + change) + 1.0))
        pc = (plo + phi) / 2.0
        centre = float(np.clip((lo + hi) / 2.0, pc - shift * psize - 1.0, pc + shift * psize + 1.0))
        out.append((centre - (size - 1.0) / 2.0, centre + (size - 1.0) / 2.0))
    (x0, x1), (y0, y1) = out
    return x0, y0, x1, y1


def vanished(c: PropagationConfig, rec: SliceRecord, anchor: SliceRecord) -> str | None:
    """The area floor, which every stop rule applies: the structure is gone."""
    floor = max(c.min_area_px, c.min_area_fraction * anchor.area_px)
    if rec.area_px < floor:
        return f"object ended: mask area {rec.area_px} px < {floor:.0f} px"
    return None


def hand_stop_reason(c: PropagationConfig, rec: SliceRecord, prev: SliceRecord, anchor: SliceRecord,
                     decoder_scores: bool = True) -> str | None:
    """Why the hand rules stop at `rec` (None: go on). `decoder_scores=False` leaves out the predicted-IoU
    and stability floors: they were set on LiteMedSAM's own scores, and the propagation decoder's IoU
    head, trained against the labels, rates an atlas region's mask lower (0.4-0.5) without it being worse."""
    gone = vanished(c, rec, anchor)
    if gone is not None:
        return gone
    if decoder_scores and rec.predicted_iou < c.min_predicted_iou:
        return f"low predicted IoU {rec.predicted_iou:.2f} < {c.min_predicted_iou}"
    if decoder_scores and rec.stability < c.min_stability:
        return f"uncertain mask: stability {rec.stability:.2f} < {c.min_stability}"
    if rec.consistency < c.min_consistency:
        return f"inconsistent with the previous slice: Dice {rec.consistency:.2f} < {c.min_consistency}"
    if prev.area_px > 0 and rec.area_px > c.max_growth * prev.area_px:
        return f"mask leaked: area grew x{rec.area_px / prev.area_px:.1f} (> x{c.max_growth})"
    shift = abs(rec.intensity - prev.intensity)
    if shift > c.max_intensity_shift:
        return f"different tissue: mean intensity moved by {shift:.2f} (> {c.max_intensity_shift})"
    drift = abs(rec.median_intensity - anchor.median_intensity)
    if c.max_anchor_intensity_shift is not None and drift > c.max_anchor_intensity_shift:
        return (f"different tissue: median intensity {rec.median_intensity:.2f} vs {anchor.median_intensity:.2f} on the "
                f"prompted slice (> {c.max_anchor_intensity_shift})")
    return None


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
        self.logits: dict[int, np.ndarray] = {}
        self.records: dict[int, SliceRecord] = {}
        self.stops: list[StopEvent] = []
        self.done = 0
        # per anchor slice: (left, top, right, bottom) gap between the prompt box and its mask's box,
        # as fractions of the mask box's width/height (the model's own under-segmentation here)
        self.calibration: dict[int, tuple[float, float, float, float]] = {}
        self.zoomer = StickyZoom(config.zoom or ZoomPolicy())
        self.anchor_window: dict[int, tuple[int, int, int, int] | None] = {}
        if config.stop_rule not in ("learned", "hand"):
            raise ValueError(f"unknown stop_rule {config.stop_rule!r}; use 'learned' or 'hand'")
        if not 0.0 <= config.anchor_box_weight <= 1.0:
            raise ValueError(f"anchor_box_weight must lie in [0, 1] (0: the anchor's mask box, 1: the prompt's box); "
                             f"got {config.anchor_box_weight}")

    def image(self, z: int) -> np.ndarray:
        return apply_window(self.view.volume.voxels[z], self.bounds)

    @property
    def uses_prior(self) -> bool:
        # the decoder was fitted on whole slices; zoomed crops keep to boxes (and the box stop model)
        return self.config.prior and self.config.zoom is None and getattr(self.segmenter, "propagation_decoder", None) is not None

    @property
    def uses_guide(self) -> bool:
        """A chain from boxes alone runs beside the decoder's and carries on where the decoder's stops."""
        return self.uses_prior and self.config.prior_handover

    def segment(self, z: int, prompt: PromptSet, prior: np.ndarray | None = None,
                report: bool = True) -> tuple[Segmentation, np.ndarray]:
        img = self.image(z)
        zoom = self.config.zoom
        if zoom is not None and prompt.box is not None and zoom.applies(prompt.clipped(img.shape[:2]).box, img.shape[:2]):
            seg, _ = self.zoomer.decode(self.segmenter, img, prompt)
        else:
            if self.zoomer.window is not None and prompt.mask_input is not None:
                prompt = prompt.with_mask_input(None)  # the previous logits are in a crop's frame
            self.zoomer.window = None  # the next zoomed slice picks a fresh window
            emb = self.embed(z) if self.embed is not None else self.segmenter.embed(img)
            if prior is not None and self.uses_prior:
                seg = self.segmenter.decode_with_prior(emb, prompt.with_mask_input(None), prior)
            else:
                seg = self.segmenter.decode(emb, prompt)
        seg.slice_index = z
        if not report:
            return seg, img
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
            intensity=float(inside.mean()) if inside.size else 0.0,
            median_intensity=float(np.median(inside)) if inside.size else 0.0, anchor=anchor,
            box=(float(box.x0), float(box.y0), float(box.x1), float(box.y1)),
        )
        return rec

    def verdict(self, chain: _Chain, rec: SliceRecord, mask: np.ndarray, img: np.ndarray) -> str | None:
        """Why `chain` stops at `rec` (None: go on), by the configured stop rule."""
        if self.config.stop_rule == "learned":
            return self.learned_stop(chain, rec, mask, img)
        return hand_stop_reason(self.config, rec, chain.prev, chain.anchor, decoder_scores=not chain.prior)

    def learned_stop(self, chain: _Chain, rec: SliceRecord, mask: np.ndarray, img: np.ndarray) -> str | None:
        """The stop model's verdict (the one fitted on this chain's decoder), or the hand rules' where the
        model is out of its domain."""
        anchor = chain.anchor
        gone = vanished(self.config, rec, anchor)
        if gone is not None:
            return gone
        model = load_stop_model(str(STOP_MODEL_PRIOR_PATH if chain.prior else STOP_MODEL_PATH))
        vol = self.view.volume
        feats = stop_features(rec, chain.history, mask, img, abs(rec.index - anchor.index) * vol.spacing[2],
                              math.sqrt(vol.pixel_area_mm2))
        if not model.in_domain(feats):
            return hand_stop_reason(self.config, rec, chain.prev, anchor, decoder_scores=not chain.prior)
        rec.stop_score = model.predict(feats)
        if rec.stop_score < model.threshold:
            return (f"learned stop: predicted share of the mask inside the structure {rec.stop_score:.2f} "
                    f"< {model.threshold:.2f}")
        return None

    def anchor(self, z: int) -> SliceRecord | None:
        prompt = self.seeds[z]
        if not prompt.label and self.label:
            prompt = PromptSet(points=prompt.points, box=prompt.box, mask_input=prompt.mask_input, label=self.label,
                               notes=prompt.notes)
        self.zoomer.window = None
        seg, img = self.segment(z, prompt)
        self.anchor_window[z] = self.zoomer.window
        box = prompt.box or Box(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        rec = self.record(z, seg, img, None, True, box)
        self.masks[z] = seg.mask
        self.logits[z] = seg.low_res_logits
        self.records[z] = rec
        if seg.is_empty:
            self.stops.append(StopEvent(0, z, "the prompt on this slice gave an empty mask"))
            return None
        x0, y0, x1, y1 = _mask_box(seg.mask)
        w, h = x1 - x0 + 1.0, y1 - y0 + 1.0
        cap = self.config.max_calibration
        gaps = ((x0 - box.x0) / w, (y0 - box.y0) / h, (box.x1 - x1) / w, (box.y1 - y1) / h)
        self.calibration[z] = tuple(float(min(max(g, 0.0), cap)) for g in gaps)
        return rec

    def next_box(self, prev: SliceRecord, prev_mask: np.ndarray, anchor_z: int) -> Box:
        c = self.config
        mask_box = _mask_box(prev_mask)
        if prev.anchor and c.anchor_box_weight:
            w = c.anchor_box_weight  # prev.box is the prompt's box on an anchor
            mask_box = tuple(int(round((1.0 - w) * m + w * b)) for m, b in zip(mask_box, prev.box))
        shape = self.view.volume.shape[1:]
        if c.box_rule == "mask":
            return enlarge_box(mask_box, shape, c.box_margin, c.box_margin_px)
        if c.box_rule != "calibrated":
            raise ValueError(f"unknown box_rule {c.box_rule!r}; use 'calibrated' or 'mask'")
        x0, y0, x1, y1 = mask_box
        w, h = x1 - x0 + 1.0, y1 - y0 + 1.0
        gl, gt, gr, gb = (max(g, c.box_margin) for g in self.calibration[anchor_z])
        m = c.box_margin_px
        cand = (x0 - gl * w - m, y0 - gt * h - m, x1 + gr * w + m, y1 + gb * h + m)
        if c.max_box_change is not None:
            cand = _damped(cand, prev.box, c.max_box_change, c.max_box_shift)
        hh, ww = shape
        return Box(max(0.0, cand[0]), max(0.0, cand[1]), min(ww - 1.0, cand[2]), min(hh - 1.0, cand[3]),
                   source=PromptSource.REFINEMENT)

    def step(self, chain: _Chain, z: int, report: bool = True) -> tuple[SliceRecord, Segmentation, np.ndarray]:
        """Decode slice `z` of `chain` from the box (and, through the decoder, the mask) of its previous slice."""
        box = self.next_box(chain.prev, chain.mask, chain.anchor.index)
        prompt = PromptSet(box=box, label=self.label)
        if self.config.mask_prompt:
            prompt = prompt.with_mask_input(chain.logits)
        seg, img = self.segment(z, prompt, prior=chain.mask if chain.prior else None, report=report)
        return self.record(z, seg, img, chain.mask, False, box), seg, img

    def sweep(self, z0: int, direction: int, anchor: SliceRecord) -> None:
        """Propagate from anchor slice `z0` towards `direction` until the stop rule ends the structure.

        `main` is the chain whose slices are kept (the decoder's with `prior`, else boxes alone); with a
        guide (the box chain beside the decoder's), the guide's slices are kept once `main` has stopped,
        until the guide stops too."""
        self.zoomer.window = self.anchor_window.get(z0)  # both directions start from the anchor's frame

        def chains(a: SliceRecord) -> tuple[_Chain, _Chain | None]:
            m, lg = self.masks[a.index], self.logits[a.index]
            return (_Chain.start(self.uses_prior, a, m, lg),
                    _Chain.start(False, a, m, lg) if self.uses_guide else None)

        main, guide = chains(anchor)
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
                main, guide = chains(rec)
                z += direction
                steps += 1
                continue
            kept = None
            for chain in (main, guide):
                if chain is None or chain.stop is not None:
                    continue
                rec, seg, img = self.step(chain, z, report=kept is None)
                reason = self.verdict(chain, rec, seg.mask, img)
                if reason is not None:
                    chain.stop = StopEvent(direction, z, reason)
                    continue
                chain.advance(rec, seg)
                kept = kept or (rec, seg)
            if kept is None:
                self.stops.append(main.stop if guide is None else self.handed_over(direction, z, main.stop, guide.stop))
                return
            rec, seg = kept
            self.masks[z] = seg.mask
            self.logits[z] = seg.low_res_logits
            self.records[z] = rec
            z += direction
            steps += 1
        self.stops.append(StopEvent(direction, z, "reached the edge of the volume"))

    @staticmethod
    def handed_over(direction: int, z: int, own: StopEvent, guide: StopEvent) -> StopEvent:
        ahead = (guide.index - own.index) * direction  # > 0: the box chain went further from the anchor
        if ahead == 0:
            what = f"both chains stopped at slice {own.index}: the decoder's ({own.reason}), the box chain ({guide.reason})"
        elif ahead > 0:
            what = (f"the decoder's chain stopped at slice {own.index} ({own.reason}); the box chain's slices "
                    f"went on to slice {guide.index}, where it stopped ({guide.reason})")
        else:
            what = (f"the box chain stopped at slice {guide.index} ({guide.reason}); the decoder's chain went on "
                    f"to slice {own.index}, where it stopped ({own.reason})")
        return StopEvent(direction, z, what)

    def run(self) -> None:
        for z in sorted(self.seeds):
            if z in self.records:
                continue
            rec = self.anchor(z)
            if rec is None:
                continue
            self.sweep(z, -1, rec)
            self.sweep(z, +1, rec)


def _decoder_note(prop: _Propagator) -> str:
    if prop.uses_prior:
        then = ("; where its stop rule stopped, a chain decoded from boxes alone beside it carried on to its own stop"
                if prop.uses_guide else "")
        return ("next slices decoded with the previous slice's mask as a prior (propagation decoder "
                f"{prop.segmenter.propagation_decoder.source}){then}")
    why = ("prior=False" if not prop.config.prior else "zoomed crops: the decoder reads whole slices" if prop.config.zoom
           else "the segmenter has no propagation decoder")
    return f"next slices decoded from boxes alone ({why})"


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
    refined = None
    if config.cross_view is not None:
        mask, refined = refine_across_views(segmenter, volume, mask, bounds, config.cross_view, vv.name, label, progress)
    records = [prop.records[z] for z in sorted(prop.records)]
    result = VolumeSegmentation(mask=mask, volume=volume, view=vv.name, slices=records, stops=prop.stops, label=label,
                                backend=getattr(segmenter, "version", getattr(segmenter, "name", "")), cross_view=refined)
    rng = result.slice_range
    if rng is not None:
        result.notes.append(f"{vv.name} slices {rng[0]}..{rng[1]} from {len(seeds)} prompted slice(s); "
                            f"{result.volume_ml:.2f} mL")
    result.notes.append(_decoder_note(prop))
    if refined is not None:
        result.notes.extend(refined.notes())
    for s in prop.stops:
        if s.direction != 0:
            result.notes.append(f"stopped {'up' if s.direction > 0 else 'down'} at {vv.name} slice {s.index}: {s.reason}")
        else:
            result.notes.append(f"{vv.name} slice {s.index}: {s.reason}")
    return result
