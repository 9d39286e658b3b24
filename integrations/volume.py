"""`Volume`: voxels plus the geometry and identifiers needed to put results back where they belong.

Conventions (those of DICOM and SimpleITK, so nothing is flipped on the way in or out):
- `voxels` is indexed [z, y, x] (slice, row, column), or [z, y, x, c] for colour images;
- `spacing`, `origin` are (x, y, z) in mm; `origin` is the patient (LPS) position of voxel (0, 0, 0);
- `direction` is 3x3; its columns are the LPS unit vectors along the x (column), y (row), z (slice)
  index axes. `affine` maps (x, y, z, 1) indices to LPS millimetres.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class DicomReference:
    """What a DICOM writer (SEG, RTSTRUCT) needs to reference the source series."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]  # one per slice, in voxel z order
    files: tuple[str, ...] = ()  # source files in voxel z order (empty for multi-frame: one file)
    series_description: str = ""


@dataclass
class Volume:
    voxels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "OT"
    dicom: DicomReference | None = None
    source: str = ""  # path it was read from; never shown in logs (may contain a patient name)
    body_part: str = ""

    def __post_init__(self) -> None:
        self.voxels = np.asarray(self.voxels)
        if self.voxels.ndim not in (3, 4):
            raise ValueError(f"Volume voxels must be 3-D [z, y, x] or 4-D [z, y, x, c], got shape {self.voxels.shape}")
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"Volume spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x)"""
        return tuple(int(s) for s in self.voxels.shape[:3])

    @property
    def num_slices(self) -> int:
        return self.shape[0]

    @property
    def is_color(self) -> bool:
        return self.voxels.ndim == 4

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from (x, y, z, 1) voxel indices to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    @property
    def ras_affine(self) -> np.ndarray:
        """The NIfTI (RAS) affine for the same (x, y, z) indices."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    @property
    def pixel_area_mm2(self) -> float:
        return self.spacing[0] * self.spacing[1]

    @property
    def voxel_volume_ml(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0

    def slice(self, z: int) -> np.ndarray:
        if not 0 <= z < self.num_slices:
            raise IndexError(f"slice {z} is outside 0..{self.num_slices - 1}")
        return self.voxels[z]

    def index_to_lps(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        return xyz @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        m = self.direction @ np.diag(self.spacing)
        return (lps - np.asarray(self.origin)) @ np.linalg.inv(m).T

    def with_voxels(self, voxels: np.ndarray) -> "Volume":
        """Same geometry and identifiers, other voxels (e.g. a mask)."""
        voxels = np.asarray(voxels)
        if voxels.shape[:3] != self.shape:
            raise ValueError(f"voxels of shape {voxels.shape} do not fit a volume of shape {self.shape}")
        return replace(self, voxels=voxels)

    def describe(self) -> dict:
        """Patient-free facts to show a user or put in a log."""
        return {
            "modality": self.modality,
            "shape_zyx": list(self.shape),
            "channels": int(self.voxels.shape[3]) if self.is_color else 1,
            "spacing_xyz_mm": [round(s, 4) for s in self.spacing],
            "origin_lps_mm": [round(o, 3) for o in self.origin],
            "direction": [[round(v, 4) for v in row] for row in self.direction.tolist()],
            "dtype": str(self.voxels.dtype),
            "value_range": [float(np.min(self.voxels)), float(np.max(self.voxels))],
            "dicom": self.dicom is not None,
        }
