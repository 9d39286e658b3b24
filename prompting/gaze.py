"""Gaze -> prompts: fixations (I-VT or I-DT), dwell-weighted clusters, a box proposal, live re-decoding.

Input is a stream of `GazeSample`s already mapped into slice pixels (integrations/screen_mapping.py
does scene camera -> screen -> image). Angles matter more than pixels for eye movements, so every
threshold is in degrees of visual angle and converted through `ViewingGeometry` (viewing distance,
screen pixel pitch, display zoom): the same 1 deg covers 4x more image pixels at zoom 1 than at 4.

LiteMedSAM was trained on boxes only (DESIGN.md), so fixations are turned into a BOX: candidate boxes
around the dominant cluster are decoded against the cached embedding and scored by how well the mask
explains the fixations; the winner's own bounding box is decoded once more. Fixation points ride
along in the PromptSet as positive GAZE points (and rejected dwells as negative ones) for segmenters
that use points; whether they are passed to the decoder is a config choice measured in bench/gaze.py.
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
    cluster_radius_deg: float = 3.0
    reject_radius_deg: float = 1.5  # fixations this close to a rejected dwell are ignored
    scales: tuple[float, ...] = (1.0, 1.6, 2.5, 4.0, 6.4, 10.0)  # candidate box half-sizes x base
    min_half_px: float = 4.0
    refine: bool = True  # decode once more with the winning mask's own bounding box
    points_to_decoder: bool = False  # LiteMedSAM is box-trained; points measured to hurt (bench/gaze.py)
    min_dwell_s: float = 0.1


@dataclass
class GazeProposal:
    prompt: PromptSet
    cluster: FixationCluster
    score: float
    candidates: int  # how many boxes were decoded
    segmentation: object = None  # the winning decode (same prompt as decoder_prompt(prompt))


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


def _score(mask: np.ndarray, predicted_iou: float, box: Box, cluster: FixationCluster,
           rejected: Sequence[Point]) -> float:
    """How well a candidate mask explains the gaze: dwell inside the mask, not clipped by its box,
    no rejected dwell inside, decoder confident."""
    if not mask.any():
        return -1.0
    h, w = mask.shape
    inside = 0.0
    for f in cluster.fixations:
        xi, yi = int(round(min(max(f.x, 0), w - 1))), int(round(min(max(f.y, 0), h - 1)))
        # a 3x3 neighbourhood: a fixation on the boundary still counts
        if mask[max(0, yi - 1):yi + 2, max(0, xi - 1):xi + 2].any():
            inside += f.duration
    frac_in = inside / max(cluster.dwell_s, 1e-9)
    # A mask that runs along its box's edges was cut by the box: the box is too small.
    x0, y0, x1, y1 = (int(round(v)) for v in (box.x0, box.y0, box.x1, box.y1))
    edge = np.concatenate([mask[y0, x0:x1 + 1], mask[y1, x0:x1 + 1], mask[y0:y1 + 1, x0], mask[y0:y1 + 1, x1]])
    # edges on the image border are not cuts
    border = np.concatenate([np.full(x1 - x0 + 1, y0 == 0), np.full(x1 - x0 + 1, y1 == h - 1),
                             np.full(y1 - y0 + 1, x0 == 0), np.full(y1 - y0 + 1, x1 == w - 1)])
    cut = float(edge[~border].mean()) if (~border).any() else 0.0
    neg = sum(1 for p in rejected if mask[int(round(p.y)), int(round(p.x))])
    return float(frac_in * (1.0 - cut) * max(predicted_iou, 0.05) * (0.3 ** neg))


def propose_box(segmenter, embedding, shape: tuple[int, int], cluster: FixationCluster,
                rejected: Sequence[Point] = (), config: GazePromptConfig = GazePromptConfig(),
                geometry: ViewingGeometry | None = None) -> GazeProposal:
    """Candidate boxes around the cluster (several sizes, decoded in one batch), best by `_score`,
    then (config.refine) the winner's mask bounding box decoded once more."""
    h, w = shape
    xs = np.array([f.x for f in cluster.fixations])
    ys = np.array([f.y for f in cluster.fixations])
    # the fixations' own extent is a lower bound on the structure's extent
    ext_x = float(xs.max() - xs.min()) / 2 if len(xs) > 1 else 0.0
    ext_y = float(ys.max() - ys.min()) / 2 if len(ys) > 1 else 0.0
    base = max(config.min_half_px, cluster.spread_px, ext_x, ext_y)
    if geometry is not None:  # gaze is uncertain by ~1 deg: no box smaller than that
        base = max(base, geometry.deg_to_px(1.0))
    cx, cy = cluster.x, cluster.y
    boxes = []
    for s in config.scales:
        b = _box_around(cx, cy, max(base * s, ext_x + 2), max(base * s, ext_y + 2), shape)
        if b is not None and b not in boxes:
            boxes.append(b)
        if b is not None and b.x0 <= 0 and b.y0 <= 0 and b.x1 >= w - 1 and b.y1 >= h - 1:
            break  # already the whole image
    if not boxes:
        raise InvalidPromptError("the gaze cluster gives no usable box (image too small?).")
    points = _cluster_points(cluster, rejected, shape)
    dec_points = points if config.points_to_decoder else ()
    prompts = [PromptSet(points=dec_points, box=b) for b in boxes]
    segs = segmenter.decode_batch(embedding, prompts)
    scores = [_score(s.mask, s.predicted_iou, b, cluster, rejected) for s, b in zip(segs, boxes)]
    k = int(np.argmax(scores))
    best_box, best_score, best_seg, n = boxes[k], scores[k], segs[k], len(boxes)
    if config.refine and segs[k].mask.any():
        ys_m, xs_m = np.nonzero(segs[k].mask)
        rb = Box(float(xs_m.min()), float(ys_m.min()), float(xs_m.max()), float(ys_m.max()), PromptSource.GAZE, 1.0)
        if rb.width >= 1 and rb.height >= 1:
            rs = segmenter.decode(embedding, PromptSet(points=dec_points, box=rb))
            n += 1
            # the tight box touches its own mask by construction; judge it without the edge term
            r_score = _score(rs.mask, rs.predicted_iou, _box_around(w / 2, h / 2, w, h, shape), cluster, rejected)
            if r_score >= 0.9 * best_score:
                best_box, best_score, best_seg = rb, r_score, rs
    conf = float(np.clip(best_score, 0.0, 1.0))
    prompt = PromptSet(points=points, box=replace(best_box, confidence=conf), label="gaze").with_note(
        f"gaze: {len(cluster.fixations)} fixations, {cluster.dwell_s * 1000:.0f} ms dwell at "
        f"({cluster.x:.0f}, {cluster.y:.0f}); box chosen from {n} decoded candidates"
        + (f"; {len(rejected)} rejected dwell(s) as negative points" if rejected else ""))
    return GazeProposal(prompt, cluster, best_score, n, best_seg)


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
    prompt_config: GazePromptConfig = field(default_factory=GazePromptConfig)
    max_samples: int = 200 * 60  # one minute at 200 Hz; older samples are forgotten

    def __post_init__(self) -> None:
        self.embedding = self.segmenter.embed(self.image01)
        self.shape = tuple(self.image01.shape[:2])
        self._samples: list[GazeSample] = []
        self._device_fixations: list[Fixation] = []
        self._rejected: list[Point] = []
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
        h, w = self.shape
        self._rejected.append(Point(float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1)), False, PromptSource.GAZE))
        self._last_key = None
        return self.update()

    def reset(self) -> None:
        self._samples.clear()
        self._device_fixations.clear()
        self._rejected.clear()
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
        fx = [f for f in fx if f.duration >= self.prompt_config.min_dwell_s - 1e-9]
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
