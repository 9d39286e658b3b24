"""Synthetic multi-sequence MRI phantoms where the target is visible ONLY by combining two sequences.

Each case is a small head-like volume seen in three co-registered "sequences":
- t2:    target T and a distractor D2 touching it are equally bright (T cannot be told from D2);
- flair: target T and another distractor DF, on another side, are equally bright;
- t1:    anatomy only (head, "ventricles"), nothing about T.
T is exactly the voxels bright in BOTH t2 and flair. A tight box around T also holds parts of D2 and
DF, so any single sequence shows one bright blob spilling out of T, and the three sequences stacked
as colour channels show T plus both distractors. Only a fusion that combines t2 AND flair finds T.

Written as a BraTS-style folder (one folder per case, one NIfTI per sequence, seg.nii.gz label map):

    .venv/bin/python bench/phantoms.py OUT_DIR --cases 12
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEQUENCES = ("t1", "t2", "flair")


@dataclass(frozen=True)
class PhantomSpec:
    size: int = 96  # in-plane pixels (square)
    slices: int = 2  # slices per case; the target runs through all of them
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)
    noise: float = 0.03


def _ellipse(yy, xx, cy, cx, ry, rx, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def make_case(rng: np.random.Generator, spec: PhantomSpec = PhantomSpec()) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({sequence: [z, y, x] float32}, target [z, y, x] uint8)."""
    n, nz = spec.size, spec.slices
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    head = _ellipse(yy, xx, n / 2, n / 2, 0.44 * n, 0.38 * n, 0.0)
    seqs = {name: np.zeros((nz, n, n), np.float32) for name in SEQUENCES}
    target = np.zeros((nz, n, n), np.uint8)
    # Target: an ellipse in the middle third, radius ~ 9-14 % of the field.
    cy, cx = rng.uniform(0.38, 0.62, 2) * n
    r = rng.uniform(0.09, 0.14) * n
    ang_t = rng.uniform(0, np.pi)
    # Distractors: same size, centred ~0.9-1.1 radii away on (roughly) opposite sides, so each
    # overlaps the target's box but the two do not overlap each other much.
    theta = rng.uniform(0, 2 * np.pi)
    d2 = (theta, rng.uniform(0.9, 1.1) * r)
    df = (theta + np.pi + rng.uniform(-0.6, 0.6), rng.uniform(0.9, 1.1) * r)
    vent = _ellipse(yy, xx, n / 2, n / 2 + rng.uniform(-3, 3), 0.12 * n, 0.05 * n, 0.0)
    for z in range(nz):
        shrink = 1.0 - 0.15 * abs(z - (nz - 1) / 2) / max(1, nz)  # slightly smaller away from the middle
        t = _ellipse(yy, xx, cy, cx, r * shrink, 0.85 * r * shrink, ang_t) & head
        a = _ellipse(yy, xx, cy + d2[1] * np.sin(d2[0]), cx + d2[1] * np.cos(d2[0]), r * shrink, r * shrink, 0) & head
        b = _ellipse(yy, xx, cy + df[1] * np.sin(df[0]), cx + df[1] * np.cos(df[0]), r * shrink, r * shrink, 0) & head
        a &= ~b  # distractors touch the target, not each other
        b &= ~a
        target[z] = t
        base = 0.35 * head + 0.05 * np.sin(xx / 7.0 + z) * head  # soft "gyri" texture
        seqs["t1"][z] = base + 0.3 * head - 0.35 * vent
        # Lesions are written over the anatomy (not added to it), so where T overlaps a ventricle
        # no brighter spot gives T away in a single sequence.
        seqs["t2"][z] = np.where(t | a, 0.8, base + 0.3 * vent)
        seqs["flair"][z] = np.where(t | b, 0.8, base - 0.2 * vent)
    bias = 1.0 + 0.1 * (xx - n / 2) / n  # a mild bias field, as on real MRI
    for name in SEQUENCES:
        seqs[name] = np.clip(seqs[name] * bias + rng.normal(0, spec.noise, seqs[name].shape), 0, None).astype(np.float32)
    return seqs, target


def write_case(folder: Path, seqs: dict[str, np.ndarray], target: np.ndarray, spec: PhantomSpec = PhantomSpec()) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)

    def write(arr: np.ndarray, name: str) -> None:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spec.spacing)
        # An oblique-free LPS geometry with a non-trivial origin, as a scanner would write it.
        img.SetOrigin((-72.0, -72.0, 10.0))
        sitk.WriteImage(img, str(folder / name), True)

    for name, arr in seqs.items():
        write(arr, f"{name}.nii.gz")
    write(target.astype(np.uint8), "seg.nii.gz")
    return folder


def write_phantom_dataset(out: str | Path, cases: int = 12, seed: int = 0, spec: PhantomSpec = PhantomSpec()) -> Path:
    """A BraTS-style folder of `cases` phantom cases (case000, case001, ...). Deterministic in `seed`."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for i in range(cases):
        seqs, target = make_case(rng, spec)
        write_case(out / f"case{i:03d}", seqs, target, spec)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_phantom_dataset(a.out, a.cases, a.seed, PhantomSpec(slices=a.slices)))
