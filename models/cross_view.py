"""Cross-view refinement: check a propagated 3-D mask in the two other views and fill what it missed.

A box-propagated mask is under-segmented: LiteMedSAM draws its mask a little inside the box, the next
box comes from that mask, and the shortfall carries from slice to slice. Seen in a perpendicular
view, the same structure is a different picture (the hippocampus is a long band in a sagittal slice,
a small blob in an axial one) and its outline there is not built from the propagation's boxes. So
each slice of the two other views that the mask crosses is decoded with a box around the mask's
section on it (enlarged, so the decoder can reach past an under-segmented edge), and voxels those
decodes add are kept where they lie within `reach_mm` of the propagated mask. The reach bound is
what makes this safe: a perpendicular slice's box also covers neighbouring tissue, and decodes that
leak there would otherwise be kept (measured in docs/volume.md: without it the deep nuclei lose).

Views whose pixels are very anisotropic (a thick-slice series seen from the side) or whose slices are
too small to show the structure are skipped, and the report says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from integrations.volume import Volume
from integrations.windowing import apply_window
from prompting.promptset import PromptSet

from .volume_views import VIEWS, reslice

# progress(done, total, message): done/total count slices decoded against an upper bound
# (propagation reports through the same callback).
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CrossViewConfig:
    """How the other views may correct a propagated mask. Chosen in docs/volume.md (bench/volume.py)."""

    # The mask section's box on a perpendicular slice, enlarged like propagation's own boxes. Looser
    # boxes (0.15 + 3 px) gained a little more on the MRI parcels but drew a shell around crisp objects
    # (a synthetic ellipsoid: Dice 0.96 -> 0.89; 0.97 with these).
    box_margin: float = 0.05
    box_margin_px: float = 2.0
    reach_mm: float = 2.0  # added voxels must lie within this distance of the propagated mask
    min_area_px: int = 2  # perpendicular slices where the mask's section is smaller are not decoded
    # A view whose pixels are more than this many times longer one way than the other (e.g. the side
    # view of a 5 mm-slice CT with 0.8 mm pixels) is stretched out of what the model was trained on.
    max_pixel_aspect: float = 2.0
    min_side_px: int = 32  # ... and a view whose slices are smaller than this either way shows too little
    # Each crossed slice costs a decode and, unless cached, an encode (~0.35 s on a laptop CPU): a whole
    # brain crosses ~330 and gained nothing on bench/volume.py (+0.011 / -0.013 Dice), so past this many
    # the refinement is left out and the notes say so. None = no limit.
    max_slices: int | None = 200


@dataclass
class CrossViewReport:
    decoded: dict[str, int] = field(default_factory=dict)  # view -> slices decoded
    skipped: dict[str, str] = field(default_factory=dict)  # view -> why it was not used
    added_voxels: int = 0

    def notes(self) -> list[str]:
        out = []
        if self.decoded:
            views = ", ".join(f"{v} ({n} slices)" for v, n in self.decoded.items())
            out.append(f"cross-view refinement: {views} added {self.added_voxels} voxels")
        out.extend(f"cross-view refinement skipped the {v} view: {why}" for v, why in self.skipped.items())
        return out


def _why_unusable(volume: Volume, config: CrossViewConfig) -> str | None:
    """Why slices of this (resliced) volume are not fit to decode, or None."""
    sx, sy = volume.spacing[0], volume.spacing[1]
    aspect = max(sx, sy) / min(sx, sy)
    if aspect > config.max_pixel_aspect:
        return f"its pixels are {sx:.2f} x {sy:.2f} mm (more than {config.max_pixel_aspect:g}:1)"
    h, w = volume.shape[1:]
    if min(h, w) < config.min_side_px:
        return f"its slices are {w} x {h} px (under {config.min_side_px} px)"
    return None


def within_reach(mask: np.ndarray, spacing_xyz: tuple[float, float, float], reach_mm: float) -> np.ndarray:
    """Voxels within `reach_mm` (Euclidean, in mm) of `mask` (z, y, x), computed on a crop around it."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    sampling = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    pad = [int(np.ceil(reach_mm / s)) + 1 for s in sampling]
    nz = np.nonzero(mask)
    lo = [max(0, int(a.min()) - p) for a, p in zip(nz, pad)]
    hi = [min(n, int(a.max()) + p + 1) for a, n, p in zip(nz, mask.shape, pad)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist = ndi.distance_transform_edt(~mask[crop], sampling=sampling)
    out[crop] = dist <= reach_mm
    return out


def refine_across_views(
    segmenter,
    volume: Volume,
    mask: np.ndarray,
    bounds: tuple[float, float],
    config: CrossViewConfig,
    propagated_view: str,
    label: str = "",
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, CrossViewReport]:
    """`mask` (source grid) with what the two views other than `propagated_view` add within reach.

    Slices are embedded through `segmenter.embed` (its content-keyed cache, so a second run decodes only)."""
    from .propagation import _mask_box, enlarge_box  # here: models.propagation imports this module

    report = CrossViewReport()
    if not mask.any():
        return mask, report
    views = []
    for name in VIEWS:
        if name == propagated_view:
            continue
        vv = reslice(volume, name)
        why = _why_unusable(vv.volume, config)
        if why is not None:
            report.skipped[name] = why
            continue
        section = vv.to_view(mask)
        todo = [int(j) for j in np.nonzero(section.reshape(section.shape[0], -1).sum(1) >= config.min_area_px)[0]]
        views.append((vv, section, todo))
    total = sum(len(t) for _, _, t in views)
    if config.max_slices is not None and total > config.max_slices:
        for vv, _, _ in views:
            report.skipped[vv.name] = (f"the mask crosses {total} slices of the other views (more than "
                                       f"{config.max_slices}; each costs an encode)")
        return mask, report
    done = 0
    found = np.zeros(mask.shape, bool)
    for vv, section, todo in views:
        decoded = np.zeros(vv.volume.shape, bool)
        for j in todo:
            box = enlarge_box(_mask_box(section[j]), section.shape[1:], config.box_margin, config.box_margin_px)
            emb = segmenter.embed(apply_window(vv.volume.voxels[j], bounds))
            decoded[j] = segmenter.decode(emb, PromptSet(box=box, label=label)).mask
            done += 1
            if progress is not None:
                progress(done, total, f"cross-view {vv.name} slice {j}")
        found |= vv.to_source(decoded)
        report.decoded[vv.name] = len(todo)
    added = found & ~mask & within_reach(mask, volume.spacing, config.reach_mm)
    report.added_voxels = int(added.sum())
    return mask | added, report
