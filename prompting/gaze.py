"""Gaze -> prompts: fixations (I-VT or I-DT), dwell-weighted clusters, a box proposal, live re-decoding.

Input is a stream of `GazeSample`s already mapped into slice pixels (integrations/screen_mapping.py
does scene camera -> screen -> image). Angles matter more than pixels for eye movements, so every
threshold is in degrees of visual angle and converted through `ViewingGeometry` (viewing distance,
screen pixel pitch, display zoom): the same 1 deg covers 4x more image pixels at zoom 1 than at 4.

LiteMedSAM was trained on boxes only (DESIGN.md), so fixations are turned into a BOX: the dominant
cluster (largest total dwell) loses its stray glance (`robust_core`), boxes around its fixations at
several margins are decoded in one batch against the cached embedding, the candidates whose masks
hold every fixation vote, and the vote's own bounding box is decoded once more (fixed point: the box
a user would have drawn around that mask). Fixation points ride along in the PromptSet as positive
GAZE points (and rejected dwells as negative ones) for segmenters that use points; whether they
reach the decoder is a config choice (off: LiteMedSAM is box-trained). `LiveGazeSession` spends
decoder calls only when new fixations can change the answer (see its `update`).
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
    on_image: bool = True  # False: gaze fell outside the displayed image (x, y then NaN if no screen was found)

    @property
    def tracked(self) -> bool:
        """The eye's position is known (glasses worn, no blink, mapped to finite slice coordinates), on
        the displayed image or off it."""
        return self.worn and not self.blink and math.isfinite(self.x) and math.isfinite(self.y)

    @property
    def usable(self) -> bool:
        return self.tracked and self.on_image


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
    max_gap_s: float = 0.075  # a longer run of untracked samples (blink, glasses off, no screen seen) splits fixations
    # A fixation counts when at least this share of its samples fell on the displayed image. Samples
    # off the image still take part in detection: dropping them first biased every fixation near the
    # image's edge inwards (with 1 deg noise, by up to ~20 px on a 512 px slice, off small targets).
    min_on_image: float = 0.5
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
@dataclass(frozen=True)
class GazeTrack:
    """Gaze samples as arrays (time, x, y, tracked, on the image), in time order. A live session
    appends each chunk once (`extended`) instead of rebuilding arrays from every sample object at each
    update (measured on bench/gaze.py's 3 s live sessions: the rebuild was ~17 % of their compute)."""
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ok: np.ndarray  # GazeSample.tracked: where the eye looked is known (on the image or off it)
    on: np.ndarray  # GazeSample.on_image

    @staticmethod
    def empty() -> "GazeTrack":
        z = np.zeros(0, np.float64)
        return GazeTrack(z, z, z, np.zeros(0, bool), np.zeros(0, bool))

    @staticmethod
    def of(samples: Sequence[GazeSample]) -> "GazeTrack":
        if isinstance(samples, GazeTrack):
            return samples
        track = GazeTrack(np.array([s.t for s in samples], dtype=np.float64), np.array([s.x for s in samples], dtype=np.float64),
                          np.array([s.y for s in samples], dtype=np.float64), np.array([s.tracked for s in samples], dtype=bool),
                          np.array([s.on_image for s in samples], dtype=bool))
        if len(track) > 1 and np.any(np.diff(track.t) < 0):
            raise InvalidPromptError("gaze samples must be in time order (timestamps go backwards).")
        return track

    def __len__(self) -> int:
        return len(self.t)

    def extended(self, samples: Sequence[GazeSample], keep_last: int | None = None) -> "GazeTrack":
        """This track with `samples` appended (the newest keep_last kept); refused if time goes backwards."""
        new = GazeTrack.of(samples)
        if len(new) and len(self) and new.t[0] < self.t[-1]:
            raise InvalidPromptError("gaze samples must be in time order (timestamps go backwards).")
        cut = slice(-keep_last, None) if keep_last else slice(None)
        return GazeTrack(*(np.concatenate([a, b])[cut] for a, b in ((self.t, new.t), (self.x, new.x), (self.y, new.y),
                                                                    (self.ok, new.ok), (self.on, new.on))))


def _arrays(samples: Sequence[GazeSample] | GazeTrack) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    track = GazeTrack.of(samples)
    return track.t, track.x, track.y, track.ok


def _segments(t: np.ndarray, ok: np.ndarray, max_gap_s: float) -> list[np.ndarray]:
    """Indices of usable samples, split wherever unusable time exceeds max_gap_s."""
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return []
    gaps = np.diff(t[idx]) > max_gap_s
    return np.split(idx, np.nonzero(gaps)[0] + 1)


def _mostly_on_image(track: GazeTrack, sel: np.ndarray, config: FixationConfig) -> bool:
    return float(track.on[sel].mean()) >= config.min_on_image


def _fixation(t, x, y, sel: np.ndarray, geometry: ViewingGeometry, source: str) -> Fixation:
    xs, ys = x[sel], y[sel]
    disp = float((xs.max() - xs.min()) + (ys.max() - ys.min())) * geometry.deg_per_image_px
    return Fixation(float(t[sel[0]]), float(t[sel[-1]]), float(xs.mean()), float(ys.mean()), int(len(sel)), disp, source)


def estimate_noise_px(samples: Sequence[GazeSample] | GazeTrack) -> float:
    """Per-sample gaze noise (SD per axis, image px), robustly from sample-to-sample differences.

    The median absolute deviation ignores the few large differences of saccades; for independent
    noise a difference has sqrt(2) times the samples' SD."""
    t, x, y, ok = _arrays(samples)
    d = np.concatenate([np.diff(x[ok]), np.diff(y[ok])]) if ok.sum() > 2 else np.zeros(0)
    if len(d) < 4:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def velocity_window(noise_px: float, dt: float, geometry: ViewingGeometry, config: FixationConfig) -> int:
    """Samples averaged on each side of the velocity estimate, grown with the noise (adaptive I-VT).

    The velocity at sample i is the distance between the means of the w samples before and after it
    over the time between them, so noise contributes ~sigma*sqrt(2/w)/(w*dt) deg/s: w is the smallest
    window (>= config.smoothing_samples) whose 95th-percentile noise velocity stays under half the
    threshold. At Neon's ~0.1 deg precision that is the configured 5 samples; at 1 deg per-sample
    error, ~13 samples (65 ms) on each side."""
    sigma_deg = noise_px * geometry.deg_per_image_px
    need = (2.0 * 2.45 * math.sqrt(2.0) * sigma_deg / (config.velocity_threshold_deg_s * max(dt, 1e-4))) ** (2.0 / 3.0)
    return int(max(config.smoothing_samples, min(math.ceil(need), 40)))


def _reclaim(seg: np.ndarray, a: int, b: int, lo: int, hi: int, w: int, x: np.ndarray, y: np.ndarray,
             radius_px: float) -> tuple[int, int]:
    """Give a run back the samples the velocity window trimmed off its ends (up to w on each side,
    not into the neighbouring runs), while they stay within radius_px of the run's mean: a long
    filter would otherwise eat most of a short fixation."""
    mx, my = x[seg[a:b]].mean(), y[seg[a:b]].mean()
    first = max(lo, a - w)
    while a > first and math.hypot(x[seg[a - 1]] - mx, y[seg[a - 1]] - my) <= radius_px:
        a -= 1
    last = min(hi, b + w)
    while b < last and math.hypot(x[seg[b]] - mx, y[seg[b]] - my) <= radius_px:
        b += 1
    return a, b


STEP_Z = 5.0  # standardised shift between two runs' mean positions that counts as a real step


def _split_steps(run: np.ndarray, x: np.ndarray, y: np.ndarray, noise_px: float, min_len: int,
                 min_shift_px: float, z: float = STEP_Z) -> list[np.ndarray]:
    """Split a run where the gaze position steps (binary segmentation for a change in mean).

    With noisy gaze the velocity filter must be long, and a short saccade between two nearby
    fixations (a glance from the target to its neighbour) can stay under the threshold: the two
    fixations come out as one, centred between them. The split point maximises the standardised
    distance between the means before and after it; it is kept when that is > z (the largest of
    ~n correlated chi(2) values under no change stays below ~4.5) and the shift > min_shift_px."""
    n = len(run)
    if n < 2 * min_len or noise_px <= 0:
        return [run]
    cx, cy = np.cumsum(x[run]), np.cumsum(y[run])
    k = np.arange(min_len, n - min_len + 1)
    ma_x, ma_y = cx[k - 1] / k, cy[k - 1] / k
    mb_x, mb_y = (cx[-1] - cx[k - 1]) / (n - k), (cy[-1] - cy[k - 1]) / (n - k)
    shift = np.hypot(mb_x - ma_x, mb_y - ma_y)
    stat = shift / (noise_px * np.sqrt(1.0 / k + 1.0 / (n - k)))
    j = int(np.argmax(stat))
    if stat[j] <= z or shift[j] <= min_shift_px:
        return [run]
    cut = int(k[j])
    return (_split_steps(run[:cut], x, y, noise_px, min_len, min_shift_px, z)
            + _split_steps(run[cut:], x, y, noise_px, min_len, min_shift_px, z))


def detect_fixations_ivt(samples: Sequence[GazeSample] | GazeTrack, geometry: ViewingGeometry,
                         config: FixationConfig = FixationConfig()) -> list[Fixation]:
    """Velocity-threshold identification (Salvucci & Goldberg 2000) with a noise-adaptive velocity filter.

    Raw 200 Hz gaze jitters from sample to sample; differencing raw positions would call that noise a
    saccade. The velocity at each sample is therefore taken between the means of a window of samples
    before and after it, the window sized from the measured noise (`velocity_window`): short for a
    precise tracker (the configured smoothing), longer for a noisy one.
    """
    track = GazeTrack.of(samples)
    t, x, y, ok = _arrays(track)
    dpp = geometry.deg_per_image_px
    dt_med = float(np.median(np.diff(t))) if len(t) > 1 else 0.005
    noise_px = estimate_noise_px(track)
    w = velocity_window(noise_px, dt_med, geometry, config)
    runs: list[np.ndarray] = []
    for seg in _segments(t, ok, config.max_gap_s):
        if len(seg) < 2:
            continue
        cx = np.concatenate([[0.0], np.cumsum(x[seg])])
        cy = np.concatenate([[0.0], np.cumsum(y[seg])])
        n = len(seg)
        i = np.arange(n)
        # window before: [max(0, i-w+1), i]; after: [i+1, min(n, i+w)] (shrunk at the segment's ends)
        a0, a1 = np.maximum(0, i - w + 1), i + 1
        b0, b1 = np.minimum(n - 1, i + 1), np.minimum(n, i + 1 + w)
        b1 = np.maximum(b1, b0 + 1)
        mxa, mya = (cx[a1] - cx[a0]) / (a1 - a0), (cy[a1] - cy[a0]) / (a1 - a0)
        mxb, myb = (cx[b1] - cx[b0]) / (b1 - b0), (cy[b1] - cy[b0]) / (b1 - b0)
        ts = t[seg]
        cts = np.concatenate([[0.0], np.cumsum(ts)])
        ta, tb = (cts[a1] - cts[a0]) / (a1 - a0), (cts[b1] - cts[b0]) / (b1 - b0)
        span = np.maximum(tb - ta, 1e-3)
        v = np.hypot(mxb - mxa, myb - mya) * dpp / span
        edges = np.diff(np.concatenate([[0], (v < config.velocity_threshold_deg_s).astype(np.int8), [0]]))
        min_len = max(2, int(round(0.5 * config.min_duration_s / max(dt_med, 1e-4))))
        starts, ends = list(np.nonzero(edges == 1)[0]), list(np.nonzero(edges == -1)[0])
        for r, (a, b) in enumerate(zip(starts, ends)):
            a, b = _reclaim(seg, a, b, ends[r - 1] if r else 0, starts[r + 1] if r + 1 < len(starts) else n,
                            w, x, y, 2.5 * max(noise_px, 1e-6) + geometry.deg_to_px(0.1))
            runs += _split_steps(seg[a:b], x, y, noise_px, min_len, geometry.deg_to_px(config.merge_distance_deg))
    # A blink or a few lost samples in the middle of a fixation split it into two runs at the same
    # place: merge neighbours in time and space before judging durations. "Same place" is the step
    # test of _split_steps the other way round: closer than merge_distance_deg, or no step the noise
    # cannot explain. (A few samples left between a run and a blink have a mean as noisy as noise /
    # sqrt(n): with 1 deg noise, 6 samples sat > 1 deg from their fixation's and kept its two halves apart.)
    merged: list[np.ndarray] = []
    for r in runs:
        if merged:
            prev = merged[-1]
            close_t = t[r[0]] - t[prev[-1]] <= config.merge_gap_s
            d = math.hypot(x[r].mean() - x[prev].mean(), y[r].mean() - y[prev].mean())
            z = d / max(noise_px * math.sqrt(1.0 / len(r) + 1.0 / len(prev)), 1e-9)
            if close_t and (d * dpp <= config.merge_distance_deg or z <= STEP_Z):
                merged[-1] = np.concatenate([prev, r])
                continue
        merged.append(r)
    return [_fixation(t, x, y, r, geometry, "ivt") for r in merged
            if t[r[-1]] - t[r[0]] >= config.min_duration_s - 1e-9 and _mostly_on_image(track, r, config)]


def detect_fixations_idt(samples: Sequence[GazeSample] | GazeTrack, geometry: ViewingGeometry,
                         config: FixationConfig = FixationConfig()) -> list[Fixation]:
    """Dispersion-threshold identification (Salvucci & Goldberg 2000): a window of at least
    min_duration whose (max-min x)+(max-min y) stays under dispersion_deg, grown while it does."""
    track = GazeTrack.of(samples)
    t, x, y, ok = _arrays(track)
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
            if _mostly_on_image(track, seg[i:j + 1], config):
                out.append(_fixation(t, x, y, seg[i:j + 1], geometry, "idt"))
            i = j + 1
    return out


def detect_fixations(samples: Sequence[GazeSample] | GazeTrack, geometry: ViewingGeometry,
                     config: FixationConfig = FixationConfig()) -> list[Fixation]:
    if config.method == "idt":
        return detect_fixations_idt(samples, geometry, config)
    return detect_fixations_ivt(samples, geometry, config)


def fixations_on_image(fixations: Iterable[Fixation], shape: tuple[int, int]) -> list[Fixation]:
    """Drop fixations whose centroid lies outside the slice (e.g. on-device fixations off the image);
    a centroid within the edge pixels' half-width outside is moved onto them."""
    h, w = shape
    out = []
    for f in fixations:
        if -0.5 <= f.x <= w - 0.5 and -0.5 <= f.y <= h - 0.5:
            inside = 0 <= f.x <= w - 1 and 0 <= f.y <= h - 1
            out.append(f if inside else replace(f, x=min(max(f.x, 0.0), w - 1.0), y=min(max(f.y, 0.0), h - 1.0)))
    return out


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
    outlier_factor: float = 2.5  # in the dominant cluster, drop a fixation > factor x the others' median distance...
    outlier_min_deg: float = 0.75  # ...from their dwell-weighted median, and farther than this (a stray glance)
    # Candidate boxes: the fixations' bounding box grown by pad = f x max(spread, min_pad_deg) per
    # side, for every f; all decoded in ONE batch against the cached embedding, then scored.
    pads: tuple[float, ...] = (0.5, 1.0, 1.6, 2.4, 3.5, 5.0)
    min_pad_deg: float = 0.3
    inside_tolerance_deg: float = 0.15  # a fixation this close to the mask counts as inside (centroid error)
    # The candidates whose mask holds every core fixation vote pixel by pixel (a structure's boundary
    # is where most boxes agree; one box's quirks cancel out). Measured on simulated gaze against
    # scoring single candidates by predicted IoU, stability, box fit, edge contact and centrality:
    # the vote + fixed point was better on all three dev sets (docs/gaze.md).
    vote: float = 0.5
    fixed_point: int = 1  # re-decode with the chosen mask's own bounding box (a tight box) this many times
    fixed_point_below: float = 1.01  # ...only when the voters agree less than this (mean IoU with the vote)
    reuse_deg: float = 0.25  # live: keep the last box when the cluster moved less than this and stays inside
    points_to_decoder: bool = False  # LiteMedSAM is box-trained; points only travel in the PromptSet
    min_dwell_s: float = 0.1
    reject_radius_deg: float = 1.5  # fixations this close to a rejected dwell are ignored
    # The learned choice between the vote's result and each pad's own mask (prompting/gaze_ranking.py,
    # bundled coefficients); used when the slice is given (gaze_prompt(..., image01=)). None: the vote.
    ranker: str | None = "gaze"


# Live mode: fewer candidate boxes per update (each decoder call costs ~60-100 ms on 2 cores), the
# fixed point only when the three candidates disagree, and the current mask is kept while it holds
# every fixation and the cluster moved less than 1 deg (LiveGazeSession). No learned choice: it was
# fitted on the six-pad candidate set, and live updates must stay cheap.
LIVE_PROMPT_CONFIG = GazePromptConfig(pads=(0.8, 1.8, 3.5), fixed_point_below=0.9, reuse_deg=1.0, ranker=None)


@dataclass
class GazeProposal:
    prompt: PromptSet
    cluster: FixationCluster
    score: float  # agreement of the voting candidates with the vote (mean IoU), 0..1
    candidates: int  # how many boxes were decoded
    segmentation: object = None  # models.segmentation.Segmentation of prompt's box (after the fixed point)
    decodes: int = 0  # decoder calls spent (candidates + fixed point)
    # what the learned ranker chooses among (prompting.gaze_ranking.GazeCandidate; the vote's result last)
    choices: tuple = ()


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
    """The cluster without a stray glance: each fixation is compared with the dwell-weighted median of
    the OTHERS (so the stray cannot pull the reference towards itself) and dropped when it lies more
    than outlier_factor x their median distance and more than outlier_min_deg away. At most a third
    of the fixations go (the dominant cluster is what the reader looked at most)."""
    fx = list(cluster.fixations)
    if len(fx) == 2:
        # Two places: in a small structure the looks merge into one long fixation, and the other is
        # the glance away. Keep the clearly longer dwell when they are far apart.
        a, b = sorted(fx, key=lambda f: -f.duration)
        far = math.hypot(a.x - b.x, a.y - b.y) > 2.0 * geometry.deg_to_px(config.outlier_min_deg)
        return _make_cluster([a]) if far and a.duration >= 1.5 * b.duration else cluster
    if len(fx) < 3:
        return cluster
    P = np.array([[f.x, f.y] for f in fx])
    w = np.array([max(f.duration, 1e-3) for f in fx])
    floor = geometry.deg_to_px(config.outlier_min_deg)
    excess = np.zeros(len(fx))
    for i in range(len(fx)):
        others = np.arange(len(fx)) != i
        med = np.array([_weighted_median(P[others, 0], w[others]), _weighted_median(P[others, 1], w[others])])
        d_others = np.hypot(*(P[others] - med).T)
        d = float(np.hypot(*(P[i] - med)))
        # with two others the median is one of them: their spread is the distance between them
        scale = float(np.hypot(*(P[others][0] - P[others][1]))) if len(fx) == 3 else float(np.median(d_others))
        limit = max(config.outlier_factor * scale, floor)
        excess[i] = d / max(limit, 1e-9)
    drop = [i for i in np.argsort(-excess)[: len(fx) // 3] if excess[i] > 1.0]
    if not drop:
        return cluster
    return _make_cluster([f for i, f in enumerate(fx) if i not in drop])


def _weighted_median(v: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(v)
    c = np.cumsum(w[o])
    return float(v[o][np.searchsorted(c, 0.5 * c[-1])])


def candidate_boxes(cluster: FixationCluster, shape: tuple[int, int], geometry: ViewingGeometry,
                    config: GazePromptConfig = GazePromptConfig()) -> list[Box]:
    """The fixations' bounding box grown by each pad (one box per pad, smallest first).

    Readers look at the inside of a structure, mostly its middle (DESIGN.md's reader: fixations ~
    distance transform), so the fixations' extent underestimates the structure's: the pads are
    multiples of the fixations' spread (how far apart they are), never less than min_pad_deg."""
    P = np.array([[f.x, f.y] for f in cluster.fixations])
    w = np.array([max(f.duration, 1e-3) for f in cluster.fixations])
    c = (P * w[:, None]).sum(0) / w.sum()
    spread = float(np.sqrt(((P - c) ** 2 * w[:, None]).sum(1).sum() / w.sum()))
    base = max(spread, geometry.deg_to_px(config.min_pad_deg))
    lo, hi = P.min(0), P.max(0)
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    boxes: list[Box] = []
    for f in config.pads:
        b = _box_around(mid[0], mid[1], half[0] + f * base, half[1] + f * base, shape)
        if b is not None and b not in boxes:
            boxes.append(b)
    return boxes


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys = np.nonzero(mask.any(1))[0]
    xs = np.nonzero(mask.any(0))[0]
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / u) if u else 0.0


def fixation_cover(masks: Sequence[np.ndarray], cluster: FixationCluster, geometry: ViewingGeometry,
                   config: GazePromptConfig = GazePromptConfig()) -> np.ndarray:
    """Per mask: dwell-weighted fraction of the cluster's fixations inside it (within inside_tolerance_deg,
    the error left on a fixation's centroid after averaging its samples)."""
    from scipy import ndimage

    h, w = masks[0].shape
    tol = geometry.deg_to_px(config.inside_tolerance_deg)
    P = np.array([[f.x, f.y] for f in cluster.fixations])
    wt = np.array([max(f.duration, 1e-3) for f in cluster.fixations])
    wt = wt / wt.sum()
    ix = np.clip(np.round(P[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(P[:, 1]).astype(int), 0, h - 1)
    out = np.zeros(len(masks))
    for k, m in enumerate(masks):
        if not m.any():
            continue
        inside = m[iy, ix]
        if tol >= 1 and not inside.all():
            inside = ndimage.distance_transform_edt(~m)[iy, ix] <= tol
        out[k] = float((wt * inside).sum())
    return out


def _decode_boxes(segmenter, embedding, boxes: Sequence[Box], points: tuple[Point, ...]):
    return segmenter.decode_batch(embedding, [PromptSet(points=points, box=b) for b in boxes])


def _mask_box(mask: np.ndarray, confidence: float, pad: float = 1.0) -> Box | None:
    """The mask's bounding box, one pixel out: the decoder's mask edge sits slightly inside the box it
    was given, so re-decoding the bare bounding box again and again would shrink it step by step."""
    bb = _bbox(mask)
    if bb is None or bb[2] - bb[0] < 1 or bb[3] - bb[1] < 1:
        return None
    h, w = mask.shape
    return Box(max(0.0, bb[0] - pad), max(0.0, bb[1] - pad), min(w - 1.0, bb[2] + pad), min(h - 1.0, bb[3] + pad),
               PromptSource.GAZE, float(np.clip(confidence, 0, 1)))


def propose_box(segmenter, embedding, shape: tuple[int, int], cluster: FixationCluster,
                rejected: Sequence[Point] = (), config: GazePromptConfig = GazePromptConfig(),
                geometry: ViewingGeometry | None = None, boxes: Sequence[Box] | None = None,
                image01: np.ndarray | None = None, keep_choices: bool = False) -> GazeProposal:
    """Candidate boxes (`boxes`, or candidate_boxes' by default) around the dominant cluster's core,
    decoded in one batch; the masks that hold the fixations vote pixel by pixel, and the vote's own
    bounding box is decoded again (fixed point: the box a user would have drawn around that mask),
    kept when it still holds the fixations. With `image01` and `config.ranker`, the learned ranker
    (prompting/gaze_ranking.py) then chooses between that result and each candidate's own mask
    (`GazeProposal.choices`, also filled with `keep_choices`: bench/train_ranker.py)."""
    geometry = geometry or ViewingGeometry()
    core = robust_core(cluster, geometry, config)
    learned = config.ranker is not None and image01 is not None and boxes is None
    boxes = list(boxes) if boxes is not None else candidate_boxes(core, shape, geometry, config)
    if not boxes:
        raise InvalidPromptError("the gaze cluster gives no usable box (image too small?).")
    points = _cluster_points(core, rejected, shape)
    dec_points = points if config.points_to_decoder else ()
    segs = _decode_boxes(segmenter, embedding, boxes, dec_points)
    masks = np.stack([s.mask for s in segs])
    cover = fixation_cover(list(masks), core, geometry, config)
    # a candidate that covers a rejected dwell is out of the vote: the user said "not that"
    allowed = np.array([not any(m[int(round(p.y)), int(round(p.x))] for p in rejected) for m in masks])
    if not allowed.any():
        allowed[:] = True
    ok = allowed & (cover >= cover[allowed].max() - 1e-6)  # all fixations inside, or as many as any holds
    vote = masks[ok].mean(0) >= config.vote
    ious = np.array([_iou(m, vote) for m in masks])
    agreement = float(ious[ok].mean())
    k = int(np.argmax(np.where(ok, ious, -1.0)))
    best, box, decodes = segs[k], boxes[k], len(boxes)
    current = vote if vote.any() else best.mask
    for _ in range(max(0, config.fixed_point) if agreement < config.fixed_point_below else 0):
        fb = _mask_box(current, best.predicted_iou)
        if fb is None or fb == replace(box, confidence=fb.confidence):
            break
        fseg = _decode_boxes(segmenter, embedding, [fb], dec_points)[0]
        decodes += 1
        if fixation_cover([fseg.mask], core, geometry, config)[0] + 1e-9 < cover[ok].max() \
                or any(fseg.mask[int(round(p.y)), int(round(p.x))] for p in rejected):
            break  # the tight box lost fixations (or took a rejected one): keep the vote's result
        best, box, current = fseg, fb, fseg.mask
    if best.mask is not current:  # the vote itself is the answer, its box the prompt
        best = replace(best, mask=current)
        mb = _mask_box(current, agreement)
        box = mb if mb is not None else box
    how = "the vote's result"
    offered, cands = reading_candidates(segs, masks, boxes, cover, allowed, best, box, core, geometry, config) \
        if learned or keep_choices else ([], [])
    if learned:
        from .gaze_ranking import rank

        j = int(np.argmax(rank(cands, image01, *fixation_arrays(core), config.ranker)))
        if cands[j].is_vote:
            how = "the vote's result (learned choice)"
        else:
            i = offered[j]
            # its mask's own box is the prompt, as for the vote's result: the box a user would draw
            best, box = replace(segs[i], mask=masks[i]), _mask_box(masks[i], segs[i].predicted_iou) or boxes[i]
            how = f"candidate box {i + 1}'s own mask (learned choice over the vote)"
    best_score = agreement
    prompt = PromptSet(points=points, box=replace(box, confidence=float(np.clip(best.predicted_iou, 0, 1))),
                       label="gaze").with_note(
        f"gaze: {len(core.fixations)} of {len(cluster.fixations)} fixations ({core.dwell_s * 1000:.0f} ms dwell) "
        f"around ({core.x:.0f}, {core.y:.0f}); {len(boxes)} candidate boxes voted (agreement {agreement:.2f}), "
        f"then the mask's own box ({decodes} decodes); kept {how}"
        + (f"; {len(rejected)} rejected dwell(s) as negative points" if rejected else ""))
    return GazeProposal(prompt, core, best_score, len(boxes), best, decodes, tuple(cands))


def reading_candidates(segs, masks: np.ndarray, boxes: Sequence[Box], cover: np.ndarray, allowed: np.ndarray,
                       vote_seg, vote_box: Box, core: FixationCluster, geometry: ViewingGeometry,
                       config: GazePromptConfig) -> tuple[list[int], list]:
    """What the learned ranker chooses among: each candidate box's own mask (those covering a
    rejected dwell left out) and, last, the vote's result. Returns (the offered candidates' indices
    into `boxes`, their prompting.gaze_ranking.GazeCandidate list, the vote's last)."""
    from .gaze_ranking import GazeCandidate

    n = len(boxes)
    offered = [i for i in range(n) if allowed[i]]
    cands = [GazeCandidate(masks[i], boxes[i], float(segs[i].predicted_iou), float(cover[i]), False, i / max(1, n - 1))
             for i in offered]
    vote_cover = float(fixation_cover([vote_seg.mask], core, geometry, config)[0])
    cands.append(GazeCandidate(vote_seg.mask, vote_box, float(vote_seg.predicted_iou), vote_cover, True, 0.5))
    return offered, cands


def fixation_arrays(core: FixationCluster) -> tuple[np.ndarray, np.ndarray]:
    """(positions (N, 2) x, y; dwell weights (N,)) of a cluster's fixations."""
    return (np.array([[f.x, f.y] for f in core.fixations], np.float64),
            np.array([max(f.duration, 1e-3) for f in core.fixations], np.float64))


def decoder_prompt(prompt: PromptSet, config: GazePromptConfig = GazePromptConfig()) -> PromptSet:
    """What is sent to the decoder: the box, and the gaze points only where they are known to help."""
    if config.points_to_decoder:
        return prompt
    return replace(prompt, points=())


def gaze_prompt(segmenter, embedding, shape: tuple[int, int], fixations: Sequence[Fixation],
                geometry: ViewingGeometry, rejected: Sequence[Point] = (),
                config: GazePromptConfig = GazePromptConfig(), image01: np.ndarray | None = None) -> GazeProposal:
    """Fixations (slice pixels) -> the dominant cluster's box proposal (`image01`, the slice the
    embedding came from, lets the learned ranker choose among the candidates)."""
    clusters = dominant_clusters(fixations, shape, geometry, rejected, config)
    return propose_box(segmenter, embedding, shape, clusters[0], rejected, config, geometry, image01=image01)


def dominant_clusters(fixations: Sequence[Fixation], shape: tuple[int, int], geometry: ViewingGeometry,
                      rejected: Sequence[Point] = (), config: GazePromptConfig = GazePromptConfig()) -> list[FixationCluster]:
    """Usable fixations (on the image, long enough, away from rejected dwells) clustered, largest dwell first."""
    fx = [f for f in fixations_on_image(fixations, shape) if f.duration >= config.min_dwell_s - 1e-9]
    reject_px = geometry.deg_to_px(config.reject_radius_deg)
    fx = [f for f in fx if all(math.hypot(f.x - p.x, f.y - p.y) > reject_px for p in rejected)]
    if not fx:
        raise InvalidPromptError("no fixation on the image yet: look at the structure for a moment "
                                 "(at least 100 ms) or check that the markers around the image are visible.")
    return cluster_fixations(fx, geometry.deg_to_px(config.cluster_radius_deg))


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
        self._track = GazeTrack.empty()
        self._device_fixations: list[Fixation] = []
        self._rejected: list[Point] = []
        self._rejected_spans: list[tuple[float, float]] = []
        self._last_key: tuple | None = None
        self._incremental_ok = False  # False: the next update scores the full candidate set
        self.last: GazeUpdate | None = None
        self.decodes = 0  # decoder calls spent so far (bench/gaze.py reports the rate)

    # -- inputs ------------------------------------------------------------------------------
    def add_samples(self, samples: Iterable[GazeSample]) -> GazeUpdate | None:
        self._track = self._track.extended(list(samples), keep_last=self.max_samples)
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
        self._incremental_ok = False
        return self.update()

    def reset(self) -> None:
        self._track = GazeTrack.empty()
        self._device_fixations.clear()
        self._rejected.clear()
        self._rejected_spans.clear()
        self._last_key = None
        self._incremental_ok = False
        self.last = None

    # -- state -------------------------------------------------------------------------------
    @property
    def rejected(self) -> tuple[Point, ...]:
        return tuple(self._rejected)

    def fixations(self) -> list[Fixation]:
        own = detect_fixations(self._track, self.geometry, self.fixation_config) if len(self._track) else []
        return sorted(own + self._device_fixations, key=lambda f: f.t_start)

    def update(self) -> GazeUpdate | None:
        """Re-decode when the fixations changed enough to matter; None when nothing new was decoded.

        Cost control (each decoder call is ~60-100 ms on 2 cores): an unchanged fixation set is not
        re-decoded; a cluster that moved less than reuse_deg with every fixation still inside the
        current mask keeps it (no decode); the same fixations moved with half the dwell or more
        inside the current mask extend the current box to take them in (one decode); a new look
        outside the mask, a new place or a rejection runs the live candidate vote (3 decodes, + the
        fixed point when the candidates disagree)."""
        t0 = time.perf_counter()
        cfg = self.prompt_config
        fx = fixations_on_image(self.fixations(), self.shape)
        fx = [f for f in fx if f.duration >= cfg.min_dwell_s - 1e-9
              and not any(f.t_start <= e and s <= f.t_end for s, e in self._rejected_spans)]
        # a growing fixation moves its end time every sample, its centroid barely
        key = tuple((round(f.x), round(f.y), round(f.duration, 1)) for f in fx) + (len(self._rejected),)
        if not fx or key == self._last_key:
            return None
        self._last_key = key
        try:
            cluster = dominant_clusters(fx, self.shape, self.geometry, self._rejected, cfg)[0]
        except InvalidPromptError:
            return None  # every fixation was rejected: wait for new ones
        prev = self.last if self._incremental_ok else None
        boxes = None
        if prev is not None and prev.prompt.box is not None:
            core = robust_core(cluster, self.geometry, cfg)
            m = prev.segmentation.mask
            cover = fixation_cover([m], core, self.geometry, cfg)[0]
            moved = math.hypot(core.x - prev.cluster.x, core.y - prev.cluster.y)
            if cover >= 1.0 - 1e-9 and moved <= self.geometry.deg_to_px(cfg.reuse_deg):
                return None  # the current mask already answers these fixations
            if cover >= 0.5 and len(core.fixations) == len(prev.cluster.fixations):
                # the same looks, moved (a fixation still growing): the current box taken out to them,
                # one decode. A new look outside the mask brings the full candidate vote back, so a
                # box made from the first looks can still grow to the structure (a box extended by
                # the new fixation alone stays inside a uniform structure: tests/test_gaze_live.py)
                boxes = [_extend_box(prev.prompt.box, core, self.shape, self.geometry, cfg)]
        prop = propose_box(self.segmenter, self.embedding, self.shape, cluster, self._rejected, cfg, self.geometry,
                           boxes=boxes)
        self._incremental_ok = True
        seg = prop.segmentation
        seg.notes = list(seg.notes) + list(prop.prompt.notes)
        self.decodes += prop.decodes
        self.last = GazeUpdate(prop.prompt, seg, tuple(fx), prop.cluster, (time.perf_counter() - t0) * 1000.0)
        return self.last


def _extend_box(box: Box, core: FixationCluster, shape: tuple[int, int], geometry: ViewingGeometry,
                config: GazePromptConfig) -> Box:
    """The current box grown to take in the new fixations (each with the smallest pad around it)."""
    pad = geometry.deg_to_px(config.min_pad_deg)
    P = np.array([[f.x, f.y] for f in core.fixations])
    h, w = shape
    x0, y0 = min(box.x0, float(P[:, 0].min()) - pad), min(box.y0, float(P[:, 1].min()) - pad)
    x1, y1 = max(box.x1, float(P[:, 0].max()) + pad), max(box.y1, float(P[:, 1].max()) + pad)
    return Box(max(0.0, x0), max(0.0, y0), min(w - 1.0, x1), min(h - 1.0, y1), PromptSource.GAZE, 1.0)
