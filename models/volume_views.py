"""Axial, coronal and sagittal views of a `Volume`, with exact geometry both ways.

A view is the same voxels with the index axes permuted (and the new row axis possibly flipped), so
no voxel is interpolated and a mask drawn in any view maps back to the original grid one-to-one.
The resliced `Volume` carries a correct affine: `view.volume.index_to_lps(i)` is the same point as
`volume.index_to_lps(view.to_source_index(i))`.

Which array axis is which view follows the index axes, not the patient: for the usual axial
acquisition (slices along the z index) coronal slices are cut along the y (row) index and sagittal
slices along the x (column) index. In coronal and sagittal views the rows run from the head down
(flipped when the slice axis points superior), as radiologists read them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from integrations.errors import ClinsegInputError
from integrations.volume import Volume

VIEWS = ("axial", "coronal", "sagittal")

# For each view: which source index axis (0=x column, 1=y row, 2=z slice) becomes the view's
# x (column), y (row) and z (slice) index axis.
_AXES = {
    "axial": (0, 1, 2),
    "coronal": (0, 2, 1),
    "sagittal": (1, 2, 0),
}


def slice_axis(view: str) -> int:
    """The source array axis ([z, y, x]) along which `view`'s slices are cut (no reslicing needed)."""
    return 2 - _AXES[check_view(view)][2]


class UnknownViewError(ClinsegInputError):
    """A view name other than axial, coronal or sagittal."""


def check_view(view: str) -> str:
    v = str(view).lower()
    if v not in VIEWS:
        raise UnknownViewError(f"unknown view '{view}'; choose one of {', '.join(VIEWS)}.")
    return v


@dataclass(frozen=True)
class VolumeView:
    """A volume seen along one axis. `volume` is the resliced Volume (slices of this view)."""

    name: str
    source: Volume
    volume: Volume
    axes: tuple[int, int, int]  # source index axis of the view's x, y, z
    flip_rows: bool  # the view's y index runs against its source axis

    @property
    def index_map(self) -> np.ndarray:
        """4x4 integer matrix: view (x, y, z, 1) index -> source (x, y, z, 1) index."""
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        src_size = (self.source.shape[2], self.source.shape[1], self.source.shape[0])  # (nx, ny, nz)
        for view_axis, src_axis in enumerate(self.axes):
            if view_axis == 1 and self.flip_rows:
                m[src_axis, view_axis] = -1.0
                m[src_axis, 3] = src_size[src_axis] - 1
            else:
                m[src_axis, view_axis] = 1.0
        return m

    def to_source_index(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        h = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1)
        return (h @ self.index_map.T)[:, :3]

    def to_view(self, array: np.ndarray) -> np.ndarray:
        """A source-grid array [z, y, x(, c)] in this view's [z, y, x(, c)] order."""
        return _permute(np.asarray(array), self.axes, self.flip_rows)

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """A view-grid array [z, y, x(, c)] (e.g. a mask) back on the source grid [z, y, x(, c)]."""
        array = np.asarray(array)
        if array.shape[:3] != self.volume.shape:
            raise ValueError(f"array of shape {array.shape} does not fit the {self.name} view {self.volume.shape}")
        # Array axis order of the view is (z, y, x) = source axes (axes[2], axes[1], axes[0]).
        if self.flip_rows:
            array = array[:, ::-1]
        src_array_axis = [2 - self.axes[2], 2 - self.axes[1], 2 - self.axes[0]]  # view array axis k holds source array axis
        inverse = np.argsort(src_array_axis)
        extra = tuple(range(3, array.ndim))
        return np.ascontiguousarray(np.transpose(array, tuple(inverse) + extra))

    def slice_to_source(self, mask2d: np.ndarray, index: int) -> np.ndarray:
        """A 2-D mask drawn on slice `index` of this view as a 3-D source-grid mask."""
        full = np.zeros(self.volume.shape, dtype=np.asarray(mask2d).dtype)
        full[index] = mask2d
        return self.to_source(full)


def _permute(array: np.ndarray, axes: tuple[int, int, int], flip_rows: bool) -> np.ndarray:
    # Source array axis of source index axis a is 2 - a (array is [z, y, x]).
    order = (2 - axes[2], 2 - axes[1], 2 - axes[0])
    extra = tuple(range(3, array.ndim))
    out = np.transpose(array, order + extra)
    if flip_rows:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def reslice(volume: Volume, view: str = "axial") -> VolumeView:
    """The volume as slices of `view`, geometry included (no interpolation)."""
    view = check_view(view)
    axes = _AXES[view]
    flip = False
    if view != "axial":
        # Rows should run from the head down: flip when increasing the row index goes superior (+S in LPS).
        row_dir = volume.direction[:, axes[1]]
        flip = bool(row_dir[2] > 0)
    vv = VolumeView(view, volume, volume, axes, flip)  # provisional: index_map needs only the source
    m = vv.index_map
    affine = volume.affine @ m
    linear = affine[:3, :3]
    spacing = tuple(round(float(s), 9) for s in np.linalg.norm(linear, axis=0))  # drop float dust
    direction = linear / np.asarray(spacing)
    voxels = _permute(volume.voxels, axes, flip)
    resliced = replace(volume, voxels=voxels, spacing=spacing, origin=tuple(float(v) for v in affine[:3, 3]),
                       direction=direction, dicom=volume.dicom if view == "axial" else None)
    return VolumeView(view, volume, resliced, axes, flip)
