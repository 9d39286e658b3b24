"""3-D: slice propagation vs per-slice tight boxes on Colin27, volume timing, text-query 3-D Dice.

    .venv/bin/python bench/volume.py [--cold] [--deformed N] [--no-query]

- prop: 3-D Dice of propagation from ONE tight box on the middle slice of each structure (AAL regions
  + the brain mask), with the default stop rules (models/propagation.py);
- slice: 3-D Dice of the per-slice baseline: a tight box from the label on EVERY slice the
  structure touches (an oracle that needs a box per slice), segmented slice by slice;
- volume_s / volume_warm_s: time to segment the brain through the 181-slice Colin27 volume without
  and with the embedding cache. Encoding 181 slices takes minutes on this CPU, so the embeddings go
  to a disk cache (.bench-data/embeddings/colin27) once; when it exists, the cold time is estimated
  from fresh encodes of a few slices this run (said in the output); --cold measures it for real.
- text: 3-D Dice of `segment-3d --query` (template registration -> per-slice boxes -> propagation).
- --deformed N: the same on N deformed Colin27 subjects (bench/deform.py); each needs its slices
  encoded once (disk cache), so it is off by default on a shared 2-core machine.
Ends with `RESULT prop_dice=... slice_dice=... volume_s=... volume_warm_s=...` (+ text_dice).
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
from models.propagation import propagate  # noqa: E402
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
    return PromptSet.from_box(xs.min(), ys.min(), xs.max(), ys.max())


def per_slice(seg, volume, truth: np.ndarray, bounds) -> np.ndarray:
    out = np.zeros(truth.shape, bool)
    for z in np.nonzero(truth.reshape(truth.shape[0], -1).any(1))[0]:
        if truth[z].sum() < 2:
            continue
        emb = seg.embed(apply_window(volume.voxels[z], bounds))
        out[z] = seg.decode(emb, tight_box(truth[z])).mask
    return out


def middle_slice(truth: np.ndarray) -> int:
    zs = np.nonzero(truth.reshape(truth.shape[0], -1).sum(1) >= 10)[0]
    return int(zs[len(zs) // 2])


def evaluate_subject(seg, name: str, volume, masks: dict[str, np.ndarray]) -> list[tuple]:
    bounds = volume_window(volume, None)
    rows = []
    for s, truth in masks.items():
        z = middle_slice(truth)
        t0 = time.perf_counter()
        res = propagate(seg, volume, {z: tight_box(truth[z])}, window=bounds, label=s)
        dt = time.perf_counter() - t0
        base = per_slice(seg, volume, truth, bounds)
        zs = np.nonzero(truth.reshape(truth.shape[0], -1).any(1))[0]
        rng = res.slice_range or (-1, -1)
        rows.append((name, s, dice(res.mask, truth), dice(base, truth), f"{zs.min()}..{zs.max()}", f"{rng[0]}..{rng[1]}",
                     res.volume_ml, truth.sum() * volume.voxel_volume_ml, dt))
        print(f"  {name:<10} {s:<14} prop {rows[-1][2]:.3f}  slice {rows[-1][3]:.3f}  truth z {rows[-1][4]:<9} "
              f"prop z {rows[-1][5]:<9} {res.volume_ml:7.2f} mL (truth {rows[-1][7]:.2f})  {dt:5.1f} s", flush=True)
    return rows


def timing(seg_factory, volume, brain: np.ndarray, cold: bool) -> tuple[float, float, float, str]:
    """(cold s, warm-from-disk s, warm-in-memory s, how the cold time was obtained)."""
    disk = CACHE / "colin27"
    z = middle_slice(brain)
    prompt = {z: tight_box(brain[z])}
    probe = seg_factory(EmbeddingCache(max_bytes=1 << 20, disk_dir=disk))
    bounds = volume_window(volume, None)
    # Identical slices (blank ends) share one content key: check keys, not file counts.
    have_cache = all(probe.embedding_key(apply_window(volume.voxels[k], bounds)) in probe.cache
                     for k in range(volume.num_slices))
    how = "measured"
    if cold or not have_cache:
        seg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=disk))
        t0 = time.perf_counter()
        res = propagate(seg, volume, prompt)
        cold_s = time.perf_counter() - t0
        touched = len(res.slices)
    else:
        # Fresh encodes of a few slices (memory-only cache) give this run's encoder cost per slice.
        seg = seg_factory(EmbeddingCache())
        sample = list(range(z - 2, z + 2))
        t0 = time.perf_counter()
        for k in sample:
            seg.embed(apply_window(volume.voxels[k], bounds))
        per = (time.perf_counter() - t0) / len(sample)
        cold_s = None
        how = f"estimated: slices touched x {per:.2f} s/slice (fresh encodes of {len(sample)} slices this run) + warm time"
    seg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=disk))  # a new process's view: embeddings on disk only
    t0 = time.perf_counter()
    res = propagate(seg, volume, prompt)
    warm_disk = time.perf_counter() - t0
    t0 = time.perf_counter()
    propagate(seg, volume, prompt)
    warm_mem = time.perf_counter() - t0
    if cold_s is None:
        touched = len(res.slices) + len(res.stops)  # stopped-at slices were encoded too
        cold_s = touched * per + warm_disk
    return cold_s, warm_disk, warm_mem, how


def text_queries(seg, volume, masks: dict[str, np.ndarray]) -> list[tuple]:
    from app.cli_volume import localise_query
    from prompting.template_localiser import TemplateLocaliser

    loc = TemplateLocaliser()
    rows = []
    bounds = volume_window(volume, None)
    for q, s in QUERIES.items():
        t0 = time.perf_counter()
        boxes, label, notes = localise_query(volume, q, localiser=loc)
        seeds = {z: PromptSet(box=b, label=label) for z, b in boxes.items()}
        res = propagate(seg, volume, seeds, window=bounds, label=label) if seeds else None
        d = dice(res.mask, masks[s]) if res is not None else 0.0
        rows.append((q, s, d, time.perf_counter() - t0))
        print(f"  query {q!r:<20} -> {label:<16} 3-D Dice {d:.3f}  ({rows[-1][3]:.1f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="measure the cold (no cache) volume time for real")
    ap.add_argument("--deformed", type=int, default=0, help="also N deformed subjects (bench/deform.py)")
    ap.add_argument("--no-query", action="store_true")
    a = ap.parse_args()

    seg_factory = lambda cache: build_segmenter("litemedsam", cache=cache)  # noqa: E731
    t1 = load_volume(MRICRON / "ch2.nii.gz")
    aal = np.rint(load_volume(MRICRON / "aal.nii.gz").voxels).astype(np.int32)
    brain = load_volume(MRICRON / "ch2bet.nii.gz").voxels > 0
    ids = aal_names()
    masks = {s: (brain if s == "brain" else aal == ids[s]) for s in STRUCTURES}

    print(f"Colin27: {t1.num_slices} axial slices of {t1.shape[2]}x{t1.shape[1]}; CPU shared with other jobs: timings are noisy")
    cold_s, warm_disk, warm_mem, how = timing(seg_factory, t1, brain, a.cold)
    seg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=CACHE / "colin27"))
    rows = evaluate_subject(seg, "colin27", t1, masks)

    if a.deformed:
        from bench.deform import deformed_subject

        for k in range(a.deformed):
            subj = deformed_subject(k)
            dseg = seg_factory(EmbeddingCache(max_bytes=1 << 30, disk_dir=CACHE / f"deformed{k}"))
            dmasks = {s: subj.label_mask(s) for s in STRUCTURES}
            rows += evaluate_subject(dseg, f"deformed{k}", subj.t1, dmasks)

    qrows = [] if a.no_query else text_queries(seg, t1, masks)

    print()
    print(f"{'subject':<10} {'structure':<14} {'prop':>6} {'slice':>6} {'ratio':>6} {'truth z':>9} {'prop z':>9} {'mL':>8} {'truth mL':>9}")
    for r in rows:
        print(f"{r[0]:<10} {r[1]:<14} {r[2]:6.3f} {r[3]:6.3f} {r[2] / max(r[3], 1e-9):6.2f} {r[4]:>9} {r[5]:>9} {r[6]:8.2f} {r[7]:9.2f}")
    prop = float(np.mean([r[2] for r in rows]))
    sl = float(np.mean([r[3] for r in rows]))
    print(f"{'mean':<25} {prop:6.3f} {sl:6.3f} {prop / sl:6.2f}   (target: prop >= 0.9 x slice)")
    print()
    print(f"brain through {t1.num_slices} slices: cold {cold_s:.1f} s ({how}); warm from disk cache {warm_disk:.1f} s; "
          f"warm in memory {warm_mem:.1f} s")
    result = f"RESULT prop_dice={prop:.4f} slice_dice={sl:.4f} volume_s={cold_s:.2f} volume_warm_s={warm_disk:.2f}"
    if qrows:
        print()
        print(f"{'text query':<22} {'structure':<16} {'3-D Dice':>8}")
        for q, s, d, _ in qrows:
            print(f"{q:<22} {s:<16} {d:8.3f}")
        result += f" text_dice={float(np.mean([r[2] for r in qrows])):.4f}"
    print(result)


if __name__ == "__main__":
    main()
