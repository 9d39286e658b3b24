"""Slice propagation on a synthetic ellipsoid with the real LiteMedSAM (few, small slices: CPU time)."""
from __future__ import annotations

import numpy as np
import pytest

from integrations.errors import InvalidPromptError
from integrations.volume import Volume
from models.propagation import PropagationConfig, propagate, stability_score
from prompting.promptset import Point, PromptSet
from tests._shapes import ellipsoid as _ellipsoid
from tests._shapes import mask_box as _box

NZ, NY, NX = 14, 96, 96
CZ, RZ = 7, 4.6  # the ellipsoid covers slices 3..11 (|z - 7| <= 4.6)
TRUE_FIRST, TRUE_LAST = 3, 11


@pytest.fixture(scope="module")
def ellipsoid_volume():
    rng = np.random.default_rng(3)
    truth = _ellipsoid((NZ, NY, NX), (CZ, 46, 50), (RZ, 24, 30))
    vox = (200 + 600 * truth + rng.normal(0, 20, truth.shape)).astype(np.float32)
    # A non-trivial geometry (LPS-flipped x/y, anisotropic spacing, offset origin) so that geometry errors show.
    vol = Volume(vox, spacing=(0.8, 0.9, 2.5), origin=(40.0, -12.0, 7.5), direction=np.diag([-1.0, -1.0, 1.0]), modality="MR")
    return vol, truth


@pytest.fixture(scope="module")
def axial_result(segmenter, ellipsoid_volume):
    vol, truth = ellipsoid_volume
    calls = []
    res = propagate(segmenter, vol, {CZ: PromptSet.from_box(*_box(truth[CZ]))}, view="axial",
                    progress=lambda done, total, msg: calls.append((done, total, msg)))
    return res, calls


def test_propagation_stops_at_the_object_ends(axial_result, ellipsoid_volume):
    vol, truth = ellipsoid_volume
    res, _ = axial_result
    first, last = res.slice_range
    assert TRUE_FIRST - 0 <= first <= TRUE_FIRST + 1, res.notes
    assert TRUE_LAST - 1 <= last <= TRUE_LAST, res.notes
    zs = np.nonzero(res.mask.reshape(NZ, -1).any(1))[0]
    assert zs.min() >= TRUE_FIRST and zs.max() <= TRUE_LAST  # nothing segmented beyond the ends
    # Both directions stopped because the object ended, not at the volume's edge.
    reasons = {s.direction: s.reason for s in res.stops}
    assert set(reasons) == {-1, 1}
    assert all("edge of the volume" not in r for r in reasons.values()), reasons
    inter = np.logical_and(res.mask, truth).sum()
    assert 2 * inter / (res.mask.sum() + truth.sum()) > 0.85


def test_volume_in_ml_and_progress(axial_result, ellipsoid_volume):
    vol, truth = ellipsoid_volume
    res, calls = axial_result
    assert res.volume_ml == pytest.approx(res.mask.sum() * 0.8 * 0.9 * 2.5 / 1000)
    assert res.volume_ml == pytest.approx(truth.sum() * vol.voxel_volume_ml, rel=0.2)
    assert calls and [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert all(c[1] == NZ for c in calls)
    assert any("mL" in n for n in res.notes)


def test_3d_output_geometry_round_trips_through_nifti(axial_result, ellipsoid_volume, tmp_path):
    from integrations.loaders import load_volume
    from integrations.mask_io import write_mask

    vol, _ = ellipsoid_volume
    res, _ = axial_result
    assert np.allclose(res.as_volume().affine, vol.affine)
    path = write_mask(tmp_path / "mask.nii.gz", vol, res.mask)
    back = load_volume(path)
    assert back.shape == vol.shape
    assert np.allclose(back.affine, vol.affine, atol=1e-5)
    assert np.array_equal(back.voxels > 0, res.mask)
    # The same physical point is inside the mask in both.
    z, y, x = np.argwhere(res.mask)[0]
    lps = vol.index_to_lps([x, y, z])
    bx, by, bz = np.rint(back.lps_to_index(lps)[0]).astype(int)
    assert back.voxels[bz, by, bx] > 0


def test_prompts_on_other_slices_reanchor(segmenter, axial_result, ellipsoid_volume):
    vol, truth = ellipsoid_volume
    # Embeddings are cached from the first run: decoding only. A second prompt on slice 9 re-anchors.
    seeds = {5: PromptSet.from_box(*_box(truth[5])), 9: PromptSet.from_box(*_box(truth[9]))}
    res = propagate(segmenter, vol, seeds)
    anchors = sorted(r.index for r in res.slices if r.anchor)
    assert anchors == [5, 9]
    rec = {r.index: r for r in res.slices}
    assert rec[9].box == tuple(float(v) for v in _box(truth[9]))  # the user's box, not a propagated one
    assert all(z in rec for z in range(5, 10))
    # A stricter configuration ends earlier: the stop rules are what decide the extent.
    strict = propagate(segmenter, vol, {CZ: PromptSet.from_box(*_box(truth[CZ]))},
                       config=PropagationConfig(min_area_fraction=0.85))
    assert strict.voxel_count < axial_result[0].voxel_count
    assert any("object ended" in s.reason for s in strict.stops)


def test_coronal_view_maps_back_to_the_source_grid(segmenter):
    # Few coronal slices (the y axis), so few encoder runs.
    shape = (48, 12, 48)
    truth = _ellipsoid(shape, (24, 6, 22), (14, 3.6, 16))
    rng = np.random.default_rng(5)
    vox = (100 + 500 * truth + rng.normal(0, 10, shape)).astype(np.float32)
    vol = Volume(vox, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), modality="MR")
    from models.volume_views import reslice

    view = reslice(vol, "coronal")
    tv = view.to_view(truth)
    res = propagate(segmenter, vol, {6: PromptSet.from_box(*_box(tv[6]))}, view="coronal")
    assert res.mask.shape == vol.shape and res.view == "coronal"
    inter = np.logical_and(res.mask, truth).sum()
    assert 2 * inter / (res.mask.sum() + truth.sum()) > 0.8
    ys = np.nonzero(res.mask.any(axis=(0, 2)))[0]
    assert ys.min() >= 2 and ys.max() <= 9


def test_bad_seeds_are_refused_with_a_reason(segmenter, ellipsoid_volume):
    vol, _ = ellipsoid_volume
    with pytest.raises(InvalidPromptError, match="does not exist"):
        propagate(segmenter, vol, {NZ + 3: PromptSet.from_box(10, 10, 40, 40)})
    with pytest.raises(InvalidPromptError, match="no box"):
        propagate(segmenter, vol, {3: PromptSet(points=(Point(20, 20),))})
    with pytest.raises(InvalidPromptError, match="at least one slice"):
        propagate(segmenter, vol, {})
    with pytest.raises(Exception, match="unknown view"):
        propagate(segmenter, vol, {3: PromptSet.from_box(10, 10, 40, 40)}, view="oblique")


def test_stability_score():
    sure = np.full((1, 8, 8), -10.0)
    sure[0, 2:6, 2:6] = 10.0
    assert stability_score(sure) == 1.0
    unsure = np.linspace(-3, 3, 64).reshape(1, 8, 8)
    assert stability_score(unsure) < 0.7


def test_cli_segment_3d_refuses_bad_requests_with_exit_2(ellipsoid_volume, tmp_path, capsys):
    from app.cli import main
    from integrations.mask_io import write_mask

    vol, truth = ellipsoid_volume
    study = write_mask(tmp_path / "study.nii.gz", vol, truth)  # any readable 3-D NIfTI
    assert main(["segment-3d", str(study), "--out", str(tmp_path / "m.nii.gz")]) == 2
    assert "--box" in capsys.readouterr().err
    assert main(["segment-3d", str(study), "--box", "1", "1", "20", "20", "--out", str(tmp_path / "m.png")]) == 2
    assert "3-D mask" in capsys.readouterr().err
    assert main(["train-adapter", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_damped_box_changes_slowly_between_slices():
    from models.propagation import _damped

    prev = (10.0, 20.0, 49.0, 59.0)  # 40 x 40
    grown = _damped((0.0, 0.0, 99.0, 99.0), prev, change=0.1, shift=0.15)
    assert grown[2] - grown[0] + 1 == pytest.approx(45.0)  # 40 * 1.1 + 1
    assert grown[3] - grown[1] + 1 == pytest.approx(45.0)
    assert (grown[0] + grown[2]) / 2 == pytest.approx(29.5 + 0.15 * 40 + 1)  # centre moved by at most 15 % + 1 px
    same = _damped(prev, prev, change=0.1, shift=0.15)
    assert same == pytest.approx(prev)


def test_sticky_zoom_keeps_its_window_while_the_box_stays_inside():
    from models.propagation import StickyZoom
    from models.zoom import ZoomPolicy
    from prompting.promptset import Box

    z = StickyZoom(ZoomPolicy())
    w0 = z.window_for(Box(90, 90, 110, 110), (217, 181))
    assert z.window_for(Box(91, 89, 111, 109), (217, 181)) == w0  # a neighbouring slice's box: same frame
    moved = z.window_for(Box(20, 150, 40, 170), (217, 181))  # far away: a new window around the new box
    assert moved != w0 and moved[0] <= 20 and moved[2] > 40 and moved[1] <= 150 and moved[3] > 170
    grown = z.window_for(Box(10, 140, 70, 200), (217, 181))  # much larger than the window was made for
    assert grown != moved


def test_unknown_box_rule_is_refused(segmenter, ellipsoid_volume):
    vol, truth = ellipsoid_volume
    with pytest.raises(ValueError, match="box_rule"):
        propagate(segmenter, vol, {CZ: PromptSet.from_box(*_box(truth[CZ]))}, config=PropagationConfig(box_rule="nope"))


def test_drift_from_the_prompted_slices_tissue_stops_propagation(segmenter):
    # A cylinder through all slices whose brightness falls 40 units a slice from the middle: each step
    # is small (the slice-to-slice rules pass) but the tissue is no longer the prompted one's.
    nz, n = 12, 80
    yy, xx = np.mgrid[:n, :n]
    disc = (yy - 40) ** 2 + (xx - 38) ** 2 <= 18 ** 2
    rng = np.random.default_rng(7)
    vox = np.stack([100 + (850 - 40 * abs(z - 6)) * disc for z in range(nz)]).astype(np.float32)
    vox += rng.normal(0, 10, vox.shape).astype(np.float32)
    vol = Volume(vox, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), modality="MR")
    seed = {6: PromptSet.from_box(*_box(disc))}
    res = propagate(segmenter, vol, seed, config=PropagationConfig(stop_rule="hand"))
    first, last = res.slice_range
    assert 3 <= first and last <= 9, res.notes
    assert any("median intensity" in s.reason for s in res.stops), res.notes
    free = propagate(segmenter, vol, seed, config=PropagationConfig(max_anchor_intensity_shift=None, stop_rule="hand"))
    assert free.voxel_count > res.voxel_count


# -- the learned stop rule (models/propagation_stop.py) ---------------------------------------------

import dataclasses  # noqa: E402
import json  # noqa: E402

import models.propagation as propagation_module  # noqa: E402
from models.propagation import SliceRecord  # noqa: E402
from models.propagation_stop import (STOP_FEATURES, STOP_MODEL_PATH, STOP_MODEL_PRIOR_PATH, LearnedStop,  # noqa: E402
                                     load_stop_model, stop_features)


@pytest.mark.parametrize("path", [STOP_MODEL_PATH, STOP_MODEL_PRIOR_PATH], ids=["boxes alone", "propagation decoder"])
def test_bundled_stop_models_are_well_formed_and_not_fitted_on_the_benchmark(path):
    model = load_stop_model(str(path))
    assert set(model.model.features) <= set(STOP_FEATURES)
    assert 0.0 < model.threshold < 1.0
    assert model.model.low is not None and model.model.max_outside < 1.0  # gated by its training range
    assert "colin27" not in model.trained_on and "deformed0" not in model.trained_on, model.trained_on


def test_malformed_stop_models_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_stop_model(str(tmp_path / "nowhere.json"))
    good = json.loads(STOP_MODEL_PATH.read_text())
    for change, match in ((dict(threshold=1.5), "threshold"), (dict(box_margin=0.15), "box margin"),
                          (dict(model={**good["model"], "features": ["iou", "eye_colour"] + good["model"]["features"][2:]}),
                           "eye_colour"),
                          (dict(model={"type": "ensemble", "members": [good["model"]]}), "must be of type .trees.")):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps({**good, **change}))
        with pytest.raises((ValueError, KeyError), match=match):
            load_stop_model.__wrapped__(str(p))


def _rec(index, area, iou=0.9, box=(10.0, 10.0, 29.0, 29.0)):
    return SliceRecord(index=index, area_px=area, predicted_iou=iou, stability=0.9, consistency=0.8, intensity=0.5,
                       median_intensity=0.5, anchor=False, box=box)


def test_stop_features_measure_depth_against_the_anchors_size():
    mask = np.zeros((40, 40), bool)
    mask[12:28, 12:27] = True
    img = np.where(mask, 0.8, 0.2).astype(np.float32)
    history = [_rec(20, 400), _rec(21, 300), _rec(22, 200)]
    rec = _rec(23, int(mask.sum()), iou=0.7)
    f = stop_features(rec, history, mask, img, depth_mm=3 * 2.5, pixel_mm=0.5)
    assert f["depth"] == pytest.approx(7.5 / (20 * 0.5))  # 3 slices of 2.5 mm vs a 10 mm-wide anchor
    assert f["log_area_peak"] == pytest.approx(np.log(241 / 401))
    assert f["log_growth"] == pytest.approx(np.log(241 / 201))
    assert f["log_growth_prev"] == pytest.approx(np.log(201 / 301))
    assert f["d_iou"] == pytest.approx(0.7 - 0.9) and f["iou_min"] == pytest.approx(0.7)
    assert f["fill"] == pytest.approx(240 / 400)
    assert f["contrast"] > 1.0  # a bright square on a dark ground
    assert set(f) == set(STOP_FEATURES)


def _with_stop_model(monkeypatch, threshold, everything_in_domain=True):
    base = load_stop_model()
    tree = base.model
    if everything_in_domain:
        n = len(tree.features)
        tree = dataclasses.replace(tree, low=(-1e9,) * n, high=(1e9,) * n)
    else:
        tree = dataclasses.replace(tree, max_outside=-1.0)  # nothing is ever in its domain
    monkeypatch.setattr(propagation_module, "load_stop_model", lambda *_: LearnedStop(tree, threshold, "test"))


def test_learned_stop_decides_where_in_domain(segmenter, ellipsoid_volume, monkeypatch):
    vol, truth = ellipsoid_volume
    seed = {CZ: PromptSet.from_box(*_box(truth[CZ]))}
    _with_stop_model(monkeypatch, 1.01)  # no precision reaches it: the first propagated slice stops
    res = propagate(segmenter, vol, seed)
    assert res.slice_range == (CZ, CZ)
    assert all("learned stop" in s.reason for s in res.stops), res.notes
    _with_stop_model(monkeypatch, -1.0)  # never stops: only the vanished-object floor ends a sweep
    res = propagate(segmenter, vol, seed)
    assert all(r.stop_score is not None for r in res.slices if not r.anchor)
    assert all("learned" not in s.reason for s in res.stops), res.notes


def test_learned_stop_leaves_unfamiliar_slices_to_the_hand_rules(segmenter, ellipsoid_volume, monkeypatch):
    vol, truth = ellipsoid_volume
    seed = {CZ: PromptSet.from_box(*_box(truth[CZ]))}
    hand = propagate(segmenter, vol, seed, config=PropagationConfig(stop_rule="hand"))
    _with_stop_model(monkeypatch, 1.01, everything_in_domain=False)
    res = propagate(segmenter, vol, seed)
    assert res.slice_range == hand.slice_range and [s.reason for s in res.stops] == [s.reason for s in hand.stops]
    assert all(r.stop_score is None for r in res.slices)
    with pytest.raises(ValueError, match="stop_rule"):
        propagate(segmenter, vol, seed, config=PropagationConfig(stop_rule="maybe"))


def test_cli_segment_3d_can_use_the_hand_rules(ellipsoid_volume, tmp_path, capsys):
    from app.cli import main
    from integrations.mask_io import write_mask

    vol, truth = ellipsoid_volume
    study = write_mask(tmp_path / "study.nii.gz", vol, (truth * 800 + 200).astype(np.float32))
    box = [str(v) for v in _box(truth[CZ])]
    for rule in ("hand", "learned"):
        out = tmp_path / f"{rule}.nii.gz"
        assert main(["segment-3d", str(study), "--box", *box, "--slice", str(CZ), "--stop-rule", rule,
                     "--out", str(out)]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out.exists() and summary["voxels"] > 0
        if rule == "hand":
            assert not any("learned stop" in s["reason"] for s in summary["stops"]), summary["stops"]
    with pytest.raises(SystemExit) as exc:  # argparse refuses an unknown rule before anything runs
        main(["segment-3d", str(study), "--box", *box, "--stop-rule", "guess", "--out", str(out)])
    assert exc.value.code == 2 and "--stop-rule" in capsys.readouterr().err


def test_the_first_box_after_a_prompt_reaches_halfway_to_the_prompts_box(segmenter, ellipsoid_volume):
    from models.propagation import enlarge_box

    vol, truth = ellipsoid_volume
    x0, y0, x1, y1 = _box(truth[CZ])
    wide = (x0 - 10, y0 - 8, x1 + 10, y1 + 8)  # a loose box: the anchor's mask stays well inside it
    cfg = PropagationConfig(cross_view=None, prior=False)
    res = propagate(segmenter, vol, {CZ: PromptSet.from_box(*wide)}, config=cfg)
    recs = {r.index: r for r in res.slices}
    ys, xs = np.nonzero(res.mask[CZ])
    anchor_mask_box = (xs.min(), ys.min(), xs.max(), ys.max())
    halfway = tuple(int(round((m + b) / 2)) for m, b in zip(anchor_mask_box, wide))
    for z in (CZ - 1, CZ + 1):
        want = enlarge_box(halfway, truth.shape[1:], cfg.box_margin, cfg.box_margin_px)
        assert recs[z].box == pytest.approx((want.x0, want.y0, want.x1, want.y1)), z
    # the slices after the first take their boxes from masks alone
    ys, xs = np.nonzero(res.mask[CZ + 1])
    want = enlarge_box((xs.min(), ys.min(), xs.max(), ys.max()), truth.shape[1:], cfg.box_margin, cfg.box_margin_px)
    assert recs[CZ + 2].box == pytest.approx((want.x0, want.y0, want.x1, want.y1))
    # weight 0: the anchor's mask box, like every other slice
    plain = propagate(segmenter, vol, {CZ: PromptSet.from_box(*wide)},
                      config=PropagationConfig(cross_view=None, prior=False, anchor_box_weight=0.0))
    want = enlarge_box(anchor_mask_box, truth.shape[1:], cfg.box_margin, cfg.box_margin_px)
    assert {r.index: r for r in plain.slices}[CZ + 1].box == pytest.approx((want.x0, want.y0, want.x1, want.y1))
    with pytest.raises(ValueError, match="anchor_box_weight must lie in"):
        propagate(segmenter, vol, {CZ: PromptSet.from_box(*wide)}, config=PropagationConfig(anchor_box_weight=1.5))
