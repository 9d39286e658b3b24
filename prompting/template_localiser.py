"""MedLSAM-style template localisation: where is a named structure in THIS image?

A labelled template (default: Colin27 T1 + AAL atlas + brain mask from Debian's mricron-data, or
the 40-slice demo slab bundled in app/demo; any folder with a `template.json`) is registered to the
query image with SimpleITK: affine (Mattes mutual information, two-level pyramid, better of
identity / centre-of-mass start) then a cubic B-spline (L-BFGS-B). The target's template mask is
carried over with nearest-neighbour interpolation; its bounding box, per slice, is the SAM prompt.

Two entry points, both returning boxes with a confidence:
  localise_volume(volume, labels) -> VolumeLocalisation   (3-D registration; per-slice boxes)
  localise_slice(volume, z, labels) -> SliceLocalisation  (3-D registration when the volume has
                                       >= MIN_SLICES_3D slices, else 2-D registration of that slice)
  localise_image(image, spacing, labels) -> SliceLocalisation  (a lone 2-D axial image)
`labels` are template label names from a parsed query (`Target.labels`): ("Hippocampus_L",),
("Caudate_L", "Putamen_L", "Pallidum_L") or ("mask:brain",).

Registration is the expensive part (tens of seconds in 3-D on 2 CPU cores), so each
`TemplateLocaliser` keeps the registration and the warped label map per (template, image content)
in a small LRU: every further query on the same study costs only a lookup.

Confidence = registration quality (normalised cross-correlation of the warped template T1 with the
image inside the warped brain, mapped linearly from [NCC_FLOOR, NCC_GOOD] to [0, 1]) times the
structure's visibility on that slice (its area relative to its largest cross-section), so slivers at
the ends of a structure and poor registrations get low confidence and fusion can distrust them.

Licences: Colin27 (Holmes et al. 1998) and AAL (Tzourio-Mazoyer et al. 2002) as packaged by Debian's
mricron-data under MRIcron's BSD-3-clause terms; see docs/text.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from integrations.errors import ClinsegInputError
from integrations.volume import Volume

from .promptset import Box, PromptSource

ENV_TEMPLATE = "CLINSEG_TEMPLATE_DIR"
MRICRON = Path("/usr/share/mricron/templates")
DEMO = Path(__file__).resolve().parents[1] / "app" / "demo"
MIN_SLICES_3D = 16
NCC_FLOOR, NCC_GOOD = 0.30, 0.85


class TemplateError(ClinsegInputError):
    """No usable template, or a template that lacks the asked-for structure."""


@dataclass(frozen=True)
class RegistrationSettings:
    """Defaults suit 1 mm brain MRI on a laptop CPU; tests use coarser, shorter settings."""

    grid_mm: float = 3.0  # registration grid (both images resampled to this isotropic spacing)
    affine_iterations: int = 120
    bspline_iterations: int = 20
    bspline_spacing_mm: float = 40.0  # B-spline control-point spacing
    sampling: float = 0.15  # fraction of voxels the affine metric samples
    bspline_sampling: float = 0.05  # the B-spline metric's (its gradient is ~20x dearer per sample)
    seed: int = 7  # the metric's random sampling: same inputs -> same registration
    deformable: bool = True


@dataclass
class Template:
    name: str
    image: Volume  # intensities (T1 for the brain templates)
    labels: Volume  # integer labels on the same grid
    names: dict[int, str]  # label id -> name ("Hippocampus_L")
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # "brain" -> [z, y, x] bool on the same grid
    licence: str = ""

    def mask_for(self, labels: tuple[str, ...]) -> np.ndarray:
        """[z, y, x] bool template mask of the union of `labels` (names or 'mask:<name>')."""
        ids = _label_ids(self, labels)
        out = np.isin(self.labels.voxels, ids) if ids else np.zeros(self.labels.shape, bool)
        for lab in labels:
            if lab.startswith("mask:"):
                out |= self.masks[lab[5:]]
        return out

    def has(self, labels: tuple[str, ...]) -> bool:
        try:
            _label_ids(self, labels)
        except TemplateError:
            return False
        return True


def _label_ids(template: Template, labels: tuple[str, ...]) -> list[int]:
    by_name = {n: i for i, n in template.names.items()}
    ids = []
    for lab in labels:
        if lab.startswith("mask:"):
            if lab[5:] not in template.masks:
                raise TemplateError(f"template '{template.name}' has no '{lab[5:]}' mask")
            continue
        if lab not in by_name:
            raise TemplateError(f"template '{template.name}' has no label '{lab}'")
        ids.append(by_name[lab])
    return ids


def _read_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _filled_label_mask(labels: np.ndarray) -> np.ndarray:
    """Brain mask approximated from a cortical/subcortical parcellation: labels, closed and filled
    per slice (AAL leaves white matter unlabelled; closing + hole filling puts it back)."""
    from scipy import ndimage

    m = labels > 0
    m = ndimage.binary_closing(m, structure=np.ones((1, 7, 7), bool), iterations=2)
    return np.stack([ndimage.binary_fill_holes(s) for s in m])


def load_template(folder: str | Path | None = None) -> Template:
    """A template folder: `template.json`, mricron-data's layout (ch2 + aal + ch2bet), or the demo slab.

    Default: $CLINSEG_TEMPLATE_DIR, else /usr/share/mricron/templates, else the bundled demo slab.
    template.json: {"name", "image", "labels", "names" (a "<id> <name>" text file), "masks": {"brain": path}, "licence"}.
    """
    from integrations.loaders import load_volume

    if folder is None:
        folder = os.environ.get(ENV_TEMPLATE) or (MRICRON if (MRICRON / "ch2.nii.gz").exists() else DEMO)
    folder = Path(folder)
    if (folder / "template.json").exists():
        spec = json.loads((folder / "template.json").read_text())
        image = load_volume(folder / spec["image"])
        labels = load_volume(folder / spec["labels"])
        masks = {k: load_volume(folder / v).voxels > 0 for k, v in spec.get("masks", {}).items()}
        names = _read_names(folder / spec["names"])
        name, licence = spec.get("name", folder.name), spec.get("licence", "")
    elif (folder / "ch2.nii.gz").exists() and (folder / "aal.nii.gz").exists():
        image, labels = load_volume(folder / "ch2.nii.gz"), load_volume(folder / "aal.nii.gz")
        names = _read_names(folder / "aal.nii.txt")
        bet = folder / "ch2bet.nii.gz"
        masks = {"brain": (load_volume(bet).voxels > 0) if bet.exists() else _filled_label_mask(labels.voxels)}
        name, licence = "colin27-aal", "Colin27 + AAL, Debian mricron-data (BSD-3-clause, MRIcron)"
    elif (folder / "colin27_demo.nii.gz").exists():
        image, labels = load_volume(folder / "colin27_demo.nii.gz"), load_volume(folder / "colin27_demo_aal.nii.gz")
        names = _read_names(folder / "colin27_demo_aal.txt")
        masks = {"brain": _filled_label_mask(labels.voxels)}
        name, licence = "colin27-aal-demo-slab", "Colin27 + AAL slab (z 50-89), from Debian mricron-data (BSD-3-clause)"
    else:
        raise TemplateError(f"{folder} holds no template: expected template.json, ch2.nii.gz + aal.nii.gz "
                            f"(apt-get install mricron-data) or colin27_demo.nii.gz; set {ENV_TEMPLATE}")
    labels = labels.with_voxels(np.rint(labels.voxels).astype(np.int16))
    if labels.shape != image.shape:
        raise TemplateError(f"template labels {labels.shape} and image {image.shape} are not on one grid")
    return Template(name, image, labels, names, masks, licence)


# ---- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceLocalisation:
    labels: tuple[str, ...]
    slice_index: int | None
    box: Box | None  # None: the structure is not on this slice (or the registration failed)
    mask: np.ndarray  # (H, W) bool: the carried-over template mask
    confidence: float
    method: str  # "template registration (3-D)" / "(2-D)"
    notes: tuple[str, ...] = ()


@dataclass
class VolumeLocalisation:
    labels: tuple[str, ...]
    boxes: dict[int, Box]  # slice index -> box (only slices where the structure is)
    slice_confidence: dict[int, float]
    mask: np.ndarray  # [z, y, x] bool carried-over template mask
    confidence: float  # registration quality in [0, 1]
    method: str
    notes: tuple[str, ...] = ()

    def best_slice(self) -> int | None:
        """The slice where the structure has its largest cross-section."""
        if not self.boxes:
            return None
        areas = self.mask.reshape(self.mask.shape[0], -1).sum(1)
        return int(np.argmax(areas))


@dataclass
class Registration:
    """The template carried onto one image: warped labels and masks on the image's grid."""

    warped_labels: np.ndarray  # [z, y, x] (3-D) or (H, W) (2-D) int16
    warped_masks: dict[str, np.ndarray]
    quality: float  # NCC of warped template vs image inside the warped brain
    confidence: float
    seconds: float
    mode: str  # "3-D" or "2-D"
    template_slice: int | None = None  # 2-D: the template slice that matched best
    transform: object = None  # the SimpleITK transform (image point -> template point)
    key: str = ""  # cache key: template + image content + settings


# ---- SimpleITK helpers --------------------------------------------------------------------------
def _sitk_from(array: np.ndarray, spacing, origin, direction):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in np.asarray(direction).reshape(-1)))
    return img


def _volume_image(vol: Volume, array: np.ndarray | None = None):
    return _sitk_from(vol.voxels.astype(np.float32) if array is None else array, vol.spacing, vol.origin, vol.direction)


def _coarse(img, grid_mm: float):
    """Smooth (anti-alias) then resample to an isotropic grid of `grid_mm`, same origin/direction."""
    import SimpleITK as sitk

    spacing = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    new_spacing = np.maximum(spacing, grid_mm)
    new_size = np.maximum(1, np.round(size * spacing / new_spacing)).astype(int)
    sigma = [max(0.0, (n - s) / 2.0) for n, s in zip(new_spacing, spacing)]
    src = sitk.SmoothingRecursiveGaussian(img, sigma) if any(s > 0 for s in sigma) else img
    return sitk.Resample(src, [int(v) for v in new_size], sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                         tuple(float(v) for v in new_spacing), img.GetDirection(), 0.0, sitk.sitkFloat32)


def _normalised(img):
    """Intensities to [0, 1] by the 1st/99th percentile, so metric bins mean the same in both images."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(img).astype(np.float32)
    lo, hi = np.percentile(a, [1.0, 99.0])
    out = sitk.GetImageFromArray(np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32))
    out.CopyInformation(img)
    return out


def _method(settings: RegistrationSettings, iterations: int):
    import SimpleITK as sitk

    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(settings.sampling, settings.seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                               relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    return r


def register_affine(fixed, moving, settings: RegistrationSettings = RegistrationSettings()):
    """Affine transform (fixed point -> moving point) maximising mutual information.

    Starts from the better (by the metric) of identity (scanner coordinates already agree) and
    centre-of-mass alignment (they do not), then refines over a two-level pyramid.
    """
    import SimpleITK as sitk

    dim = fixed.GetDimension()
    starts = []
    for mode in ("identity", "moments"):
        t = sitk.AffineTransform(dim)
        if mode == "moments":
            c = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(dim),
                                                  sitk.CenteredTransformInitializerFilter.MOMENTS)
            t = sitk.AffineTransform(c)
        else:
            centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
            t.SetCenter(centre)
        r = _method(settings, 1)
        r.SetInitialTransform(t, inPlace=False)
        starts.append((r.MetricEvaluate(fixed, moving), t))
    init = min(starts, key=lambda s: s[0])[1]  # Mattes MI is negative: lower is better
    r = _method(settings, settings.affine_iterations)
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1.0, 0.0])
    r.SetInitialTransform(init, inPlace=False)
    out = r.Execute(fixed, moving)
    return sitk.AffineTransform(out.GetNthTransform(0) if isinstance(out, sitk.CompositeTransform) else out)


def register_bspline(fixed, moving, affine, settings: RegistrationSettings = RegistrationSettings()):
    """B-spline refinement on top of `affine`; returns the composite (fixed point -> moving point)."""
    import SimpleITK as sitk

    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = [int(max(1, round(e / settings.bspline_spacing_mm))) for e in extent]
    bs = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(settings.bspline_sampling, settings.seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.bspline_iterations,
                           maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * settings.bspline_iterations,
                           costFunctionConvergenceFactor=1e7)
    r.SetMovingInitialTransform(affine)
    r.SetInitialTransform(bs, inPlace=True)
    r.Execute(fixed, moving)
    composite = sitk.CompositeTransform(fixed.GetDimension())
    composite.AddTransform(affine)
    composite.AddTransform(bs)  # applied first: image point -> B-spline -> affine -> template point
    return composite


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if mask.sum() < 50:
        return 0.0
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def _signal(a: np.ndarray) -> np.ndarray:
    """Where the image has data, one voxel in from any empty region (smoothing smears the edge)."""
    from scipy import ndimage

    return ndimage.binary_erosion(a > 0.02, iterations=1, border_value=1)


def quality_to_confidence(ncc: float) -> float:
    return float(np.clip((ncc - NCC_FLOOR) / (NCC_GOOD - NCC_FLOOR), 0.0, 1.0))


def _dense(transform, grid):
    """The transform sampled as a displacement field on the (coarse) registration grid.

    Resampling a full-resolution label map through a B-spline composite costs ~6x more than through
    this field, and at a 40 mm control spacing the linearly interpolated field differs from the
    exact transform on < 0.01 % of label voxels (measured on deformed Colin27).
    """
    import SimpleITK as sitk

    # One coarse voxel of margin on every side: outside its grid a displacement field is zero (the
    # identity), which would misplace labels in the outermost millimetres of the image.
    dim = grid.GetDimension()
    origin = grid.TransformContinuousIndexToPhysicalPoint([-1.0] * dim)
    size = [int(n) + 2 for n in grid.GetSize()]
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, size, origin,
                                              grid.GetSpacing(), grid.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def _warp(template_img, reference, transform, nearest: bool):
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(template_img, reference, transform, interp, 0, template_img.GetPixelID()))


# ---- the localiser ------------------------------------------------------------------------------
class TemplateLocaliser:
    """Registers a template to images (once per image) and turns template labels into boxes."""

    def __init__(self, template: Template | None = None, settings: RegistrationSettings = RegistrationSettings(),
                 cache_size: int = 4):
        self.template = template or load_template()
        self.settings = settings
        self._cache: OrderedDict[str, Registration] = OrderedDict()
        self._cache_size = cache_size
        # Per (registration, labels): the carried mask and its boxes, so a repeated or per-slice
        # query does not rescan the whole label volume (~1 s for 181 slices).
        self._located: OrderedDict[tuple, VolumeLocalisation] = OrderedDict()
        self._keys_seen: dict[int, tuple] = {}

    # -- registration (cached) --
    def _key(self, array: np.ndarray, geometry: tuple) -> str:
        # Hashing a 1 mm brain (28 MB) costs ~90 ms, most of a query's time: the same array object
        # asked about again (the usual case: several queries on one open study) reuses its key.
        # Volumes are treated as immutable throughout clinseg, so identity implies same content.
        seen = self._keys_seen.get(id(array))
        if seen is not None and seen[0]() is array and seen[1] == geometry:
            return seen[2]
        key = self._hash_key(array, geometry)
        try:
            self._keys_seen[id(array)] = (weakref.ref(array), geometry, key)
        except TypeError:  # arrays that cannot be weakly referenced are simply hashed each time
            pass
        if len(self._keys_seen) > 4 * self._cache_size:
            self._keys_seen.pop(next(iter(self._keys_seen)))
        return key

    def _hash_key(self, array: np.ndarray, geometry: tuple) -> str:
        h = hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8), digest_size=16)
        h.update(repr(geometry).encode())
        h.update(repr(self.settings).encode())
        return f"{self.template.name}:{h.hexdigest()}"

    def _remember(self, key: str, reg: Registration) -> Registration:
        reg.key = key
        self._cache[key] = reg
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return reg

    def register_volume(self, volume: Volume) -> Registration:
        """3-D registration of the template onto `volume` (cached per image content and geometry)."""
        if volume.is_color:
            raise TemplateError("template localisation needs a greyscale volume")
        key = self._key(volume.voxels, (volume.spacing, volume.origin, volume.direction.tolist()))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        t0 = time.perf_counter()
        s = self.settings
        tpl = self.template
        fixed_full = _volume_image(volume)
        fixed = _normalised(_coarse(fixed_full, s.grid_mm))
        moving = _normalised(_coarse(_volume_image(tpl.image), s.grid_mm))
        transform = register_affine(fixed, moving, s)
        if s.deformable:
            transform = register_bspline(fixed, moving, transform, s)
        dense = _dense(transform, fixed) if s.deformable else transform
        labels_img = _volume_image(tpl.labels, tpl.labels.voxels.astype(np.int16))
        warped = _warp(labels_img, fixed_full, dense, nearest=True).astype(np.int16)
        masks = {k: _warp(_volume_image(tpl.image, m.astype(np.uint8)), fixed_full, dense, nearest=True) > 0
                 for k, m in tpl.masks.items()}
        # Quality on the coarse grid: cheap, and what the metric saw.
        warped_t1 = _warp(moving, fixed, transform, nearest=False)
        brain = tpl.masks.get("brain", tpl.labels.voxels > 0)
        warped_brain = _warp(_volume_image(tpl.image, brain.astype(np.uint8)), fixed, transform, nearest=True) > 0
        import SimpleITK as sitk

        fixed_arr = sitk.GetArrayFromImage(fixed)
        # Only where the image has signal: a cropped or rotated scan has empty (0) corners that say
        # nothing about the alignment.
        ncc = _ncc(fixed_arr, warped_t1, warped_brain & _signal(fixed_arr))
        reg = Registration(warped, masks, ncc, quality_to_confidence(ncc), time.perf_counter() - t0, "3-D", None, transform)
        return self._remember(key, reg)

    def register_image(self, image: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Registration:
        """2-D registration of the best-matching template axial slice onto a lone (H, W) image."""
        import SimpleITK as sitk

        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise TemplateError(f"2-D template localisation needs an (H, W) image, got shape {image.shape}")
        key = self._key(image, ("2d", tuple(spacing)))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        t0 = time.perf_counter()
        s = self.settings
        tpl = self.template
        fixed_full = _sitk_from(image, spacing, (0.0, 0.0), np.eye(2))
        fixed = _normalised(_coarse(fixed_full, min(s.grid_mm, 2.0)))
        tsp = tpl.image.spacing
        candidates = self._candidate_slices(image, spacing)
        best = None
        for z in candidates:
            moving = _normalised(_coarse(_sitk_from(tpl.image.voxels[z].astype(np.float32), tsp[:2], (0.0, 0.0), np.eye(2)),
                                         min(s.grid_mm, 2.0)))
            aff = register_affine(fixed, moving, s)
            r = _method(s, 1)
            r.SetInitialTransform(aff, inPlace=False)
            value = r.MetricEvaluate(fixed, moving)
            if best is None or value < best[0]:
                best = (value, z, aff, moving)
        _, z, transform, moving = best
        if s.deformable:
            transform = register_bspline(fixed, moving, transform, s)
        lab = _sitk_from(tpl.labels.voxels[z].astype(np.int16), tsp[:2], (0.0, 0.0), np.eye(2))
        warped = _warp(lab, fixed_full, transform, nearest=True).astype(np.int16)
        masks = {k: _warp(_sitk_from(m[z].astype(np.uint8), tsp[:2], (0.0, 0.0), np.eye(2)), fixed_full, transform, True) > 0
                 for k, m in tpl.masks.items()}
        brain = tpl.masks.get("brain", tpl.labels.voxels > 0)[z]
        wb = _warp(_sitk_from(brain.astype(np.uint8), tsp[:2], (0.0, 0.0), np.eye(2)), fixed, transform, True) > 0
        fixed_arr = sitk.GetArrayFromImage(fixed)
        ncc = _ncc(fixed_arr, _warp(moving, fixed, transform, False), wb & _signal(fixed_arr))
        reg = Registration(warped, masks, ncc, quality_to_confidence(ncc), time.perf_counter() - t0, "2-D", int(z), transform)
        return self._remember(key, reg)

    def _candidate_slices(self, image: np.ndarray, spacing, top: int = 3) -> list[int]:
        """Template axial slices whose head silhouette, scaled to a common box, best matches the image."""
        from skimage.transform import resize

        def signature(a: np.ndarray) -> np.ndarray | None:
            thr = np.percentile(a, 60) * 0.5 + np.percentile(a, 1) * 0.5
            m = a > thr
            if m.sum() < 20:
                return None
            ys, xs = np.nonzero(m)
            crop = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            v = resize(crop.astype(np.float32), (40, 40), anti_aliasing=True).ravel()
            v = v - v.mean()
            n = np.linalg.norm(v)
            return v / n if n > 0 else None

        q = signature(image)
        vox = self.template.image.voxels
        brain = self.template.masks.get("brain", self.template.labels.voxels > 0)
        zs = [z for z in range(0, vox.shape[0], 2) if brain[z].sum() > 200]
        if q is None or not zs:
            raise TemplateError("the image has no foreground to match the template against")
        scored = []
        for z in zs:
            t = signature(vox[z])
            if t is not None:
                scored.append((float(q @ t), z))
        scored.sort(reverse=True)
        return [z for _, z in scored[:top]]

    def _flips(self, direction: np.ndarray | None) -> tuple[bool, bool]:
        """Whether the image's columns / rows run opposite to the template's."""
        ix, iy = _axis_signs(np.eye(3) if direction is None else direction)
        tx, ty = _axis_signs(self.template.image.direction)
        return ix != tx, iy != ty

    # -- localisation --
    def _mask(self, reg: Registration, labels: tuple[str, ...]) -> np.ndarray:
        ids = _label_ids(self.template, labels)
        out = np.isin(reg.warped_labels, ids) if ids else np.zeros(reg.warped_labels.shape, bool)
        for lab in labels:
            if lab.startswith("mask:"):
                out |= reg.warped_masks[lab[5:]]
        return out

    def localise_volume(self, volume: Volume, labels: tuple[str, ...], min_area_px: int = 8) -> VolumeLocalisation:
        """Per-slice boxes of the template structure `labels` carried onto `volume` (3-D registration).

        Returns a VolumeLocalisation: `boxes[z]` (slice pixels, inclusive, source LOCALISER, confidence
        = registration confidence x visibility on that slice), `mask` [z, y, x], `confidence` (the
        registration's), `best_slice()`. Slices where the carried mask has < min_area_px pixels get no box.
        """
        _label_ids(self.template, labels)  # unknown label -> TemplateError before a long registration
        reg = self.register_volume(volume)
        memo = (reg.key, tuple(labels), min_area_px)
        if memo in self._located:
            self._located.move_to_end(memo)
            return self._located[memo]
        loc = self._localise_registered(reg, labels, min_area_px)
        self._located[memo] = loc
        while len(self._located) > 8 * self._cache_size:
            self._located.popitem(last=False)
        return loc

    def _localise_registered(self, reg: Registration, labels: tuple[str, ...], min_area_px: int) -> VolumeLocalisation:
        mask = self._mask(reg, labels)
        areas = mask.reshape(mask.shape[0], -1).sum(1)
        peak = max(int(areas.max()), 1)
        boxes, conf = {}, {}
        for z in np.nonzero(areas >= min_area_px)[0]:
            c = reg.confidence * _visibility(int(areas[z]), peak)
            boxes[int(z)] = _box(mask[z], c)
            conf[int(z)] = c
        kind = "affine + B-spline" if self.settings.deformable else "affine"
        notes = (f"template '{self.template.name}' registered in 3-D ({kind}) in {reg.seconds:.1f} s, "
                 f"NCC {reg.quality:.2f}",)
        if not boxes:
            notes += (f"{'/'.join(labels)} is not inside this image after registration",)
        return VolumeLocalisation(tuple(labels), boxes, conf, mask, reg.confidence, "template registration (3-D)", notes)

    def localise_slice(self, volume: Volume, z: int, labels: tuple[str, ...], min_area_px: int = 8) -> SliceLocalisation:
        """The box of `labels` on slice z of `volume`: 3-D registration (cached) when the volume has at
        least MIN_SLICES_3D slices, else 2-D registration of that slice alone."""
        if not 0 <= z < volume.num_slices:
            raise TemplateError(f"slice {z} is outside 0..{volume.num_slices - 1}")
        if volume.num_slices < MIN_SLICES_3D:
            sl = self.localise_image(volume.voxels[z], (volume.spacing[0], volume.spacing[1]), labels, min_area_px,
                                     direction=volume.direction)
            return SliceLocalisation(sl.labels, z, sl.box, sl.mask, sl.confidence, sl.method, sl.notes)
        loc = self.localise_volume(volume, labels, min_area_px)
        m = loc.mask[z]
        box = loc.boxes.get(z)
        notes = loc.notes
        if box is None:
            best = loc.best_slice()
            notes += (f"not on slice {z}" + (f"; largest on slice {best}" if best is not None else ""),)
        return SliceLocalisation(loc.labels, z, box, m, box.confidence if box else 0.0, loc.method, notes)

    def localise_image(self, image: np.ndarray, spacing: tuple[float, float], labels: tuple[str, ...],
                       min_area_px: int = 8, direction: np.ndarray | None = None) -> SliceLocalisation:
        """The box of `labels` on a lone axial (H, W) image (2-D registration against the best template slice).

        Sides matter and a 2-D registration cannot tell a brain from its mirror image, so the image is
        first flipped into the template's in-plane orientation using `direction` (the Volume's 3x3
        LPS direction). Without one, the identity is assumed (the loaders' choice for PNG/JPEG/TIFF):
        columns run towards the patient's left, i.e. the radiological display with the patient's
        right on the image's left.
        """
        _label_ids(self.template, labels)
        flip_x, flip_y = self._flips(direction)
        view = image[::-1 if flip_y else 1, ::-1 if flip_x else 1]
        reg = self.register_image(np.ascontiguousarray(view), spacing)
        m = self._mask(reg, labels)[::-1 if flip_y else 1, ::-1 if flip_x else 1]
        # Visibility relative to the structure's largest template cross-section.
        tmask = self.template.mask_for(labels)
        peak = max(int(tmask.reshape(tmask.shape[0], -1).sum(1).max()), 1)
        area = int(m.sum())
        notes = (f"template '{self.template.name}' slice {reg.template_slice} registered in 2-D in {reg.seconds:.1f} s, "
                 f"NCC {reg.quality:.2f}",)
        if area < min_area_px:
            return SliceLocalisation(tuple(labels), None, None, m, 0.0, "template registration (2-D)",
                                     notes + (f"{'/'.join(labels)} is not on this image after registration",))
        c = reg.confidence * _visibility(area, peak)
        return SliceLocalisation(tuple(labels), None, _box(m, c), m, c, "template registration (2-D)", notes)


def _axis_signs(direction: np.ndarray) -> tuple[float, float]:
    """LPS sign of the column (x) and row (y) axes; an oblique or non-axial plane is refused."""
    d = np.asarray(direction, float).reshape(3, 3)
    cx, cy = d[:, 0], d[:, 1]
    if abs(cx[0]) < 0.9 or abs(cy[1]) < 0.9:
        raise TemplateError("2-D template localisation needs an axial image (rows anterior-posterior, columns "
                            "left-right); this slice is sagittal, coronal or oblique")
    return float(np.sign(cx[0])), float(np.sign(cy[1]))


def _visibility(area: int, peak: int) -> float:
    """1 for cross-sections >= half the largest, down to 0.5 for slivers."""
    return float(0.5 + 0.5 * min(1.0, area / (0.5 * peak)))


def _box(mask: np.ndarray, confidence: float) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), PromptSource.LOCALISER, float(confidence))
