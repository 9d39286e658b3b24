"""Cross-view refinement of a propagated mask (models/cross_view.py), with the real LiteMedSAM."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from integrations.volume import Volume
from models.cross_view import CrossViewConfig, within_reach
from models.propagation import PropagationConfig, propagate
from prompting.promptset import PromptSet
from tests._shapes import ellipsoid as _ellipsoid
from tests._shapes import mask_box as _box


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def isotropic_case(segmenter):
    # Slices of every view are >= 32 px and the voxels cubic, so both other views are used.
    shape = (34, 44, 44)
    truth = _ellipsoid(shape, (17, 21, 23), (9, 11, 13))
    rng = np.random.default_rng(11)
    vox = (150 + 500 * truth + rng.normal(0, 15, shape)).astype(np.float32)
    vol = Volume(vox, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), modality="MR")
    seed = {17: PromptSet.from_box(*_box(truth[17]))}
    alone = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None))
    calls = []
    refined = propagate(segmenter, vol, seed, progress=lambda d, t, m: calls.append((d, t, m)))
    return vol, truth, alone, refined, calls


def test_other_views_only_add_voxels_near_the_propagated_mask(isotropic_case):
    vol, truth, alone, refined, _ = isotropic_case
    reach = CrossViewConfig().reach_mm
    assert np.all(refined.mask[alone.mask])  # nothing propagated is taken away
    assert not np.any(refined.mask & ~within_reach(alone.mask, vol.spacing, reach))
    # On a crisp ellipsoid the propagation is already good; the refinement must not spoil it.
    assert _dice(refined.mask, truth) >= _dice(alone.mask, truth) - 0.02
    assert refined.volume_ml >= alone.volume_ml


def test_the_refinement_is_reported_and_shows_progress(isotropic_case):
    _, _, alone, refined, calls = isotropic_case
    note = next(n for n in refined.notes if n.startswith("cross-view refinement:"))
    assert "coronal (" in note and "sagittal (" in note and "added" in note
    assert not any("cross-view" in n for n in alone.notes)
    cross = [c for c in calls if c[2].startswith("cross-view")]
    assert cross and cross[-1][0] == cross[-1][1]  # counted to its own total
    assert {c[2].split()[1] for c in cross} == {"coronal", "sagittal"}


def test_thick_slices_and_small_slices_skip_a_view_and_say_why(segmenter):
    # 3 mm slices under 1 mm pixels: coronal/sagittal pixels are 1 x 3 mm, beyond the 2:1 limit.
    shape = (16, 48, 48)
    truth = _ellipsoid(shape, (8, 24, 24), (5, 12, 14))
    vox = (100 + 600 * truth).astype(np.float32)
    vol = Volume(vox, spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0), modality="MR")
    seed = {8: PromptSet.from_box(*_box(truth[8]))}
    res = propagate(segmenter, vol, seed)
    skipped = [n for n in res.notes if n.startswith("cross-view refinement skipped")]
    assert len(skipped) == 2 and all("1.00 x 3.00 mm" in n for n in skipped), res.notes
    alone = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None))
    assert np.array_equal(res.mask, alone.mask)
    # A looser aspect limit lets them through, but these slices are 16 px tall: still skipped, for that.
    loose = PropagationConfig(cross_view=dataclasses.replace(CrossViewConfig(), max_pixel_aspect=4.0))
    res = propagate(segmenter, vol, seed, config=loose)
    assert all("under 32 px" in n for n in res.notes if n.startswith("cross-view refinement skipped")), res.notes


def test_reach_is_measured_in_millimetres():
    mask = np.zeros((9, 9, 9), bool)
    mask[4, 4, 4] = True
    # spacing is (x, y, z): 1 mm columns, 1 mm rows, 3 mm slices
    near = within_reach(mask, (1.0, 1.0, 3.0), 2.0)
    assert near[4, 4, 6] and near[4, 6, 4] and not near[4, 4, 7]  # 2 mm in-plane: in; 3 mm: out
    assert not near[5, 4, 4]  # the next slice is 3 mm away
    assert within_reach(mask, (1.0, 1.0, 3.0), 3.0)[5, 4, 4]
    assert not within_reach(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0), 5.0).any()


def test_cli_segment_3d_can_leave_the_other_views_out(tmp_path, capsys):
    import json

    from app.cli import main
    from integrations.mask_io import write_mask

    shape = (16, 48, 48)
    truth = _ellipsoid(shape, (8, 24, 24), (5, 12, 14))
    vol = Volume((100 + 600 * truth).astype(np.float32), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0), modality="MR")
    study = write_mask(tmp_path / "study.nii.gz", vol, vol.voxels)
    box = [str(v) for v in _box(truth[8])]
    notes = {}
    for flag in ([], ["--no-cross-view"]):
        out = tmp_path / f"mask{len(flag)}.nii.gz"
        assert main(["segment-3d", str(study), "--box", *box, "--slice", "8", *flag, "--out", str(out)]) == 0
        notes[bool(flag)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["notes"]
    assert any(n.startswith("cross-view refinement skipped the coronal view") for n in notes[False]), notes[False]
    assert not any("cross-view" in n for n in notes[True]), notes[True]


def test_a_mask_crossing_too_many_slices_is_left_as_propagated(segmenter, isotropic_case):
    vol, truth, alone, refined, _ = isotropic_case
    crossed = sum(refined.cross_view.decoded.values())
    assert set(refined.cross_view.decoded) == {"coronal", "sagittal"} and crossed > 20
    config = PropagationConfig(cross_view=dataclasses.replace(CrossViewConfig(), max_slices=crossed - 1))
    res = propagate(segmenter, vol, {17: PromptSet.from_box(*_box(truth[17]))}, config=config)
    assert np.array_equal(res.mask, alone.mask)
    skipped = [n for n in res.notes if n.startswith("cross-view refinement skipped")]
    assert len(skipped) == 2 and all(f"crosses {crossed} slices" in n for n in skipped), res.notes
    assert res.cross_view.decoded == {} and alone.cross_view is None
