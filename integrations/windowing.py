"""Intensity windows: how voxels become the [0, 1] image the model and the screen see.

CT is calibrated (Hounsfield units), so CT windows are fixed centre/width pairs. MR and photographs
are not calibrated, so their windows are percentiles of the volume's own intensities.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    name: str
    center: float | None = None  # HU, for fixed windows
    width: float | None = None
    low_percentile: float | None = None  # for data-driven windows
    high_percentile: float | None = None

    @property
    def is_fixed(self) -> bool:
        return self.center is not None


CT_WINDOWS: dict[str, Window] = {
    "brain": Window("brain", center=40, width=80),
    "soft_tissue": Window("soft_tissue", center=40, width=400),
    "lung": Window("lung", center=-600, width=1500),
    "bone": Window("bone", center=400, width=1800),
    "liver": Window("liver", center=60, width=160),
}
PERCENTILE_WINDOWS: dict[str, Window] = {
    "auto": Window("auto", low_percentile=0.5, high_percentile=99.5),
    "full": Window("full", low_percentile=0.0, high_percentile=100.0),
}
WINDOWS: dict[str, Window] = {**CT_WINDOWS, **PERCENTILE_WINDOWS}


def get_window(name: str) -> Window:
    try:
        return WINDOWS[name]
    except KeyError:
        raise ValueError(f"unknown window '{name}'; choose one of {', '.join(WINDOWS)}") from None


def default_window(modality: str) -> Window:
    # Min-max for uncalibrated images: LiteMedSAM was trained on min-max scaled slices, and on the
    # Colin27 AAL set it beats the 0.5-99.5 % window by 0.025 Dice (bench/accuracy.py --variants).
    return CT_WINDOWS["soft_tissue"] if modality.upper() == "CT" else PERCENTILE_WINDOWS["full"]


def window_bounds(window: Window, reference: np.ndarray) -> tuple[float, float]:
    """(low, high) intensities. Percentiles come from `reference` (the whole volume, so slices agree)."""
    if window.is_fixed:
        return window.center - window.width / 2.0, window.center + window.width / 2.0
    ref = np.asarray(reference)
    if ref.size > 4_000_000:  # percentiles of a subsample are as good and 20x faster
        ref = ref.reshape(-1)[:: ref.size // 4_000_000 + 1]
    lo, hi = np.percentile(ref, [window.low_percentile, window.high_percentile])
    if hi <= lo:
        lo, hi = float(np.min(ref)), float(np.max(ref))
    return float(lo), float(hi)


def apply_window(image: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.float32)
    out = (np.asarray(image, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def volume_window(volume, window: Window | str | None = None) -> tuple[float, float]:
    """Bounds for a `Volume`: the named window, or the modality's default."""
    if isinstance(window, str):
        window = get_window(window)
    window = window or default_window(volume.modality)
    return window_bounds(window, volume.voxels)


def slice_image(volume, z: int, bounds: tuple[float, float]) -> np.ndarray:
    """Slice z of a volume as the [0, 1] float32 image the model and the screen take."""
    return apply_window(volume.slice(z), bounds)
