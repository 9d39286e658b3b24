"""Deformed Colin27 "patients" with exact labels (DESIGN.md): new subjects for localisation and 3D work.

One random, seeded warp per subject:
  affine: rotation U(-10, +10) degrees about each axis, scale U(-10 %, +10 %) per axis, translation
          U(-10, +10) mm per axis, all about the volume's physical centre;
  elastic: a cubic B-spline on a coarse control grid (default 5 x 5 x 5 cells) with N(0, sigma mm)
          control-point displacements (default 3 mm), smooth and invertible at these magnitudes;
  then on the T1 only: a smooth multiplicative bias field (exp of a random low-order polynomial,
          about +-15 %) and Gaussian noise (default 2 % of the intensity range).
The SAME warp moves the AAL labels (nearest neighbour) and the brain mask (ch2bet > 0, nearest
neighbour), so every label stays exact. The output grid is the input grid (same geometry).

    from bench.deform import deformed_subject
    subj = deformed_subject(seed=3)            # DeformedSubject(t1, aal, brain, names, seed, params)
    subj.t1.voxels, subj.aal.voxels == 37      # left hippocampus of this "patient"

Run `.venv/bin/python bench/deform.py --seed 0 --out /tmp/subj0` to write NIfTI files to look at.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from integrations.volume import Volume

MRICRON = Path("/usr/share/mricron/templates")


@dataclass(frozen=True)
class DeformParams:
    max_rotation_deg: float = 10.0
    max_scale: float = 0.10
    max_translation_mm: float = 10.0
    bspline_cells: int = 5
    bspline_sigma_mm: float = 3.0
    bias_strength: float = 0.15
    noise_fraction: float = 0.02


@dataclass
class DeformedSubject:
    t1: Volume  # deformed, biased, noisy T1
    aal: Volume  # AAL labels under the same warp (integer labels, nearest neighbour)
    brain: Volume  # brain mask under the same warp (uint8 0/1)
    names: dict[int, str]  # AAL label -> name
    seed: int
    params: DeformParams = field(default_factory=DeformParams)
    warp: dict = field(default_factory=dict)  # the drawn numbers, to report or reproduce

    def label_mask(self, name: str) -> np.ndarray:
        """[z, y, x] bool mask of an AAL region by name ("Hippocampus_L") or 'brain'."""
        if name.lower() == "brain":
            return self.brain.voxels > 0
        ids = [i for i, n in self.names.items() if n == name]
        if not ids:
            raise KeyError(f"no AAL region named {name!r}")
        return self.aal.voxels == ids[0]


def _to_sitk(vol: Volume, array: np.ndarray | None = None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.voxels if array is None else array))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(np.asarray(vol.direction, float).reshape(-1)))
    return img


def _random_transform(reference, params: DeformParams, rng: np.random.Generator):
    """Composite (affine then B-spline) mapping output physical points to input physical points."""
    import SimpleITK as sitk

    size = np.array(reference.GetSize())
    centre = reference.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in (size - 1) / 2.0))
    angles = np.deg2rad(rng.uniform(-params.max_rotation_deg, params.max_rotation_deg, 3))
    scales = 1.0 + rng.uniform(-params.max_scale, params.max_scale, 3)
    shift = rng.uniform(-params.max_translation_mm, params.max_translation_mm, 3)
    rot = sitk.Euler3DTransform()
    rot.SetRotation(*angles.tolist())
    matrix = np.asarray(rot.GetMatrix()).reshape(3, 3) @ np.diag(scales)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    affine.SetMatrix(tuple(matrix.reshape(-1)))
    affine.SetTranslation(tuple(shift.tolist()))

    bspline = sitk.BSplineTransformInitializer(reference, [params.bspline_cells] * 3, 3)
    n = len(bspline.GetParameters())
    disp = rng.normal(0.0, params.bspline_sigma_mm, n)
    bspline.SetParameters(tuple(disp.tolist()))

    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(bspline)
    warp = {"rotation_deg": np.rad2deg(angles).round(2).tolist(), "scale": scales.round(4).tolist(),
            "translation_mm": shift.round(2).tolist(), "bspline_sigma_mm": params.bspline_sigma_mm}
    return composite, warp


def _bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """exp(random quadratic polynomial in normalised coordinates), scaled to about +-strength."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape], indexing="ij")
    terms = list(grids) + [g * g for g in grids] + [grids[i] * grids[j] for i in range(len(grids)) for j in range(i + 1, len(grids))]
    coef = rng.normal(0.0, 1.0, len(terms))
    poly = sum(c * t for c, t in zip(coef, terms))
    poly = poly / (np.abs(poly).max() + 1e-6)
    return np.exp(strength * poly).astype(np.float32)


def deform_volumes(t1: Volume, labels: Volume, brain: Volume, seed: int, params: DeformParams = DeformParams()):
    """Warp (t1, labels, brain) with one seeded random transform; returns (t1', labels', brain', warp)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    ref = _to_sitk(t1, t1.voxels.astype(np.float32))
    transform, warp = _random_transform(ref, params, rng)
    # One dense field, resampled three times: cheaper than evaluating the B-spline three times.
    field_img = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                                  ref.GetSpacing(), ref.GetDirection())
    dense = sitk.DisplacementFieldTransform(field_img)

    def warp_image(img, interp, default):
        return sitk.GetArrayFromImage(sitk.Resample(img, ref, dense, interp, default, img.GetPixelID()))

    moved_t1 = warp_image(ref, sitk.sitkLinear, 0.0).astype(np.float32)
    moved_lab = warp_image(_to_sitk(labels, labels.voxels.astype(np.int16)), sitk.sitkNearestNeighbor, 0)
    moved_brain = warp_image(_to_sitk(brain, (brain.voxels > 0).astype(np.uint8)), sitk.sitkNearestNeighbor, 0)

    hi = float(np.percentile(moved_t1, 99.5)) or 1.0
    moved_t1 = moved_t1 * _bias_field(moved_t1.shape, params.bias_strength, rng)
    moved_t1 = moved_t1 + rng.normal(0.0, params.noise_fraction * hi, moved_t1.shape).astype(np.float32)
    moved_t1 = np.clip(moved_t1, 0.0, None).astype(np.float32)
    return (t1.with_voxels(moved_t1), labels.with_voxels(moved_lab.astype(np.int16)),
            brain.with_voxels(moved_brain.astype(np.uint8)), warp)


def load_colin27(folder: Path = MRICRON) -> tuple[Volume, Volume, Volume, dict[int, str]]:
    """(T1, AAL labels, brain mask, AAL names) from mricron-data's templates folder."""
    from integrations.loaders import load_volume

    if not (folder / "ch2.nii.gz").exists():
        raise FileNotFoundError(f"Colin27 is missing under {folder}: sudo apt-get install mricron-data")
    t1 = load_volume(folder / "ch2.nii.gz")
    aal = load_volume(folder / "aal.nii.gz")
    bet = load_volume(folder / "ch2bet.nii.gz")
    names = {}
    for line in (folder / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    aal = aal.with_voxels(np.rint(aal.voxels).astype(np.int16))
    return t1, aal, bet.with_voxels((bet.voxels > 0).astype(np.uint8)), names


@lru_cache(maxsize=2)
def _colin27_once(folder: str) -> tuple[Volume, Volume, Volume, dict[int, str]]:
    # The source volumes are only read (deform_volumes makes new arrays): sharing them saves ~1 s per subject.
    return load_colin27(Path(folder))


def deformed_subject(seed: int, params: DeformParams = DeformParams(), folder: Path = MRICRON) -> DeformedSubject:
    """Subject number `seed` (deterministic). Colin27 is read once per process."""
    t1, aal, brain, names = _colin27_once(str(folder))
    mt1, mlab, mbrain, warp = deform_volumes(t1, aal, brain, seed, params)
    return DeformedSubject(mt1, mlab, mbrain, names, seed, params, warp)


def deformed_subjects(n: int = 5, first_seed: int = 0, params: DeformParams = DeformParams()) -> list[DeformedSubject]:
    return [deformed_subject(s, params) for s in range(first_seed, first_seed + n)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder to write t1/aal/brain NIfTI files into")
    args = ap.parse_args()
    t0 = time.perf_counter()
    s = deformed_subject(args.seed)
    print(f"subject {args.seed}: {s.warp}  ({time.perf_counter() - t0:.1f} s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        import SimpleITK as sitk

        sitk.WriteImage(_to_sitk(s.t1), str(out / "t1.nii.gz"))
        sitk.WriteImage(_to_sitk(s.aal), str(out / "aal.nii.gz"))
        sitk.WriteImage(_to_sitk(s.brain), str(out / "brain.nii.gz"))
        print(f"wrote {out}")
