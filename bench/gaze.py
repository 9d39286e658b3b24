"""Gaze-driven segmentation vs the tight box, on DESIGN.md's simulated gaze user.

    .venv/bin/python bench/gaze.py [--limit N] [--zoom 4]

For every dev case (bench/devdata.py: Colin27 AAL regions, Colin27 brain, stardist nuclei) the
simulated reader (bench/simulated_gaze.py) looks at the structure with N(0, 0.5 deg) and N(0, 1.0 deg)
gaze error, 5 % samples lost and one stray fixation; fixations are detected (I-VT), clustered, and the
dominant cluster's box proposal is decoded (prompting/gaze.py). Baseline, same run, same cases: the
mask's tight bounding box. Each distinct image is encoded once (embedding cache), so timings are
decode-only, as in the live app. `latency_ms`: median time from the last fixation's end being
available to the mask (fixation detection + clustering + candidate decodes). Live rate: a
LiveGazeSession fed 50 ms chunks of samples; updates per second of compute on this machine
(2 cores, shared with other jobs: noisy).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import case_image01  # noqa: E402
from bench.devdata import aal_cases, brain_cases, nuclei_cases  # noqa: E402
from bench.simulated_gaze import bench_geometry, simulate_gaze  # noqa: E402
from integrations.errors import InvalidPromptError  # noqa: E402
from integrations.metrics import box_of, dice  # noqa: E402
from models.registry import build_segmenter  # noqa: E402
from prompting.gaze import (LIVE_PROMPT_CONFIG, FixationConfig, GazePromptConfig, LiveGazeSession,  # noqa: E402
                            detect_fixations, gaze_prompt)
from prompting.promptset import PromptSet  # noqa: E402


def subsample(cases, limit: int | None, rng):
    if limit is None or len(cases) <= limit:
        return cases
    idx = sorted(rng.choice(len(cases), size=limit, replace=False))
    return [cases[i] for i in idx]


def gaze_dice(segmenter, emb, case, geometry, sigma, seed, fcfg, pcfg) -> tuple[float, float]:
    sim = simulate_gaze(case.mask, geometry, np.random.default_rng(seed), sigma_deg=sigma)
    t0 = time.perf_counter()
    fx = detect_fixations(sim.samples, geometry, fcfg)
    try:
        prop = gaze_prompt(segmenter, emb, case.mask.shape, fx, geometry, config=pcfg)
    except InvalidPromptError:
        return 0.0, (time.perf_counter() - t0) * 1000
    ms = (time.perf_counter() - t0) * 1000
    return dice(prop.segmentation.mask, case.mask), ms


def live_rate(segmenter, case, geometry, seconds_of_gaze: int = 3) -> float:
    """Updates per second of compute when every 50 ms chunk brings a changed fixation set."""
    image01 = case_image01(case, None)
    session = LiveGazeSession(segmenter, image01, geometry)
    rng = np.random.default_rng(7)
    samples = []
    t_off = 0.0
    while len(samples) < seconds_of_gaze * 200:
        sim = simulate_gaze(case.mask, geometry, rng)
        samples += [type(s)(s.t + t_off, s.x, s.y, s.worn, s.blink, s.on_image) for s in sim.samples]
        t_off = samples[-1].t + 0.005
    n_up, busy = 0, 0.0
    for i in range(0, len(samples), 10):  # 10 samples = 50 ms at 200 Hz
        t0 = time.perf_counter()
        up = session.add_samples(samples[i:i + 10])
        dt = time.perf_counter() - t0
        if up is not None:
            n_up += 1
            busy += dt
    return n_up / busy if busy > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=40, help="cases per set (random subsample, seed 0); 0 = all")
    ap.add_argument("--zoom", type=float, default=4.0, help="display zoom (screen px per image px)")
    ap.add_argument("--points", action="store_true", help="also pass the gaze points to the decoder")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    limit = args.limit or None
    sets = {"aal": subsample(aal_cases(), limit, rng), "brain": brain_cases(), "nuclei": subsample(nuclei_cases(), limit, rng)}
    geometry = bench_geometry(args.zoom)
    fcfg = FixationConfig()
    pcfg = GazePromptConfig(points_to_decoder=args.points)
    seg = build_segmenter("litemedsam")
    print(f"display zoom {args.zoom:g}: {geometry.image_px_per_deg:.1f} image px per degree; "
          f"fixations: I-VT {fcfg.velocity_threshold_deg_s:g} deg/s; points to decoder: {args.points}")
    print(f"{'set':8s} {'n':>4s} {'box':>7s} {'gaze05':>7s} {'gaze10':>7s} {'ratio05':>7s} {'ratio10':>7s} "
          f"{'live05':>7s} {'live10':>7s}")
    rows = {"box": [], "gaze05": [], "gaze10": [], "live05": [], "live10": []}
    lat: list[float] = []
    lat_vote: list[float] = []
    t_start = time.time()
    for name, cases in sets.items():
        r = {"box": [], "gaze05": [], "gaze10": [], "live05": [], "live10": []}
        for i, case in enumerate(cases):
            emb = seg.embed(case_image01(case, None))
            r["box"].append(dice(seg.decode(emb, PromptSet.from_box(*box_of(case.mask))).mask, case.mask))
            for key, sigma in (("gaze05", 0.5), ("gaze10", 1.0)):
                d, ms = gaze_dice(seg, emb, case, geometry, sigma, 1000 + i, fcfg, pcfg)
                r[key].append(d)
                lat_vote.append(ms)
                d, ms = gaze_dice(seg, emb, case, geometry, sigma, 1000 + i, fcfg, LIVE_PROMPT_CONFIG)
                r["live" + key[4:]].append(d)
                lat.append(ms)
        m = {k: float(np.mean(v)) for k, v in r.items()}
        print(f"{name:8s} {len(cases):4d} {m['box']:7.4f} {m['gaze05']:7.4f} {m['gaze10']:7.4f} "
              f"{m['gaze05'] / m['box']:7.3f} {m['gaze10'] / m['box']:7.3f} {m['live05']:7.4f} {m['live10']:7.4f}")
        for k in rows:
            rows[k] += r[k]
    allm = {k: float(np.mean(v)) for k, v in rows.items()}
    print(f"{'all':8s} {len(rows['box']):4d} {allm['box']:7.4f} {allm['gaze05']:7.4f} {allm['gaze10']:7.4f} "
          f"{allm['gaze05'] / allm['box']:7.3f} {allm['gaze10'] / allm['box']:7.3f} {allm['live05']:7.4f} "
          f"{allm['live10']:7.4f}")
    latency = float(np.median(lat))
    rate = live_rate(seg, sets["aal"][0], geometry)
    print(f"latency last fixation -> mask, live config (1 decode): median {latency:.0f} ms "
          f"(p90 {np.percentile(lat, 90):.0f} ms); 10-box vote: median {np.median(lat_vote):.0f} ms")
    print(f"runtime: {getattr(seg, 'runtime_report', None)}")
    print(f"live updates (1 decode each): {rate:.1f} per second of compute (torch threads {torch.get_num_threads()})")
    print(f"elapsed {time.time() - t_start:.0f} s")
    print(f"RESULT box={allm['box']:.4f} gaze05={allm['gaze05']:.4f} gaze10={allm['gaze10']:.4f} "
          f"latency_ms={latency:.1f} live_hz={rate:.2f}")


if __name__ == "__main__":
    main()
