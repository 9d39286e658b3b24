"""3-D: slice propagation vs per-slice tight boxes on Colin27 and deformed subjects, volume timing, text-query 3-D Dice.

    .venv/bin/python bench/volume.py [--estimate-cold] [--deformed N] [--no-query] [--zoom] [--structures A,B]
                                     [--boxes-only] [--no-handover] [--no-cross-view]

- prop: 3-D Dice of propagation from ONE tight box on the middle slice of each structure (AAL regions
  + the brain mask), with the default stop rules (models/propagation.py);
- slice: 3-D Dice of the per-slice baseline: a tight box from the label on EVERY slice the
  structure touches (an oracle that needs a box per slice), segmented slice by slice through the
  same decode path as propagation (whole-slice embeddings; with --zoom both use the sticky zoomed
  crops of models/propagation.StickyZoom);
- leak / miss: slices propagated outside the structure's true z-extent / true slices not reached;
- volume_s / volume_warm_s: time to segment the brain through the 181-slice Colin27 volume without
  any cache (every touched slice encoded; --estimate-cold estimates it from a few fresh encodes) and
  with a warm disk cache (.bench-data/embeddings/colin27, filled untimed first: a reopened study).
- text: 3-D Dice of `segment-3d --query` (template registration -> per-slice boxes -> propagation).
- --deformed N (default 1): the same on N deformed Colin27 subjects (bench/deform.py); each needs
  its ~150 brain slices encoded once (disk cache .bench-data/embeddings/deformedK, ~1.5 min idle).
Ends with `RESULT prop_dice=... slice_dice=... volume_s=... volume_warm_s=... text_dice=...
prop_dice_colin27=... slice_dice_colin27=... prop_dice_deformed=... slice_dice_deformed=...`
(prop_dice/slice_dice: means over all subjects' structures).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from integrations.loaders import load_volume  # noqa: E402
from integrations.metrics import dice  # noqa: E402
from integrations.windowing import apply_window, volume_window  # noqa: E402
from models.cache import EmbeddingCache  # noqa: E402
from models.propagation import PropagationConfig, StickyZoom, propagate  # noqa: E402
from models.zoom import ZoomPolicy  # noqa: E402
from models.registry import build_segmenter  # noqa: E402
from prompting.promptset import PromptSet  # noqa: E402

MRICRON = Path("/usr/share/mricron/templates")
CACHE = ROOT / ".bench-data" / "embeddings"
# Compact structures: box propagation follows a blob from slice to slice. Cortical ribbons (e.g.
# Precentral_L) are left out: a probe showed a box around a gyrus ribbon loses it within a few
# slices (docs/volume.md, limits).
STRUCTURES = ("brain", "Putamen_L", "Putamen_R", "Caudate_L", "Caudate_R", "Thalamus_L", "Thalamus_R",
              "Hippocampus_L", "Hippocampus_R", "Amygdala_L", "Insula_L", "Cerebelum_6_L")
QUERIES = {"left putamen": "Putamen_L", "right thalamus": "Thalamus_R", "left hippocampus": "Hippocampus_L",
           "brain": "brain"}


def aal_names() -> dict[str, int]:
    out = {}
    for line in (MRICRON / "aal.nii.txt").read_text().splitlines():
        p = line.split()
        if len(p) >= 2 and p[0].isdigit():
            out[p[1]] = int(p[0])
    return out


def tight_box(mask2d: np.ndarray) -> PromptSet:
    ys, xs = np.nonzero(mask2d)
    # a one-pixel-thin cross-section (seen on deformed subjects) still gets a box with an area
    return PromptSet.from_box(xs.min(), ys.min(), max(xs.max(), xs.min() + 1), max(ys.max(), ys.min() + 1))


def per_slice(seg, volume, truth: np.ndarray, bounds, config: PropagationConfig, z0: int) -> np.ndarray:
    """The oracle baseline: a tight box on every slice, decoded the way propagation decodes (zoom included)."""
    out = np.zeros(truth.shape, bool)
    zs = [int(z) for z in np.nonzero(truth.reshape(truth.shape[0], -1).any(1))[0] if truth[z].sum() >= 2]
    # Outwards from the anchor slice, like propagation, so sticky zoom windows are chosen the same way.
    for side in ([z for z in zs if z >= z0], [z for z in zs if z < z0][::-1]):
        zoomer = StickyZoom(config.zoom or ZoomPolicy())
        for z in side:
            img = apply_window(volume.voxels[z], bounds)
            prompt = tight_box(truth[z])
            if config.zoom is not None and config.zoom.applies(prompt.box, img.shape[:2]):
                out[z] = zoomer.decode(seg, img, prompt)[0].mask
            else:
                zoomer.window = None
                out[z] = seg.decode(seg.embed(img), prompt).mask
    return out


def middle_slice(truth: np.ndarray) -> int:
    zs = np.nonzero(truth.reshape(truth.shape[0], -1).sum(1) >= 10)[0]
    return int(zs[len(zs) // 2])


def evaluate_subject(seg, name: str, volume, masks: dict[str, np.ndarray], config: PropagationConfig) -> list[tuple]:
    bounds = volume_window(volume, None)
    rows = []
    for s, truth in masks.items():
        z = middle_slice(truth)
        t0 = time.perf_counter()
        res = propagate(seg, volume, {z: tight_box(truth[z])}, window=bounds, label=s, config=config)
        dt = time.perf_counter() - t0
        base = per_slice(seg, volume, truth, bounds, config, z)
        zs = np.nonzero(truth.reshape(truth.shape[0], -1).any(1))[0]
        pz = set(int(k) for k in np.nonzero(res.mask.reshape(res.mask.shape[0], -1).any(1))[0])
        tz = set(int(k) for k in zs)
        rng = res.slice_range or (-1, -1)
        stops = "; ".join(f"{'up' if e.direction > 0 else 'down'}@{e.index}: {e.reason}" for e in res.stops)
        rows.append((name, s, dice(res.mask, truth), dice(base, truth), f"{zs.min()}..{zs.max()}", f"{rng[0]}..{rng[1]}",
                     res.volume_ml, truth.sum() * volume.voxel_volume_ml, dt, len(pz - tz), len(tz - pz)))
        print(f"  {name:<10} {s:<14} prop {rows[-1][2]:.3f}  slice {rows[-1][3]:.3f}  truth z {rows[-1][4]:<9} "
              f"prop z {rows[-1][5]:<9} leak {rows[-1][9]:3d} miss {rows[-1][10]:3d}  {res.volume_ml:7.2f} mL "
              f"(truth {rows[-1][7]:.2f})  {dt:5.1f} s  [{stops}]", flush=True)
    return rows


def timing(seg_factory, volume, brain: np.ndarray, estimate: bool, config: PropagationConfig) -> tuple[float, float, float, str]:
    """(cold s, warm-from-disk s, warm-in-memory s, how the cold time was obtained) for the brain mask."""
    disk = CACHE / "colin27"
    z = middle_slice(brain)
    prompt = {z: tight_box(brain[z])}
    # Prime the disk cache with every slice this propagation touches (untimed), so "warm" is warm.
    primed = propagate(seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=disk)), volume, prompt, config=config)
    touched = len(primed.slices) + len(primed.stops)  # stopped-at slices were encoded too
    if primed.cross_view is not None:
        touched += sum(primed.cross_view.decoded.values())  # slices of the other views
    seg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=disk))  # a new process's view: embeddings on disk only
    t0 = time.perf_counter()
    propagate(seg, volume, prompt, config=config)
    warm_disk = time.perf_counter() - t0
    t0 = time.perf_counter()
    propagate(seg, volume, prompt, config=config)
    warm_mem = time.perf_counter() - t0
    if estimate:
        # Fresh encodes of a few slices (memory-only cache) give this run's encoder cost per slice.
        seg = seg_factory(EmbeddingCache())
        bounds = volume_window(volume, None)
        sample = list(range(z - 2, z + 2))
        t0 = time.perf_counter()
        for k in sample:
            seg.embed(apply_window(volume.voxels[k], bounds))
        per = (time.perf_counter() - t0) / len(sample)
        return touched * per + warm_mem, warm_disk, warm_mem, (
            f"estimated: {touched} slices touched x {per:.2f} s/slice (fresh encodes of {len(sample)} slices) + decoding")
    seg = seg_factory(EmbeddingCache(max_bytes=1 << 30))  # no disk tier: every slice is encoded
    t0 = time.perf_counter()
    propagate(seg, volume, prompt, config=config)
    return time.perf_counter() - t0, warm_disk, warm_mem, f"measured: {touched} slices encoded"


def text_queries(seg, volume, masks: dict[str, np.ndarray], config: PropagationConfig) -> list[tuple]:
    from app.cli_volume import localise_query
    from prompting.template_localiser import TemplateLocaliser

    loc = TemplateLocaliser()
    rows = []
    bounds = volume_window(volume, None)
    for q, s in QUERIES.items():
        t0 = time.perf_counter()
        boxes, label, notes = localise_query(volume, q, localiser=loc)
        seeds = {z: PromptSet(box=b, label=label) for z, b in boxes.items()}
        res = propagate(seg, volume, seeds, window=bounds, label=label, config=config) if seeds else None
        d = dice(res.mask, masks[s]) if res is not None else 0.0
        rows.append((q, s, d, time.perf_counter() - t0))
        print(f"  query {q!r:<20} -> {label:<16} 3-D Dice {d:.3f}  ({rows[-1][3]:.1f} s)", flush=True)
    return rows


def mean_of(rows: list[tuple], col: int) -> float:
    return float(np.mean([r[col] for r in rows])) if rows else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimate-cold", action="store_true",
                    help="estimate the cold (no cache) volume time from a few fresh encodes instead of encoding every slice")
    ap.add_argument("--deformed", type=int, default=1, help="also N deformed subjects (bench/deform.py)")
    ap.add_argument("--no-query", action="store_true")
    ap.add_argument("--zoom", action="store_true",
                    help="propagation AND the per-slice baseline decode small structures on re-encoded crops (many more encodes)")
    ap.add_argument("--boxes-only", action="store_true",
                    help="next slices from boxes alone, without the propagation decoder (PropagationConfig(prior=False))")
    ap.add_argument("--no-handover", action="store_true",
                    help="the propagation decoder's chain alone, no box chain beside it (PropagationConfig(prior_handover=False))")
    ap.add_argument("--no-cross-view", action="store_true", help="no cross-view refinement")
    ap.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated subset (AAL names or 'brain')")
    ap.add_argument("--threads", type=int, default=None, help="torch/ONNX threads (default: library default)")
    a = ap.parse_args()

    config = PropagationConfig(zoom=ZoomPolicy() if a.zoom else None, prior=not a.boxes_only, prior_handover=not a.no_handover,
                               cross_view=None if a.no_cross_view else PropagationConfig().cross_view)
    structures = [s for s in a.structures.split(",") if s]
    seg_factory = lambda cache: build_segmenter("litemedsam", cache=cache, num_threads=a.threads)  # noqa: E731
    t1 = load_volume(MRICRON / "ch2.nii.gz")
    aal = np.rint(load_volume(MRICRON / "aal.nii.gz").voxels).astype(np.int32)
    brain = load_volume(MRICRON / "ch2bet.nii.gz").voxels > 0
    ids = aal_names()
    masks = {s: (brain if s == "brain" else aal == ids[s]) for s in structures}

    print(f"Colin27: {t1.num_slices} axial slices of {t1.shape[2]}x{t1.shape[1]}; CPU shared with other jobs: timings are noisy")
    print(f"config: {config.describe()}")
    cold_s, warm_disk, warm_mem, how = timing(seg_factory, t1, brain, a.estimate_cold, config)
    seg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=CACHE / "colin27"))
    rows = evaluate_subject(seg, "colin27", t1, masks, config)
    n_colin = len(rows)

    if a.deformed:
        from bench.deform import deformed_subject

        for k in range(a.deformed):
            subj = deformed_subject(k)
            print(f"deformed{k}: warp {subj.warp}")
            dseg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=CACHE / f"deformed{k}"))
            dmasks = {s: subj.label_mask(s) for s in structures}
            rows += evaluate_subject(dseg, f"deformed{k}", subj.t1, dmasks, config)

    qrows = [] if a.no_query else text_queries(seg, t1, masks_for_queries(masks, aal, brain, ids), config)

    print()
    print(f"{'subject':<10} {'structure':<14} {'prop':>6} {'slice':>6} {'ratio':>6} {'truth z':>9} {'prop z':>9} {'leak':>5} {'miss':>5} {'mL':>8} {'truth mL':>9}")
    for r in rows:
        print(f"{r[0]:<10} {r[1]:<14} {r[2]:6.3f} {r[3]:6.3f} {r[2] / max(r[3], 1e-9):6.2f} {r[4]:>9} {r[5]:>9} {r[9]:5d} {r[10]:5d} {r[6]:8.2f} {r[7]:9.2f}")
    groups = [("colin27", rows[:n_colin]), ("deformed", rows[n_colin:]), ("all", rows)]
    summary = {}
    for gname, grows in groups:
        if not grows:
            continue
        p, sl = mean_of(grows, 2), mean_of(grows, 3)
        summary[gname] = (p, sl)
        print(f"{'mean ' + gname:<25} {p:6.3f} {sl:6.3f} {p / sl:6.2f}   ({len(grows)} structures; target: prop >= 0.9 x slice)")
    print()
    print(f"brain through {t1.num_slices} slices: cold {cold_s:.1f} s ({how}); warm from disk cache {warm_disk:.1f} s; "
          f"warm in memory {warm_mem:.1f} s")
    prop, sl = summary["all"]
    result = f"RESULT prop_dice={prop:.4f} slice_dice={sl:.4f} volume_s={cold_s:.2f} volume_warm_s={warm_disk:.2f}"
    if qrows:
        print()
        print(f"{'text query':<22} {'structure':<16} {'3-D Dice':>8}")
        for q, s, d, _ in qrows:
            print(f"{q:<22} {s:<16} {d:8.3f}")
        result += f" text_dice={float(np.mean([r[2] for r in qrows])):.4f}"
    for gname in ("colin27", "deformed"):
        if gname in summary:
            result += f" prop_dice_{gname}={summary[gname][0]:.4f} slice_dice_{gname}={summary[gname][1]:.4f}"
    print(result)


def masks_for_queries(masks: dict[str, np.ndarray], aal: np.ndarray, brain: np.ndarray, ids: dict[str, int]) -> dict[str, np.ndarray]:
    """The query targets' masks, whether or not they are in the --structures subset."""
    out = dict(masks)
    for s in QUERIES.values():
        if s not in out:
            out[s] = brain if s == "brain" else aal == ids[s]
    return out


if __name__ == "__main__":
    main()
