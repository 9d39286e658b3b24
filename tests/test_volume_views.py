"""Axial/coronal/sagittal reslicing: exact voxels, exact geometry, masks back to the source grid."""
from __future__ import annotations

import numpy as np
import pytest

from integrations.volume import Volume
from models.volume_views import UnknownViewError, reslice


def _oblique_volume(shape=(5, 6, 7), channels=None):
    rng = np.random.default_rng(0)
    direction = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    vox = rng.normal(size=shape + ((channels,) if channels else ())).astype(np.float32)
    return Volume(vox, spacing=(0.5, 0.7, 2.0), origin=(10.0, -20.0, 30.0), direction=direction)


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_every_view_voxel_sits_where_its_source_voxel_sits(view):
    vol = _oblique_volume()
    vv = reslice(vol, view)
    rng = np.random.default_rng(1)
    nz, ny, nx = vv.volume.shape
    for _ in range(30):
        i = np.array([rng.integers(nx), rng.integers(ny), rng.integers(nz)])
        src = np.rint(vv.to_source_index(i)[0]).astype(int)
        assert vv.volume.voxels[i[2], i[1], i[0]] == vol.voxels[src[2], src[1], src[0]]
        assert np.allclose(vv.volume.index_to_lps(i), vol.index_to_lps(src))
    assert np.array_equal(vv.to_source(vv.volume.voxels), vol.voxels)
    assert np.array_equal(vv.to_view(vol.voxels), vv.volume.voxels)
    # Orthonormal direction, positive spacing: a valid geometry that NIfTI/DICOM writers accept.
    assert np.allclose(vv.volume.direction.T @ vv.volume.direction, np.eye(3), atol=1e-9)
    assert sorted(vv.volume.spacing) == sorted(vol.spacing)


def test_view_shapes_and_head_up_rows():
    vol = Volume(np.zeros((20, 30, 40), np.float32), spacing=(1.0, 1.0, 3.0))  # axial acquisition, +z superior
    cor, sag = reslice(vol, "coronal"), reslice(vol, "sagittal")
    assert cor.volume.shape == (30, 20, 40) and sag.volume.shape == (40, 20, 30)
    # Rows go from the head down: row 0 is the most superior slice.
    assert cor.flip_rows and sag.flip_rows
    top = cor.volume.index_to_lps([0, 0, 0])[0][2]
    bottom = cor.volume.index_to_lps([0, 19, 0])[0][2]
    assert top > bottom
    assert cor.volume.spacing[1] == 3.0  # coronal rows carry the slice thickness


def test_colour_volumes_keep_their_channels():
    vol = _oblique_volume(channels=3)
    vv = reslice(vol, "sagittal")
    assert vv.volume.voxels.shape == (7, 5, 6, 3)
    assert np.array_equal(vv.to_source(vv.volume.voxels), vol.voxels)


def test_a_mask_drawn_in_a_view_is_written_with_the_source_geometry(tmp_path):
    from integrations.loaders import load_volume
    from integrations.mask_io import write_mask

    vol = _oblique_volume((6, 8, 10))
    vv = reslice(vol, "coronal")
    m2 = np.zeros(vv.volume.shape[1:], bool)
    m2[2:4, 3:7] = True
    full = vv.slice_to_source(m2, 5)
    assert full.shape == vol.shape and full.sum() == m2.sum()
    back = load_volume(write_mask(tmp_path / "m.nii.gz", vol, full))
    assert np.allclose(back.affine, vol.affine, atol=1e-5)
    # Every view pixel of the mask is at the same LPS point as a mask voxel of the written file.
    for y, x in np.argwhere(m2):
        lps = vv.volume.index_to_lps([x, y, 5])
        bx, by, bz = np.rint(back.lps_to_index(lps)[0]).astype(int)
        assert back.voxels[bz, by, bx] == 1


def test_unknown_view_is_a_readable_error():
    with pytest.raises(UnknownViewError, match="axial, coronal, sagittal"):
        reslice(_oblique_volume(), "oblique")
