"""Dice per prompt mode with the simulated users of DESIGN.md, and uncertainty vs error.

    .venv/bin/python bench/prompts.py [--max-cases 10] [--sets aal,brain,nuclei] [--seed 0]
                                      [--offset 0] [--window default|auto|full] [--no-zoom]
                                      [--cache-dir /tmp/clinseg-emb-prompts]

Modes (same cases, same embeddings, same run):
  box            tight bounding box (the reference)
  box_j          each edge jittered by U(-10 %, +10 %)
  click1         one click (deepest interior point + N(0, 2 px)) -> the click decoder's reading or box
                 proposals (prompting.clicks.propose_from_points)
  click3         click1 + 2 corrections, each at the largest error region (positive/negative)
  scribble       one foreground stroke (the longest path through the eroded mask's skeleton) -> prompting/scribbles
  box_negscribble  tight box + one background stroke near the border outside the target
Every mode ends in the SAME decode path, the product's one-shot path (`models.zoom.segment_adaptive`,
what `app.pipeline.segment_best` runs): whole-slice decode, then a zoomed re-encode around a small box,
kept when the decoder rates it clearly better; for the one click and the foreground stroke, as the
app's Sharpen does, `models.reading_zoom` first reads them again on that crop and lets the learned
ranker choose among whole-slice and crop proposals (click3's corrections start from the whole-slice
result the user sees, and its result takes the gated zoom). What reaches the decoder is
`prompting.clicks.decoder_prompt` (box only for box-trained backends such as LiteMedSAM). `--no-zoom`
measures the interactive whole-slice path instead.
Uncertainty: models/uncertainty on the tight box (whole slice, K = 12 jittered boxes + multimask outputs); Spearman(score, 1 - Dice of that
whole-slice result) over all cases.
Images: each case's raw slice windowed by the product's default window for its modality
(`integrations.windowing.default_window`: min-max for MR and microscopy); each distinct image encoded
once (`--cache-dir` keeps embeddings on disk, so a re-run only decodes). `--max-cases` per set takes
evenly spaced cases, `--offset` (0..1) shifts them by a fraction of the spacing (a second subset).
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
from integrations.windowing import apply_window, default_window, get_window, window_bounds  # noqa: E402
from models.cache import EmbeddingCache  # noqa: E402
from models.registry import build_segmenter  # noqa: E402
from models.uncertainty import UncertaintyConfig, segment_with_uncertainty  # noqa: E402
from models.reading_zoom import sharpen_clicks, sharpen_scribbles  # noqa: E402
from models.zoom import ZoomPolicy, segment_adaptive  # noqa: E402
from prompting.clicks import ClickConfig, apply_click_edits, correct_with_click, decoder_prompt, propose_from_points  # noqa: E402
from prompting.promptset import PromptSet  # noqa: E402
from prompting.scribbles import Scribble, ScribbleConfig, propose_from_scribbles  # noqa: E402

MODES = ("box", "box_j", "click1", "click3", "scribble", "box_negscribble")
HAND_MODES = ("click1_hand", "scribble_hand")  # --hand: the hand-weighted proposal scores, same clicks/strokes
HAND_CLICK = ClickConfig(ranker=None)
HAND_STROKE = ScribbleConfig(ranker=None)
# Multimask outputs in the sampled set: with the default (min-max) window, box jitter alone gave
# Spearman 0.11 / 0.30 on the two 26-case subsets (offset 0 / 0.5), with the multimask outputs 0.74 / 0.76.
UNCERTAINTY = UncertaintyConfig(multimask=True)
SETS = {"aal": aal_cases, "brain": brain_cases, "nuclei": nuclei_cases}


def subsample(cases: list, n: int | None, offset: float = 0.0) -> list:
    """n evenly spaced cases; `offset` in [0, 1) shifts every index by that fraction of the spacing."""
    if not n or len(cases) <= n:
        return cases
    step = (len(cases) - 1) / max(1, n - 1)
    idx = np.clip(np.round(np.arange(n) * step + offset * step), 0, len(cases) - 1).astype(int)
    return [cases[i] for i in sorted(set(idx.tolist()))]


def one_shot(seg, img, prompt: PromptSet, zoom: ZoomPolicy | None):
    """The product's one-shot decode of a prompt (the same for every mode), then, as the app does
    (app.actions.honour_edge_clicks), correction clicks near the mask's edge honoured locally."""
    r = segment_adaptive(seg, img, decoder_prompt(seg, prompt), zoom)
    r.mask = apply_click_edits(r.mask, prompt.points)
    return r


def one_shot_scribble(seg, img, strokes, prompt: PromptSet, zoom: ZoomPolicy | None):
    """The one-shot path of foreground strokes (models.reading_zoom.sharpen_scribbles, what the app's
    Sharpen runs on a stroke result): for a small structure the strokes read again on a zoomed crop, the
    learned ranker choosing among whole-slice and crop proposals; then the edge edits, as `one_shot`."""
    r = sharpen_scribbles(seg, img, strokes, prompt, policy=zoom).segmentation
    r.mask = apply_click_edits(r.mask, prompt.points)
    return r


def one_shot_clicks(seg, img, clicks, prompt: PromptSet, zoom: ZoomPolicy | None):
    """The one-shot path of clicks (models.reading_zoom.sharpen_clicks, what the app's Sharpen runs on a
    click result): every click read again on the whole slice and on a zoomed crop, the learned ranker
    choosing; then the edge edits, as `one_shot`."""
    r = sharpen_clicks(seg, img, clicks, prompt, policy=zoom).segmentation
    r.mask = apply_click_edits(r.mask, prompt.points)
    return r


def run_case(seg, emb, img, mask, rng, zoom: ZoomPolicy | None, n_clicks: int = 3,
             hand: bool = False) -> tuple[dict[str, float], float]:
    out = {}
    tight = PromptSet.from_box(*su.tight_box(mask))
    # the uncertainty describes the whole-slice decode it was computed on: it is compared with that
    # result's error (the zoomed result comes from another embedding)
    unc = segment_with_uncertainty(seg, emb, tight, UNCERTAINTY)
    out["box_slice"] = dice(unc.mask, mask)
    out["box"] = dice(one_shot(seg, img, tight, zoom).mask, mask)
    out["box_j"] = dice(one_shot(seg, img, PromptSet.from_box(*su.jittered_box(mask, rng)), zoom).mask, mask)

    first_click = su.click(mask, rng)
    ps = propose_from_points(seg, emb, img, [first_click])
    r = one_shot(seg, img, ps, zoom)  # what the user sees and corrects (the corrections below start here)
    out["click1"] = dice(one_shot_clicks(seg, img, [first_click], ps, zoom).mask, mask)
    if hand:  # the same click ranked by the hand score (the baseline the learned ranker replaced)
        out["click1_hand"] = dice(one_shot(seg, img, propose_from_points(seg, emb, img, [first_click], HAND_CLICK), zoom).mask, mask)
    for _ in range(n_clicks - 1):
        c = su.correction_click(mask, r.mask, rng)
        if c is None:
            break
        ps = correct_with_click(seg, emb, ps, None, c, previous_mask=r.mask)
        r = one_shot(seg, img, ps, zoom)
    out["click3"] = dice(r.mask, mask)

    fg = Scribble(su.scribble(mask, rng), width=3.0, positive=True)
    out["scribble"] = dice(one_shot_scribble(seg, img, [fg], propose_from_scribbles(seg, emb, [fg], image01=img), zoom).mask, mask)
    if hand:
        out["scribble_hand"] = dice(one_shot(seg, img, propose_from_scribbles(seg, emb, [fg], cfg=HAND_STROKE), zoom).mask, mask)

    bg = su.background_scribble(mask, rng)
    if len(bg):
        stroke = Scribble(bg, 3.0, False)
        ps = propose_from_scribbles(seg, emb, [stroke], box=tight.box)
        r = one_shot(seg, img, ps, zoom)
        out["box_negscribble"] = dice(remove_stroke_pixels(r.mask, [stroke]), mask)
    else:
        out["box_negscribble"] = out["box"]
    return out, float(unc.uncertainty)


def remove_stroke_pixels(mask: np.ndarray, strokes) -> np.ndarray:
    from prompting.scribbles import negative_evidence, remove_negative

    return remove_negative(mask, negative_evidence(strokes, mask.shape))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-cases", type=int, default=10, help="cases per set, evenly spaced (0 = all)")
    ap.add_argument("--sets", default="aal,brain,nuclei")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offset", type=float, default=0.0, help="shift of the evenly spaced subset, fraction of its spacing")
    ap.add_argument("--window", default="default", help="'default' (the product's per-modality window) or a window name")
    ap.add_argument("--no-zoom", action="store_true", help="whole-slice decode only (the interactive path)")
    ap.add_argument("--cache-dir", default=os.environ.get("CLINSEG_BENCH_CACHE", "/tmp/clinseg-emb-prompts"),
                    help="on-disk embedding cache ('' = memory only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hand", action="store_true", help="also rank click/stroke proposals by the hand score (baseline rows)")
    args = ap.parse_args()

    seg = build_segmenter("litemedsam", cache=EmbeddingCache(disk_dir=args.cache_dir or None), num_threads=args.threads)
    zoom = None if args.no_zoom else ZoomPolicy()
    rows: dict[str, list[dict[str, float]]] = {}
    unc, err = [], []
    t0 = time.perf_counter()
    for set_name in args.sets.split(","):
        cases = subsample(SETS[set_name](), args.max_cases, args.offset)
        rng = np.random.default_rng(args.seed)
        images: dict[str, np.ndarray] = {}
        rows[set_name] = []
        for c in cases:
            if c.group not in images:
                window = default_window(c.modality) if args.window == "default" else get_window(args.window)
                images[c.group] = apply_window(c.image, window_bounds(window, c.image)).astype(np.float32)
            img = images[c.group]
            d, u = run_case(seg, seg.embed(img), img, c.mask, rng, zoom, hand=args.hand)
            rows[set_name].append(d)
            unc.append(u)
            err.append(1.0 - d["box_slice"])
        print(f"{set_name}: {len(cases)} cases, {len(images)} images, {time.perf_counter() - t0:.0f} s so far", flush=True)

    all_rows = [r for rs in rows.values() for r in rs]
    print()
    header = f"{'mode':<16}" + "".join(f"{s:>10}" for s in rows) + f"{'all':>10}{'vs box':>9}"
    print(header)
    print("-" * len(header))
    modes = MODES + (HAND_MODES if args.hand else ())
    means = {m: float(np.mean([r[m] for r in all_rows])) for m in modes}
    for m in modes:
        line = f"{m:<16}" + "".join(f"{np.mean([r[m] for r in rs]):>10.3f}" for rs in rows.values())
        print(line + f"{means[m]:>10.3f}{means[m] / means['box']:>9.2f}")
    rho = float(spearmanr(unc, err).statistic) if len(unc) > 2 else float("nan")
    print("\ncases: " + ", ".join(f"{s}={len(rs)}" for s, rs in rows.items())
          + f" (max {args.max_cases} per set, offset {args.offset}, seed {args.seed}); window {args.window}; "
          + ("whole-slice decode" if zoom is None else "one-shot path with zoom"))
    print(f"targets: click1 >= 0.90 x box: {means['click1'] >= 0.9 * means['box']}; click3 >= box: "
          f"{means['click3'] >= means['box']}; scribble >= box: {means['scribble'] >= means['box']}; spearman >= 0.4: {rho >= 0.4}")
    from prompting.proposal_ranker import load_ranker

    print("proposal rankers (never trained on these cases): " + "; ".join(f"{k}: {load_ranker(k).trained_on}" for k in ("click", "stroke")))
    print(f"uncertainty (tight box, K={UNCERTAINTY.samples}, multimask {UNCERTAINTY.multimask}) vs 1 - Dice: Spearman {rho:.3f} over {len(unc)} cases")
    print(f"total {time.perf_counter() - t0:.0f} s (shared CPU: timings are noisy)")
    print("RESULT " + " ".join(f"{m}={means[m]:.4f}" for m in MODES) + f" spearman={rho:.4f}")


if __name__ == "__main__":
    main()
