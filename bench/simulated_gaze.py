"""DESIGN.md's simulated gaze user: what a reader's eyes do when asked to look at a structure.

- 3-6 fixations inside the target, positions drawn with probability proportional to the distance
  transform (readers look at the middle of things more than at their edges), 150-600 ms each;
- one stray fixation outside the target (>= 1 deg from it, <= 8 deg: a glance at a neighbour), at a
  random place in the sequence;
- sampled at 200 Hz with N(0, sigma deg) error per sample and axis (DESIGN.md's words; `bias_deg`
  adds an optional per-fixation offset N(0, bias deg), constant within a fixation, for a harsher
  "accuracy offset" variant); degrees -> image pixels through 60 cm viewing distance, 0.27 mm pixel
  pitch and the display zoom (prompting.gaze.ViewingGeometry); `app_geometry` gives the zoom the
  app really shows a slice at (app.render.viewport), so simulation and product agree;
- saccades between fixations: main-sequence duration (20 ms + 2.2 ms/deg), minimum-jerk profile;
- ~5 % of samples lost: one blink burst (blink=True) and isolated worn=False samples.
Everything is drawn from the numpy Generator passed in: same seed, same gaze.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from prompting.gaze import GazeSample, ViewingGeometry


@dataclass(frozen=True)
class TrueFixation:
    x: float  # where the eye really looked (slice pixels)
    y: float
    t_start: float
    t_end: float
    on_target: bool


@dataclass
class SimulatedGaze:
    samples: list[GazeSample]
    fixations: list[TrueFixation]

    @property
    def last_fixation_end(self) -> float:
        return max(f.t_end for f in self.fixations)


def _draw_inside(mask: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    dist = ndimage.distance_transform_edt(mask).ravel()
    p = dist / dist.sum()
    idx = rng.choice(dist.size, size=k, replace=True, p=p)
    ys, xs = np.unravel_index(idx, mask.shape)
    return np.stack([xs, ys], 1).astype(np.float64)


def _draw_stray(mask: np.ndarray, rng: np.random.Generator, geometry: ViewingGeometry) -> np.ndarray | None:
    outside = ndimage.distance_transform_edt(~mask)
    lo, hi = geometry.deg_to_px(1.0), geometry.deg_to_px(8.0)
    ys, xs = np.nonzero((outside >= lo) & (outside <= hi))
    if len(xs) == 0:
        ys, xs = np.nonzero(outside >= 1)
    if len(xs) == 0:
        return None
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], dtype=np.float64)


def simulate_gaze(mask: np.ndarray, geometry: ViewingGeometry, rng: np.random.Generator, sigma_deg: float = 0.5,
                  bias_deg: float = 0.0, rate_hz: float = 200.0, n_fixations: tuple[int, int] = (3, 6),
                  duration_s: tuple[float, float] = (0.15, 0.6), lost_fraction: float = 0.05,
                  stray: bool = True) -> SimulatedGaze:
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("cannot simulate gaze on an empty target")
    h, w = mask.shape
    k = int(rng.integers(n_fixations[0], n_fixations[1] + 1))
    targets = [(p, True) for p in _draw_inside(mask, rng, k)]
    if stray:
        s = _draw_stray(mask, rng, geometry)
        if s is not None:
            targets.insert(int(rng.integers(0, len(targets) + 1)), (s, False))
    px = geometry.image_px_per_deg
    dt = 1.0 / rate_hz
    t = 0.0
    ts, xs, ys = [], [], []
    truth: list[TrueFixation] = []
    prev = None
    for pos, on_target in targets:
        if prev is not None:  # saccade from the previous gaze point to this fixation's (biased) point
            amp_deg = float(np.hypot(*(pos - prev))) / px
            n = max(2, int(round((0.020 + 0.0022 * amp_deg) / dt)))
            s = np.arange(1, n + 1) / (n + 1)
            prof = 10 * s ** 3 - 15 * s ** 4 + 6 * s ** 5  # minimum jerk
            for a in prof:
                p = prev + a * (pos - prev)
                ts.append(t); xs.append(p[0]); ys.append(p[1])
                t += dt
        dur = float(rng.uniform(*duration_s))
        bias = rng.normal(0.0, bias_deg, 2) * px
        n = max(1, int(round(dur / dt)))
        t0 = t
        jitter = rng.normal(0.0, sigma_deg, (n, 2)) * px
        for i in range(n):
            ts.append(t); xs.append(pos[0] + bias[0] + jitter[i, 0]); ys.append(pos[1] + bias[1] + jitter[i, 1])
            t += dt
        truth.append(TrueFixation(float(pos[0]), float(pos[1]), t0, t - dt, on_target))
        prev = pos + bias
    n_all = len(ts)
    worn = np.ones(n_all, bool)
    blink = np.zeros(n_all, bool)
    n_lost = int(round(lost_fraction * n_all))
    if n_lost > 0:
        burst = min(int(round(0.6 * n_lost)), int(0.15 * rate_hz))
        if burst > 0 and n_all > burst:
            b0 = int(rng.integers(0, n_all - burst))
            blink[b0:b0 + burst] = True
        rest = n_lost - int(blink.sum())
        free = np.nonzero(~blink)[0]
        if rest > 0 and len(free):
            worn[rng.choice(free, size=min(rest, len(free)), replace=False)] = False
    samples = []
    for i in range(n_all):
        x, y = float(xs[i]), float(ys[i])
        on = 0 <= x <= w - 1 and 0 <= y <= h - 1
        samples.append(GazeSample(float(ts[i]), x, y, bool(worn[i]), bool(blink[i]), on))
    return SimulatedGaze(samples, truth)


def bench_geometry(zoom: float = 4.0) -> ViewingGeometry:
    """DESIGN.md: 60 cm viewing distance, 0.27 mm pixel pitch; zoom is the app's display zoom."""
    return ViewingGeometry(600.0, 0.27, zoom)


def app_geometry(shape: tuple[int, int], user_zoom: float = 1.0) -> ViewingGeometry:
    """The geometry of a slice of this shape as the app shows it (app.render.viewport: the slice fitted
    to the 640 x 600 display box, times the user's zoom), at DESIGN.md's distance and pixel pitch."""
    from app.render import viewport  # bench may look at the app; prompting/ never does

    return bench_geometry(viewport(tuple(shape), user_zoom).scale)


if __name__ == "__main__":
    g = bench_geometry()
    m = np.zeros((120, 160), bool)
    m[40:80, 50:110] = True
    sim = simulate_gaze(m, g, np.random.default_rng(0))
    print(f"{len(sim.samples)} samples, {len(sim.fixations)} fixations, {g.image_px_per_deg:.1f} px/deg, "
          f"{sum(not s.usable for s in sim.samples)} unusable")
