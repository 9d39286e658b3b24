"""Gaze-driven segmentation vs the tight box, on DESIGN.md's simulated gaze user.

    .venv/bin/python bench/gaze.py [--limit N] [--readings 4] [--user-zoom 1] [--cache DIR]

For every dev case (bench/devdata.py: Colin27 AAL regions, Colin27 brain, stardist nuclei) the
simulated reader (bench/simulated_gaze.py) looks at the structure with N(0, 0.5 deg) and N(0, 1.0 deg)
per-sample gaze error, 5 % samples lost and one stray fixation (`--readings` independent readings per
case and error level, their Dice averaged: one reading per case moved the 1 deg ratio by ~0.02 from
draw to draw), at the display zoom the app shows
that slice at (app.render.viewport); fixations are detected (adaptive I-VT), clustered, and the
dominant cluster's candidate boxes are decoded in one batch and vote, the vote's own box is decoded,
and the learned gaze ranker (prompting/gaze_ranking.py, trained on other cases' readings by
bench/train_ranker.py) chooses between that result and each candidate's own mask (prompting/gaze.py).
Baseline, same run, same cases, SAME decode path: the mask's tight bounding box. Two paths are measured for both:
- one-shot (`box`, `gaze05`, `gaze10` in RESULT): the product's one-shot path. For the tight box
  models.zoom.segment_adaptive (= app.pipeline.segment_best: whole-slice decode, then
  `refine_with_zoom`: a zoomed re-encode for small boxes, kept when the decoder rates it >= 0.05
  higher); for gaze models.gaze_zoom.sharpen_gaze (what the app's recording replay runs): for a small
  box the reading is repeated on the same zoomed crop and the learned ranker chooses among the
  whole-slice and crop masks, else the same gated zoom of the proposal's mask;
- interactive (whole-slice decode only, what the live session shows).
`latency_ms`: median time from the fixations being available to the interactive mask (fixation
detection + clustering + candidate batch + fixed point; cached embedding); the one-shot step's own
median time (crop encode + decodes) is printed beside it. `live_hz`: LiveGazeSessions
(live config) fed 50 ms chunks of a 3 s reading on 3 AAL cases; mask updates per second of compute
(all chunks' time counted), with the load average printed (2 shared cores: noisy).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import case_image01  # noqa: E402
from bench.devdata import aal_cases, brain_cases, nuclei_cases  # noqa: E402
from bench.simulated_gaze import app_geometry, simulate_gaze  # noqa: E402
from integrations.errors import InvalidPromptError  # noqa: E402
from integrations.metrics import box_of, dice  # noqa: E402
from models.cache import EmbeddingCache  # noqa: E402
from models.registry import build_segmenter  # noqa: E402
from models.gaze_zoom import sharpen_gaze  # noqa: E402
from models.zoom import ZoomPolicy, segment_adaptive  # noqa: E402
from prompting.gaze import (FixationConfig, GazePromptConfig, GazeSample, LiveGazeSession,  # noqa: E402
                            detect_fixations, gaze_prompt)
from prompting.promptset import PromptSet  # noqa: E402

KEYS = ("box", "box_w", "gaze05", "gaze05_w", "gaze10", "gaze10_w")


def subsample(cases, limit: int | None, rng):
    if limit is None or len(cases) <= limit:
        return cases
    idx = sorted(rng.choice(len(cases), size=limit, replace=False))
    return [cases[i] for i in idx]


ONESHOT_MS: list[float] = []  # the one-shot step's time per reading (printed, not in RESULT)


def gaze_case(segmenter, emb, image01, case, geometry, sigma, seed, fcfg, pcfg, bias=0.0):
    """(one-shot Dice, interactive Dice, ms to the interactive mask)."""
    sim = simulate_gaze(case.mask, geometry, np.random.default_rng(seed), sigma_deg=sigma, bias_deg=bias)
    t0 = time.perf_counter()
    try:
        fx = detect_fixations(sim.samples, geometry, fcfg)
        prop = gaze_prompt(segmenter, emb, case.mask.shape, fx, geometry, config=pcfg, image01=image01)
    except InvalidPromptError:
        return 0.0, 0.0, (time.perf_counter() - t0) * 1000
    ms = (time.perf_counter() - t0) * 1000
    inter = dice(prop.segmentation.mask, case.mask)
    # the one-shot path on the gaze result (models.gaze_zoom.sharpen_gaze, what the app's replay runs):
    # the reading repeated on a zoomed crop, the learned choice over whole-slice and crop masks; for a
    # box too large to zoom, segment_adaptive's gated zoom, as the tight box gets
    t1 = time.perf_counter()
    one = sharpen_gaze(segmenter, image01, prop, fx, geometry, config=pcfg).segmentation
    ONESHOT_MS.append((time.perf_counter() - t1) * 1000)
    return dice(one.mask, case.mask), inter, ms


def live_rate(segmenter, case, geometry, seconds_of_gaze: int = 3) -> tuple[float, float, int, float]:
    """(updates per second of compute, decodes per update, updates, Dice of the last live mask) for a
    LiveGazeSession (LIVE_PROMPT_CONFIG) fed 50 ms chunks."""
    image01 = case_image01(case, None)
    session = LiveGazeSession(segmenter, image01, geometry)
    rng = np.random.default_rng(7)
    samples: list[GazeSample] = []
    t_off = 0.0
    while len(samples) < seconds_of_gaze * 200:
        sim = simulate_gaze(case.mask, geometry, rng)
        samples += [GazeSample(s.t + t_off, s.x, s.y, s.worn, s.blink, s.on_image) for s in sim.samples]
        t_off = samples[-1].t + 0.005
    n_up, busy = 0, 0.0
    for i in range(0, len(samples), 10):  # 10 samples = 50 ms at 200 Hz
        t0 = time.perf_counter()
        up = session.add_samples(samples[i:i + 10])
        busy += time.perf_counter() - t0
        n_up += up is not None
    rate = n_up / busy if busy > 0 else float("nan")
    final = dice(session.last.segmentation.mask, case.mask) if session.last is not None else 0.0
    return rate, session.decodes / max(n_up, 1), n_up, final


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20, help="cases per set (random subsample, seed 0); 0 = all")
    ap.add_argument("--user-zoom", type=float, default=1.0, help="the app's zoom control (1 = whole slice fitted)")
    ap.add_argument("--readings", type=int, default=4,
                    help="simulated readings per case and error level, averaged (one reading's ratio varies by ~0.02 "
                         "from draw to draw at 1 deg)")
    ap.add_argument("--bias", type=float, default=0.0, help="extra per-fixation offset SD (deg), a harsher reader")
    ap.add_argument("--cache", default=os.environ.get("CLINSEG_BENCH_CACHE", "/tmp/clinseg-emb-bench-gaze"),
                    help="disk embedding cache (repeated runs do not re-encode); '' = memory only")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    limit = args.limit or None
    sets = {"aal": subsample(aal_cases(), limit, rng), "brain": brain_cases(), "nuclei": subsample(nuclei_cases(), limit, rng)}
    fcfg, pcfg = FixationConfig(), GazePromptConfig()
    seg = build_segmenter("litemedsam", cache=EmbeddingCache(disk_dir=args.cache) if args.cache else None)
    for name, cases in sets.items():
        g = app_geometry(cases[0].mask.shape, args.user_zoom)
        print(f"{name}: display zoom {g.zoom:.2f} (app viewport, user zoom {args.user_zoom:g}): "
              f"{g.image_px_per_deg:.1f} image px per degree")
    print(f"fixations: adaptive I-VT {fcfg.velocity_threshold_deg_s:g} deg/s; candidate pads {pcfg.pads}; "
          f"per-fixation bias {args.bias:g} deg; {args.readings} reading(s) per case and error level, averaged")
    print(f"{'set':8s} {'n':>4s} {'box':>7s} {'gaze05':>7s} {'gaze10':>7s} {'ratio05':>7s} {'ratio10':>7s} | "
          f"{'box_w':>7s} {'gaze05_w':>8s} {'gaze10_w':>8s}")
    rows = {k: [] for k in KEYS}
    lat: list[float] = []
    t_start = time.time()
    for name, cases in sets.items():
        r = {k: [] for k in KEYS}
        for i, case in enumerate(cases):
            image01 = case_image01(case, None)
            geometry = app_geometry(case.mask.shape, args.user_zoom)
            emb = seg.embed(image01)
            tight = PromptSet.from_box(*box_of(case.mask))
            r["box"].append(dice(segment_adaptive(seg, image01, tight, ZoomPolicy()).mask, case.mask))
            r["box_w"].append(dice(seg.decode(emb, tight).mask, case.mask))
            for key, sigma in (("gaze05", 0.5), ("gaze10", 1.0)):
                ones, inters = [], []
                for k in range(1, args.readings + 1):  # reading k of case i: seed 1000 k + i (k = 1: the earlier runs' one)
                    one, inter, ms = gaze_case(seg, emb, image01, case, geometry, sigma, 1000 * k + i, fcfg, pcfg, args.bias)
                    ones.append(one)
                    inters.append(inter)
                    lat.append(ms)
                r[key].append(float(np.mean(ones)))
                r[key + "_w"].append(float(np.mean(inters)))
        m = {k: float(np.mean(v)) for k, v in r.items()}
        print(f"{name:8s} {len(cases):4d} {m['box']:7.4f} {m['gaze05']:7.4f} {m['gaze10']:7.4f} "
              f"{m['gaze05'] / m['box']:7.3f} {m['gaze10'] / m['box']:7.3f} | {m['box_w']:7.4f} {m['gaze05_w']:8.4f} "
              f"{m['gaze10_w']:8.4f}", flush=True)
        for k in rows:
            rows[k] += r[k]
    a = {k: float(np.mean(v)) for k, v in rows.items()}
    print(f"{'all':8s} {len(rows['box']):4d} {a['box']:7.4f} {a['gaze05']:7.4f} {a['gaze10']:7.4f} "
          f"{a['gaze05'] / a['box']:7.3f} {a['gaze10'] / a['box']:7.3f} | {a['box_w']:7.4f} {a['gaze05_w']:8.4f} "
          f"{a['gaze10_w']:8.4f}")
    print(f"interactive ratios (whole-slice decode for both): 0.5 deg {a['gaze05_w'] / a['box_w']:.3f}, "
          f"1.0 deg {a['gaze10_w'] / a['box_w']:.3f}")
    latency = float(np.median(lat))
    live = [live_rate(seg, c, app_geometry(c.mask.shape, args.user_zoom)) for c in sets["aal"][:3]]
    busy_s = sum(n / r for r, _, n, _ in live if r > 0)
    rate = sum(n for _, _, n, _ in live) / busy_s if busy_s > 0 else float("nan")
    per_update = float(np.mean([d for _, d, _, _ in live]))
    n_up = sum(n for _, _, n, _ in live)
    print(f"latency fixations -> interactive mask: median {latency:.0f} ms (p90 {np.percentile(lat, 90):.0f} ms); "
          f"one-shot step after it (crop encode, zoomed reading, choice): median {np.median(ONESHOT_MS):.0f} ms")
    print(f"runtime: {getattr(seg, 'runtime_report', None)}")
    print(f"live (3 AAL cases x 3 s of gaze): {n_up} updates, {per_update:.1f} decoder calls per update, {rate:.1f} "
          f"updates per second of compute (torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f}); last live mask Dice {np.mean([d for *_, d in live]):.3f}")
    print(f"elapsed {time.time() - t_start:.0f} s")
    print(f"RESULT box={a['box']:.4f} gaze05={a['gaze05']:.4f} gaze10={a['gaze10']:.4f} "
          f"latency_ms={latency:.1f} live_hz={rate:.2f}")


if __name__ == "__main__":
    main()
