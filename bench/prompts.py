"""Dice per prompt mode with the simulated users of DESIGN.md, and uncertainty vs error.

    .venv/bin/python bench/prompts.py [--max-cases 40] [--sets aal,brain,nuclei] [--seed 0]

Modes (same cases, same embeddings, same run):
  box            tight bounding box (the reference)
  box_j          each edge jittered by U(-10 %, +10 %)
  click1         one click (deepest interior point + N(0, 2 px)) -> box proposals (prompting/clicks)
  click3         click1 + 2 corrections, each at the largest error region (positive/negative)
  scribble       one foreground stroke (skeleton of the eroded mask) -> prompting/scribbles
  box_negscribble  tight box + one background stroke near the border outside the target
Uncertainty: models/uncertainty on the tight-box result; Spearman(score, 1 - Dice) over all cases.
Images: each case's raw slice windowed by the `auto` percentile window (integrations.windowing),
each distinct `Case.group` image encoded once. Subsampling (`--max-cases` per set) takes evenly
spaced cases; the cases used are printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from bench import simulated_users as su  # noqa: E402
from bench.devdata import aal_cases, brain_cases, nuclei_cases  # noqa: E402
from integrations.metrics import dice  # noqa: E402
from integrations.windowing import apply_window, get_window, window_bounds  # noqa: E402
from models.registry import build_segmenter  # noqa: E402
from models.uncertainty import UncertaintyConfig, segment_with_uncertainty  # noqa: E402
from prompting.clicks import correct_with_click, propose_from_points  # noqa: E402
from prompting.promptset import PromptSet  # noqa: E402
from prompting.scribbles import Scribble, propose_from_scribbles  # noqa: E402

MODES = ("box", "box_j", "click1", "click3", "scribble", "box_negscribble")
SETS = {"aal": aal_cases, "brain": brain_cases, "nuclei": nuclei_cases}


def subsample(cases: list, n: int | None) -> list:
    if not n or len(cases) <= n:
        return cases
    return [cases[i] for i in np.linspace(0, len(cases) - 1, n).round().astype(int)]


def run_case(seg, emb, img, mask, rng, n_clicks: int = 3) -> tuple[dict[str, float], float]:
    out = {}
    tight = PromptSet.from_box(*su.tight_box(mask))
    res = segment_with_uncertainty(seg, emb, tight, UncertaintyConfig())
    out["box"] = dice(res.mask, mask)
    out["box_j"] = dice(seg.decode(emb, PromptSet.from_box(*su.jittered_box(mask, rng))).mask, mask)

    ps = propose_from_points(seg, emb, img, [su.click(mask, rng)])
    r = seg.decode(emb, ps)
    out["click1"] = dice(r.mask, mask)
    for _ in range(n_clicks - 1):
        c = su.correction_click(mask, r.mask, rng)
        if c is None:
            break
        ps = correct_with_click(seg, emb, ps, r.low_res_logits, c)
        r = seg.decode(emb, ps)
    out["click3"] = dice(r.mask, mask)

    fg = Scribble(su.scribble(mask, rng), width=3.0, positive=True)
    out["scribble"] = dice(seg.decode(emb, propose_from_scribbles(seg, emb, [fg])).mask, mask)

    bg = su.background_scribble(mask, rng)
    if len(bg):
        ps = propose_from_scribbles(seg, emb, [Scribble(bg, 3.0, False)], box=tight.box)
        out["box_negscribble"] = dice(seg.decode(emb, ps).mask, mask)
    else:
        out["box_negscribble"] = out["box"]
    return out, float(res.uncertainty)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-cases", type=int, default=40, help="cases per set, evenly spaced (0 = all)")
    ap.add_argument("--sets", default="aal,brain,nuclei")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    seg = build_segmenter("litemedsam")
    rows: dict[str, list[dict[str, float]]] = {}
    unc, err = [], []
    t0 = time.perf_counter()
    for set_name in args.sets.split(","):
        cases = subsample(SETS[set_name](), args.max_cases)
        rng = np.random.default_rng(args.seed)
        embs: dict[str, tuple] = {}
        rows[set_name] = []
        for c in cases:
            if c.group not in embs:
                img = apply_window(c.image, window_bounds(get_window("auto"), c.image))
                embs[c.group] = (img, seg.embed(img))
            img, emb = embs[c.group]
            d, u = run_case(seg, emb, img, c.mask, rng)
            rows[set_name].append(d)
            unc.append(u)
            err.append(1.0 - d["box"])
        print(f"{set_name}: {len(cases)} cases, {len(embs)} images encoded, "
              f"{time.perf_counter() - t0:.0f} s so far", flush=True)

    all_rows = [r for rs in rows.values() for r in rs]
    print()
    header = f"{'mode':<16}" + "".join(f"{s:>10}" for s in rows) + f"{'all':>10}{'vs box':>9}"
    print(header)
    print("-" * len(header))
    means = {m: float(np.mean([r[m] for r in all_rows])) for m in MODES}
    for m in MODES:
        line = f"{m:<16}" + "".join(f"{np.mean([r[m] for r in rs]):>10.3f}" for rs in rows.values())
        print(line + f"{means[m]:>10.3f}{means[m] / means['box']:>9.2f}")
    rho = float(spearmanr(unc, err).statistic) if len(unc) > 2 else float("nan")
    print(f"\ncases: " + ", ".join(f"{s}={len(rs)}" for s, rs in rows.items()) + f" (max {args.max_cases} per set, seed {args.seed})")
    print(f"targets: click1 >= 0.90 x box: {means['click1'] >= 0.9 * means['box']}; click3 >= box: "
          f"{means['click3'] >= means['box']}; scribble >= box: {means['scribble'] >= means['box']}; spearman >= 0.4: {rho >= 0.4}")
    print(f"uncertainty (tight box, K={UncertaintyConfig().samples}) vs 1 - Dice: Spearman {rho:.3f} over {len(unc)} cases")
    print(f"total {time.perf_counter() - t0:.0f} s (shared CPU: timings are noisy)")
    print("RESULT " + " ".join(f"{m}={means[m]:.4f}" for m in MODES) + f" spearman={rho:.4f}")


if __name__ == "__main__":
    main()
