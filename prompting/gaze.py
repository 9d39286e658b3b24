"""Gaze -> prompts: fixations (I-VT or I-DT), dwell-weighted clusters, a box proposal, live re-decoding.

Input is a stream of `GazeSample`s already mapped into slice pixels (integrations/screen_mapping.py
does scene camera -> screen -> image). Angles matter more than pixels for eye movements, so every
threshold is in degrees of visual angle and converted through `ViewingGeometry` (viewing distance,
screen pixel pitch, display zoom): the same 1 deg covers 4x more image pixels at zoom 1 than at 4.

LiteMedSAM was trained on boxes only (DESIGN.md), so fixations are turned into a BOX: the dominant
cluster (largest total dwell) loses its outliers (a glance at a neighbour), its spread, corrected for
the expected gaze error, sizes a set of candidate boxes that are decoded in one batch against the
cached embedding, and the candidate masks vote. Fixation points ride along in the PromptSet as
positive GAZE points (and rejected dwells as negative ones) for segmenters that use points; whether
they reach the decoder is a config choice (off: LiteMedSAM is box-trained).
The segmenter is passed in (no import of models/ here).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from integrations.errors import InvalidPromptError

from .promptset import Box, Point, PromptSet, PromptSource


# --------------------------------------------------------------------------------------------
# data that flows
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GazeSample:
    """One gaze sample in slice pixels (x = column, y = row) at time t (seconds, any origin)."""

    t: float
    x: float
    y: float
    worn: bool = True  # False: the glasses are off (Neon's `worn` flag)
    blink: bool = False  # inside a blink (on-device blink events or a recording's blinks.csv)
    on_image: bool = True  # False: gaze fell outside the displayed image (or no screen found)

    @property
    def usable(self) -> bool:
        return self.worn and not self.blink and self.on_image and math.isfinite(self.x) and math.isfinite(self.y)


@dataclass(frozen=True)
class Fixation:
    t_start: float
    t_end: float
    x: float  # centroid, slice pixels
    y: float
    n_samples: int
    dispersion_deg: float = 0.0
    source: str = "ivt"  # "ivt" | "idt" | "device" (on-device detector) | "recording"

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


@dataclass(frozen=True)
class ViewingGeometry:
    """How big an image pixel looks: viewing distance, screen pixel pitch, display zoom."""

    distance_mm: float = 600.0
    pixel_pitch_mm: float = 0.27
    zoom: float = 1.0  # screen pixels per image pixel

    def __post_init__(self) -> None:
        for name in ("distance_mm", "pixel_pitch_mm", "zoom"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InvalidPromptError(f"viewing geometry: {name} must be a positive number, got {v!r}.")

    @property
    def deg_per_image_px(self) -> float:
        # Exact for one pixel at the screen centre; off-centre pixels subtend slightly less (<2 %
        # within 15 deg), well below gaze accuracy.
        return math.degrees(2.0 * math.atan(self.pixel_pitch_mm * self.zoom / (2.0 * self.distance_mm)))

    @property
    def image_px_per_deg(self) -> float:
        return 1.0 / self.deg_per_image_px

    def deg_to_px(self, deg: float) -> float:
        return deg * self.image_px_per_deg

    def with_zoom(self, zoom: float) -> "ViewingGeometry":
        return replace(self, zoom=zoom)


@dataclass(frozen=True)
class FixationConfig:
    method: str = "ivt"  # "ivt" (velocity) | "idt" (dispersion)
    velocity_threshold_deg_s: float = 30.0  # I-VT: slower than this is fixating
    smoothing_samples: int = 5  # I-VT: moving-average window on positions before differencing
    dispersion_deg: float = 1.0  # I-DT: (max-min x) + (max-min y) within a fixation
    min_duration_s: float = 0.1  # both: shorter runs are not fixations
    max_gap_s: float = 0.075  # a longer run of unusable samples (blink, off-image) splits fixations
    merge_distance_deg: float = 0.5  # I-VT: neighbouring runs closer than this (and in time) merge
    merge_gap_s: float = 0.15  # covers a blink inside a fixation

    def __post_init__(self) -> None:
        if self.method not in ("ivt", "idt"):
            raise InvalidPromptError(f"fixation method must be 'ivt' or 'idt', got {self.method!r}.")
        if self.velocity_threshold_deg_s <= 0 or self.dispersion_deg <= 0 or self.min_duration_s <= 0:
            raise InvalidPromptError("fixation thresholds must be positive numbers.")


@dataclass(frozen=True)
class FixationCluster:
    fixations: tuple[Fixation, ...]
    x: float  # dwell-weighted centroid
    y: float
    dwell_s: float

    @property
    def spread_px(self) -> float:
        """Dwell-weighted RMS distance of the member fixations from the centroid."""
        if len(self.fixations) < 2:
            return 0.0
        w = np.array([f.duration for f in self.fixations])
        d2 = np.array([(f.x - self.x) ** 2 + (f.y - self.y) ** 2 for f in self.fixations])
        return float(math.sqrt(float((w * d2).sum() / max(w.sum(), 1e-9))))


# --------------------------------------------------------------------------------------------
# fixation detection
# --------------------------------------------------------------------------------------------
def _arrays(samples: Sequence[GazeSample]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = np.array([s.t for s in samples], dtype=np.float64)
    x = np.array([s.x for s in samples], dtype=np.float64)
    y = np.array([s.y for s in samples], dtype=np.float64)
    ok = np.array([s.usable for s in samples], dtype=bool)
    if len(t) > 1 and np.any(np.diff(t) < 0):
        raise InvalidPromptError("gaze samples must be in time order (timestamps go backwards).")
    return t, x, y, ok


def _segments(t: np.ndarray, ok: np.ndarray, max_gap_s: float) -> list[np.ndarray]:
    """Indices of usable samples, split wherever unusable time exceeds max_gap_s."""
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return []
    gaps = np.diff(t[idx]) > max_gap_s
    return np.split(idx, np.nonzero(gaps)[0] + 1)


def _fixation(t, x, y, sel: np.ndarray, geometry: ViewingGeometry, source: str) -> Fixation:
    xs, ys = x[sel], y[sel]
    disp = float((xs.max() - xs.min()) + (ys.max() - ys.min())) * geometry.deg_per_image_px
    return Fixation(float(t[sel[0]]), float(t[sel[-1]]), float(xs.mean()), float(ys.mean()), int(len(sel)), disp, source)


def detect_fixations_ivt(samples: Sequence[GazeSample], geometry: ViewingGeometry,
                         config: FixationConfig = FixationConfig()) -> list[Fixation]:
    """Velocity-threshold identification (Salvucci & Goldberg 2000), on smoothed positions.

    Raw 200 Hz gaze has ~0.1 deg sample-to-sample jitter, i.e. ~30 deg/s of apparent velocity: the
    positions are smoothed first so the threshold separates fixations from saccades, not noise.
    """
    t, x, y, ok = _arrays(samples)
    dpp = geometry.deg_per_image_px
    runs: list[np.ndarray] = []
    for seg in _segments(t, ok, config.max_gap_s):
        if len(seg) < 2:
            continue
        k = max(1, min(int(config.smoothing_samples), len(seg)))
        kern = np.ones(k) / k
        xs = np.convolve(np.pad(x[seg], (k // 2, k - 1 - k // 2), mode="edge"), kern, mode="valid")
        ys = np.convolve(np.pad(y[seg], (k // 2, k - 1 - k // 2), mode="edge"), kern, mode="valid")
        dt = np.gradient(t[seg])
        dt[dt <= 0] = 1e-3
        v = np.hypot(np.gradient(xs), np.gradient(ys)) * dpp / dt
        edges = np.diff(np.concatenate([[0], (v < config.velocity_threshold_deg_s).astype(np.int8), [0]]))
        runs += [seg[a:b] for a, b in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0])]
    # A blink or a few lost samples in the middle of a fixation split it into two runs at the same
    # place: merge neighbours in time and space before judging durations.
    merged: list[np.ndarray] = []
    for r in runs:
        if merged:
            prev = merged[-1]
            close_t = t[r[0]] - t[prev[-1]] <= config.merge_gap_s
            d = math.hypot(x[r].mean() - x[prev].mean(), y[r].mean() - y[prev].mean()) * dpp
            if close_t and d <= config.merge_distance_deg:
                merged[-1] = np.concatenate([prev, r])
                continue
        merged.append(r)
    return [_fixation(t, x, y, r, geometry, "ivt") for r in merged
            if t[r[-1]] - t[r[0]] >= config.min_duration_s - 1e-9]


def detect_fixations_idt(samples: Sequence[GazeSample], geometry: ViewingGeometry,
                         config: FixationConfig = FixationConfig()) -> list[Fixation]:
    """Dispersion-threshold identification (Salvucci & Goldberg 2000): a window of at least
    min_duration whose (max-min x)+(max-min y) stays under dispersion_deg, grown while it does."""
    t, x, y, ok = _arrays(samples)
    out: list[Fixation] = []
    limit_px = config.dispersion_deg * geometry.image_px_per_deg
    for seg in _segments(t, ok, config.max_gap_s):
        ts, xs, ys = t[seg], x[seg], y[seg]
        n = len(seg)
        i = 0
        while i < n:
            j = int(np.searchsorted(ts, ts[i] + config.min_duration_s - 1e-9))
            if j >= n:
                break
            disp = (xs[i:j + 1].max() - xs[i:j + 1].min()) + (ys[i:j + 1].max() - ys[i:j + 1].min())
            if disp > limit_px:
                i += 1
                continue
            # grow the window while dispersion holds (running min/max: O(n))
            x_lo, x_hi = xs[i:j + 1].min(), xs[i:j + 1].max()
            y_lo, y_hi = ys[i:j + 1].min(), ys[i:j + 1].max()
            while j + 1 < n:
                nx_lo, nx_hi = min(x_lo, xs[j + 1]), max(x_hi, xs[j + 1])
                ny_lo, ny_hi = min(y_lo, ys[j + 1]), max(y_hi, ys[j + 1])
                if (nx_hi - nx_lo) + (ny_hi - ny_lo) > limit_px:
                    break
                x_lo, x_hi, y_lo, y_hi = nx_lo, nx_hi, ny_lo, ny_hi
                j += 1
            out.append(_fixation(t, x, y, seg[i:j + 1], geometry, "idt"))
            i = j + 1
    return out


def detect_fixations(samples: Sequence[GazeSample], geometry: ViewingGeometry,
                     config: FixationConfig = FixationConfig()) -> list[Fixation]:
    if config.method == "idt":
        return detect_fixations_idt(samples, geometry, config)
    return detect_fixations_ivt(samples, geometry, config)


def fixations_on_image(fixations: Iterable[Fixation], shape: tuple[int, int]) -> list[Fixation]:
    """Drop fixations whose centroid lies outside the slice (e.g. on-device fixations off the image)."""
    h, w = shape
    return [f for f in fixations if 0 <= f.x <= w - 1 and 0 <= f.y <= h - 1]


# --------------------------------------------------------------------------------------------
# clustering
# --------------------------------------------------------------------------------------------
def _make_cluster(members: Sequence[Fixation]) -> FixationCluster:
    w = np.array([max(f.duration, 1e-3) for f in members])
    x = float(np.average([f.x for f in members], weights=w))
    y = float(np.average([f.y for f in members], weights=w))
    return FixationCluster(tuple(members), x, y, float(sum(f.duration for f in members)))


def cluster_fixations(fixations: Sequence[Fixation], radius_px: float) -> list[FixationCluster]:
    """Dwell-weighted centroid-linkage clustering: merge the two clusters whose dwell-weighted
    centroids are closest while they are within radius_px. Largest total dwell first."""
    clusters = [_make_cluster([f]) for f in fixations]
    while len(clusters) > 1:
        best, pair = None, None
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                d = math.hypot(clusters[i].x - clusters[j].x, clusters[i].y - clusters[j].y)
                if best is None or d < best:
                    best, pair = d, (i, j)
        if best is None or best > radius_px:
            break
        i, j = pair
        merged = _make_cluster(clusters[i].fixations + clusters[j].fixations)
        clusters = [c for k, c in enumerate(clusters) if k not in (i, j)] + [merged]
    return sorted(clusters, key=lambda c: (-c.dwell_s, c.x, c.y))


# --------------------------------------------------------------------------------------------
# fixations -> PromptSet (box proposals scored by the decoder)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GazePromptConfig:
    cluster_radius_deg: float = 10.0  # centroid linkage; large: one big structure gets many far-apart looks
    outlier_factor: float = 2.5  # in the dominant cluster, drop fixations > factor x median distance...
    outlier_min_deg: float = 2.0  # ...and farther than this from the dwell-weighted median
    gaze_accuracy_deg: float = 0.5  # expected gaze error: removed from the fixations' spread
    # Box half-size = k x the fixations' (error-corrected) spread, per axis and isotropic; every
    # candidate is decoded in one batch and the masks vote. k measured in bench/gaze.py: fixations
    # drawn towards a structure's middle cover only its core.
    scales: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 8.0)
    isotropic: bool = True  # also the isotropic-spread box at every scale
    min_half_deg: float = 1.0  # no box smaller than the gaze error itself
    vote: float = 0.5  # a pixel is in the mask when at least this fraction of candidates agree
    points_to_decoder: bool = False  # LiteMedSAM is box-trained; points only travel in the PromptSet
    min_dwell_s: float = 0.1
    reject_radius_deg: float = 1.5  # fixations this close to a rejected dwell are ignored


# Live mode: one box (k = 5, per axis) per update, i.e. one decoder call. The 10-box vote costs 10
# decoder calls for about the same Dice on the dev sets (bench/gaze.py prints both).
LIVE_PROMPT_CONFIG = GazePromptConfig(scales=(5.0,), isotropic=False)


@dataclass
class GazeProposal:
    prompt: PromptSet
    cluster: FixationCluster
    score: float  # agreement between the candidate masks (mean IoU with the vote), 0..1
    candidates: int  # how many boxes were decoded
    segmentation: object = None  # the voted mask in a Segmentation (from the candidate closest to it)


def _cluster_points(cluster: FixationCluster, rejected: Sequence[Point], shape) -> tuple[Point, ...]:
    h, w = shape
    total = max(cluster.dwell_s, 1e-9)
    pos = tuple(Point(float(np.clip(f.x, 0, w - 1)), float(np.clip(f.y, 0, h - 1)), True, PromptSource.GAZE,
                      float(min(1.0, f.duration / total * len(cluster.fixations))))
                for f in cluster.fixations)
    return pos + tuple(rejected)


def _box_around(cx, cy, hx, hy, shape) -> Box | None:
    h, w = shape
    x0, x1 = max(0.0, cx - hx), min(w - 1.0, cx + hx)
    y0, y1 = max(0.0, cy - hy), min(h - 1.0, cy + hy)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return Box(x0, y0, x1, y1, PromptSource.GAZE, 1.0)


def robust_core(cluster: FixationCluster, geometry: ViewingGeometry,
                config: GazePromptConfig = GazePromptConfig()) -> FixationCluster:
    """The cluster without fixations far from its dwell-weighted median (a glance at a neighbour)."""
    if len(cluster.fixations) < 3:
        return cluster
    P = np.array([[f.x, f.y] for f in cluster.fixations])
    med = np.median(P, axis=0)
    d = np.hypot(*(P - med).T)
    keep = d <= max(config.outlier_factor * float(np.median(d)), geometry.deg_to_px(config.outlier_min_deg))
    return _make_cluster([f for f, k in zip(cluster.fixations, keep) if k]) if keep.any() else cluster


def candidate_boxes(cluster: FixationCluster, shape: tuple[int, int], geometry: ViewingGeometry,
                    config: GazePromptConfig = GazePromptConfig()) -> list[Box]:
    w = np.array([max(f.duration, 1e-3) for f in cluster.fixations])
    P = np.array([[f.x, f.y] for f in cluster.fixations])
    c = (P * w[:, None]).sum(0) / w.sum()
    var = ((P - c) ** 2 * w[:, None]).sum(0) / w.sum()
    err2 = geometry.deg_to_px(config.gaze_accuracy_deg) ** 2
    sd_axis = np.sqrt(np.maximum(var - err2, 0.0))
    sd_iso = float(np.sqrt(max(var.sum() / 2 - err2, 0.0)))
    floor = geometry.deg_to_px(config.min_half_deg)
    boxes: list[Box] = []
    for k in config.scales:
        for sx, sy in ((sd_axis[0], sd_axis[1]),) + (((sd_iso, sd_iso),) if config.isotropic else ()):
            b = _box_around(c[0], c[1], max(k * sx, floor), max(k * sy, floor), shape)
            if b is not None and b not in boxes:
                boxes.append(b)
    return boxes


def propose_box(segmenter, embedding, shape: tuple[int, int], cluster: FixationCluster,
                rejected: Sequence[Point] = (), config: GazePromptConfig = GazePromptConfig(),
                geometry: ViewingGeometry | None = None) -> GazeProposal:
    """Boxes sized from the fixations' spread, decoded in one batch; the masks vote.

    Returns the voted mask's bounding box as the prompt's box (so the PromptSet alone reproduces a
    close mask) and, as the segmentation, the candidate mask closest to the vote with the voted mask.
    """
    geometry = geometry or ViewingGeometry()
    core = robust_core(cluster, geometry, config)
    boxes = candidate_boxes(core, shape, geometry, config)
    if not boxes:
        raise InvalidPromptError("the gaze cluster gives no usable box (image too small?).")
    points = _cluster_points(core, rejected, shape)
    dec_points = points if config.points_to_decoder else ()
    segs = segmenter.decode_batch(embedding, [PromptSet(points=dec_points, box=b) for b in boxes])
    masks = np.stack([s.mask for s in segs])
    # A candidate that covers a rejected dwell is out of the vote: the user said "not that".
    ok = np.array([not any(m[int(round(p.y)), int(round(p.x))] for p in rejected) for m in masks])
    if not ok.any():
        ok[:] = True
    vote = masks[ok].mean(0) >= config.vote
    inter = (masks & vote).reshape(len(masks), -1).sum(1)
    union = (masks | vote).reshape(len(masks), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[~ok] = -1
    k = int(np.argmax(iou))
    agreement = float(np.mean(iou[ok]))
    best = segs[k]
    if vote.any():
        ys, xs = np.nonzero(vote)
        box = Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), PromptSource.GAZE,
                  float(np.clip(agreement, 0, 1)))
        best.mask = vote
    else:
        box = replace(boxes[k], confidence=0.0)
    prompt = PromptSet(points=points, box=box, label="gaze").with_note(
        f"gaze: {len(core.fixations)} of {len(cluster.fixations)} fixations ({core.dwell_s * 1000:.0f} ms dwell) "
        f"around ({core.x:.0f}, {core.y:.0f}); {len(boxes)} candidate boxes voted (agreement {agreement:.2f})"
        + (f"; {len(rejected)} rejected dwell(s) as negative points" if rejected else ""))
    return GazeProposal(prompt, core, agreement, len(boxes), best)


def decoder_prompt(prompt: PromptSet, config: GazePromptConfig = GazePromptConfig()) -> PromptSet:
    """What is sent to the decoder: the box, and the gaze points only where they are known to help."""
    if config.points_to_decoder:
        return prompt
    return replace(prompt, points=())


def gaze_prompt(segmenter, embedding, shape: tuple[int, int], fixations: Sequence[Fixation],
                geometry: ViewingGeometry, rejected: Sequence[Point] = (),
                config: GazePromptConfig = GazePromptConfig()) -> GazeProposal:
    """Fixations (slice pixels) -> the dominant cluster's box proposal."""
    fx = [f for f in fixations_on_image(fixations, shape) if f.duration >= config.min_dwell_s - 1e-9]
    reject_px = geometry.deg_to_px(config.reject_radius_deg)
    fx = [f for f in fx if all(math.hypot(f.x - p.x, f.y - p.y) > reject_px for p in rejected)]
    if not fx:
        raise InvalidPromptError("no fixation on the image yet: look at the structure for a moment "
                                 "(at least 100 ms) or check that the markers around the image are visible.")
    clusters = cluster_fixations(fx, geometry.deg_to_px(config.cluster_radius_deg))
    return propose_box(segmenter, embedding, shape, clusters[0], rejected, config, geometry)


# --------------------------------------------------------------------------------------------
# live session
# --------------------------------------------------------------------------------------------
@dataclass
class GazeUpdate:
    prompt: PromptSet
    segmentation: object  # models.segmentation.Segmentation (not imported: prompting/ stays model-free)
    fixations: tuple[Fixation, ...]
    cluster: FixationCluster
    latency_ms: float  # from the call that completed the fixation set to the mask


@dataclass
class LiveGazeSession:
    """Feeds samples (or device fixations) in, re-decodes when the fixation set changes.

    The slice is encoded once (`segmenter.embed` caches it); each update only clusters and decodes,
    so updates cost a handful of decoder calls (bench/gaze.py measures the rate).
    """

    segmenter: object
    image01: np.ndarray
    geometry: ViewingGeometry
    fixation_config: FixationConfig = field(default_factory=FixationConfig)
    prompt_config: GazePromptConfig = field(default_factory=lambda: LIVE_PROMPT_CONFIG)
    max_samples: int = 200 * 60  # one minute at 200 Hz; older samples are forgotten

    def __post_init__(self) -> None:
        self.embedding = self.segmenter.embed(self.image01)
        self.shape = tuple(self.image01.shape[:2])
        self._samples: list[GazeSample] = []
        self._device_fixations: list[Fixation] = []
        self._rejected: list[Point] = []
        self._rejected_spans: list[tuple[float, float]] = []
        self._last_key: tuple | None = None
        self.last: GazeUpdate | None = None

    # -- inputs ------------------------------------------------------------------------------
    def add_samples(self, samples: Iterable[GazeSample]) -> GazeUpdate | None:
        self._samples.extend(samples)
        if len(self._samples) > self.max_samples:
            self._samples = self._samples[-self.max_samples:]
        return self.update()

    def add_fixations(self, fixations: Iterable[Fixation]) -> GazeUpdate | None:
        """Fixations from the device's own detector (Companion app >= 2.9), already in slice pixels."""
        self._device_fixations.extend(fixations)
        return self.update()

    def reject(self, x: float | None = None, y: float | None = None) -> GazeUpdate | None:
        """The user says "not this": the dominant dwell (or the given point) becomes a negative point."""
        if x is None or y is None:
            if self.last is None:
                raise InvalidPromptError("nothing to reject yet: no gaze proposal has been made.")
            x, y = self.last.cluster.x, self.last.cluster.y
            # the whole dwell goes, not only the fixations near its centre
            self._rejected_spans.extend((f.t_start, f.t_end) for f in self.last.cluster.fixations)
        h, w = self.shape
        self._rejected.append(Point(float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1)), False, PromptSource.GAZE))
        self._last_key = None
        return self.update()

    def reset(self) -> None:
        self._samples.clear()
        self._device_fixations.clear()
        self._rejected.clear()
        self._rejected_spans.clear()
        self._last_key = None
        self.last = None

    # -- state -------------------------------------------------------------------------------
    @property
    def rejected(self) -> tuple[Point, ...]:
        return tuple(self._rejected)

    def fixations(self) -> list[Fixation]:
        own = detect_fixations(self._samples, self.geometry, self.fixation_config) if self._samples else []
        return sorted(own + self._device_fixations, key=lambda f: f.t_start)

    def update(self) -> GazeUpdate | None:
        t0 = time.perf_counter()
        fx = fixations_on_image(self.fixations(), self.shape)
        fx = [f for f in fx if f.duration >= self.prompt_config.min_dwell_s - 1e-9
              and not any(f.t_start <= e and s <= f.t_end for s, e in self._rejected_spans)]
        # re-decode only when the fixation set (rounded) changed: a growing fixation moves its end
        # time every sample, its centroid barely
        key = tuple((round(f.x), round(f.y), round(f.duration, 1)) for f in fx) + (len(self._rejected),)
        if not fx or key == self._last_key:
            return None
        self._last_key = key
        try:
            prop = gaze_prompt(self.segmenter, self.embedding, self.shape, fx, self.geometry, self._rejected,
                               self.prompt_config)
        except InvalidPromptError:
            return None  # every fixation was rejected: wait for new ones
        seg = prop.segmentation
        seg.notes = list(seg.notes) + list(prop.prompt.notes)
        self.last = GazeUpdate(prop.prompt, seg, tuple(fx), prop.cluster, (time.perf_counter() - t0) * 1000.0)
        return self.last
