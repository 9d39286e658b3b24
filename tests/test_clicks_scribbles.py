"""Clicks and scribbles -> prompts, decoded by the real LiteMedSAM on small synthetic slices."""
from __future__ import annotations

import math

import numpy as np
import pytest

from integrations.errors import InvalidPromptError
from integrations.metrics import dice
from prompting.clicks import (apply_click_edits, check_points, correct_with_click, correction_boxes, decoder_prompt,
                              edge_click_depth, propose_from_points)
from prompting.promptset import Box, Point, PromptSet, PromptSource
from prompting.scribbles import (Scribble, ScribbleConfig, check_scribble, mask_prompt, propose_from_scribbles, rasterize,
                                 remove_negative, sample_along)


def _two_discs():
    """Two bright discs of different brightness side by side on a dark background."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:160, :220]
    a = (yy - 80) ** 2 + (xx - 70) ** 2 < 32 ** 2
    b = (yy - 80) ** 2 + (xx - 150) ** 2 < 26 ** 2
    img = 0.1 + 0.8 * a + 0.5 * b + rng.normal(0, 0.02, a.shape)
    return np.clip(img, 0, 1).astype(np.float32), a, b


@pytest.fixture(scope="module")
def disc(segmenter, disc_image):
    img, mask = disc_image
    return img, mask, segmenter.embed(img)


@pytest.fixture(scope="module")
def two(segmenter):
    img, a, b = _two_discs()
    return img, a, b, segmenter.embed(img)


@pytest.fixture(scope="module")
def disc_image():  # module-scoped copy of conftest's disc (the embedding is reused by several tests)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:200, :240]
    mask = (yy - 100) ** 2 + (xx - 120) ** 2 < 40 ** 2
    img = 0.1 + 0.8 * mask + rng.normal(0, 0.02, mask.shape)
    return np.clip(img, 0, 1).astype(np.float32), mask


def test_one_click_becomes_a_box_and_keeps_the_click(segmenter, disc):
    img, mask, emb = disc
    click = Point(118.0, 103.0)
    ps = propose_from_points(segmenter, emb, img, [click])
    assert ps.box is not None and ps.points == (click,)
    assert ps.box.source is PromptSource.CLICK and 0.0 <= ps.box.confidence <= 1.0
    assert ps.notes and "box" in ps.notes[0]
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def test_click_alone_is_not_enough_for_litemedsam(segmenter, disc, monkeypatch):
    """Why clicks become boxes: the same click without a box is far worse for LiteMedSAM's own decoder
    (DESIGN.md; with the click decoder, tests/test_click_answer.py)."""
    img, mask, emb = disc
    with monkeypatch.context() as m:
        m.setattr(segmenter, "click_decoder", None)
        alone = segmenter.decode(emb, PromptSet(points=(Point(118.0, 103.0),)))
    boxed = segmenter.decode(emb, propose_from_points(segmenter, emb, img, [Point(118.0, 103.0)]))
    assert dice(boxed.mask, mask) > dice(alone.mask, mask) + 0.2


def test_gaze_points_keep_their_source(segmenter, disc):
    img, mask, emb = disc
    pts = [Point(110.0, 95.0, True, PromptSource.GAZE, 0.7), Point(130.0, 108.0, True, PromptSource.GAZE, 0.7)]
    ps = propose_from_points(segmenter, emb, img, pts)
    assert ps.box.source is PromptSource.GAZE
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def test_negative_click_excludes_the_neighbour(segmenter, two):
    img, a, b, emb = two
    ps = propose_from_points(segmenter, emb, img, [Point(70.0, 80.0), Point(150.0, 80.0, positive=False)])
    m = segmenter.decode(emb, ps).mask
    assert not m[80, 150], "the negatively clicked disc must be outside the result"
    assert dice(m, a) > 0.85
    # the box must not reach over the negatively clicked disc's centre
    assert not ps.box.contains(150.0, 80.0)


def test_positive_clicks_on_both_discs_cover_both(segmenter, two):
    img, a, b, emb = two
    ps = propose_from_points(segmenter, emb, img, [Point(70.0, 80.0), Point(150.0, 80.0)])
    assert ps.box.contains(70.0, 80.0) and ps.box.contains(150.0, 80.0)


@pytest.mark.parametrize("pts, words", [
    ([], "no click"),
    ([Point(math.nan, 3.0)], "non-numeric"),
    ([Point(500.0, 3.0)], "outside"),
    ([Point(5.0, 5.0, positive=False)], "only negative"),
])
def test_bad_clicks_are_rejected_with_a_reason(pts, words):
    with pytest.raises(InvalidPromptError, match=words):
        check_points(pts, (200, 240))


def test_correction_widens_the_box_for_a_missed_part(segmenter, disc):
    img, mask, emb = disc
    # a box over the left half only: the user then clicks in the missed right half
    start = PromptSet(points=(Point(100.0, 100.0),), box=Box(78, 58, 120, 142, PromptSource.CLICK))
    first = segmenter.decode(emb, start)
    nxt = correct_with_click(segmenter, emb, start, first.low_res_logits, Point(150.0, 100.0))
    assert nxt.box.x1 > 150 and len(nxt.points) == 2
    assert dice(segmenter.decode(emb, nxt).mask, mask) > dice(first.mask, mask) + 0.2


def test_correction_boxes_cut_at_a_negative_click():
    boxes = correction_boxes(np.array([0, 0, 100, 100], np.float32), Point(90.0, 50.0, positive=False), (200, 200))
    assert any(b[2] < 90 for b in boxes)  # cut on the nearest (right) side
    assert any(np.allclose(b, [0, 0, 100, 100]) for b in boxes)


# -- scribbles ---------------------------------------------------------------------------------

def test_scribble_rasterises_with_width_and_samples_along():
    s = Scribble.of([[10, 10], [50, 10]], width=5)
    m = rasterize([s], (40, 80))
    assert m[10, 10:51].all() and m[8:13, 30].all() and not m[20, 30]
    pts = sample_along(s, 3)
    assert [(p.x, p.y) for p in pts] == [(10.0, 10.0), (30.0, 10.0), (50.0, 10.0)]
    assert all(p.source is PromptSource.SCRIBBLE and p.positive for p in pts)


@pytest.mark.parametrize("s, words", [
    (Scribble.of(np.zeros((0, 2))), "empty"),
    (Scribble.of([[1, math.nan], [3, 4]]), "non-numeric"),
    (Scribble.of([[1, 1], [3, 4]], width=0), "width"),
    (Scribble.of([[-50, -5], [-10, -40]]), "outside"),
])
def test_bad_scribbles_are_rejected(s, words):
    with pytest.raises(InvalidPromptError, match=words):
        check_scribble(s, (100, 100))


def test_foreground_scribble_segments_the_disc(segmenter, disc):
    img, mask, emb = disc
    # the box proposals around the stroke (a disc this large is otherwise the click decoder's to
    # answer: tests/test_click_answer.py)
    ps = propose_from_scribbles(segmenter, emb, [Scribble.of([[100, 100], [120, 95], [140, 105]], width=3)],
                                cfg=ScribbleConfig(read_min_area=None))
    assert ps.box is not None and ps.box.source is PromptSource.SCRIBBLE
    assert len(ps.points) == 3 and all(p.positive for p in ps.points)
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def test_background_only_scribble_is_rejected(segmenter, disc):
    img, mask, emb = disc
    with pytest.raises(InvalidPromptError, match="only background"):
        propose_from_scribbles(segmenter, emb, [Scribble.of([[5, 5], [30, 5]], positive=False)])


def test_box_plus_background_scribble_cuts_the_box(segmenter, two):
    img, a, b, emb = two
    # a sloppy box over both discs, then a background stroke down the near edge of the right disc
    box = Box(30, 40, 185, 120)
    bg = Scribble.of([[128, 60], [128, 100]], width=3, positive=False)
    ps = propose_from_scribbles(segmenter, emb, [bg], box=box)
    assert any(not p.positive for p in ps.points)
    assert ps.box.x1 < 128
    m = segmenter.decode(emb, ps).mask
    assert not m[80, 160] and dice(m, a) > 0.85


def test_dense_mask_prompt_shape_and_sign(segmenter):
    fg = np.zeros((100, 200), bool)
    fg[40:60, 50:80] = True
    low = mask_prompt(segmenter, (100, 200), fg)
    assert low.shape == (1, 256, 256)
    assert low.max() > 0 and low.min() == 0.0  # strokes say "object", the rest says nothing
    bg = np.zeros_like(fg)
    bg[10, :] = True
    assert mask_prompt(segmenter, (100, 200), fg, bg).min() < 0  # background strokes say "not it"


def test_remove_negative_drops_crossed_components():
    m = np.zeros((50, 50), bool)
    m[5:25, 5:25] = True  # the object
    m[35:45, 35:45] = True  # a spurious blob the user strikes out
    neg = np.zeros_like(m)
    neg[40, 30:48] = True
    out = remove_negative(m, neg)
    assert out[10, 10] and not out[40, 40]


# -- decoder prompt, accepted corrections, stroke fit (issue 3 accuracy work) ---------------------

def test_decoder_prompt_is_the_box_alone_for_litemedsam(segmenter, disc):
    from prompting.clicks import decoder_prompt, is_box_trained

    img, mask, emb = disc
    ps = propose_from_points(segmenter, emb, img, [Point(118.0, 103.0)])
    assert is_box_trained(segmenter)
    dp = decoder_prompt(segmenter, ps)
    assert dp.box == ps.box and dp.points == () and dp.mask_input is None
    assert ps.points  # the evidence stays in the PromptSet itself
    assert decoder_prompt(segmenter, PromptSet(points=(Point(1.0, 1.0),))).points  # no box: nothing to drop


def test_a_correction_that_would_not_agree_better_keeps_the_box(segmenter, disc):
    """A negative click far outside the object: no box variant agrees better than the result already
    does (it excludes that point), so the box stays and the click is recorded."""
    img, mask, emb = disc
    start = propose_from_points(segmenter, emb, img, [Point(118.0, 103.0)])
    first = segmenter.decode(emb, start)
    nxt = correct_with_click(segmenter, emb, start, first.low_res_logits, Point(10.0, 10.0, positive=False),
                             previous_mask=first.mask)
    assert nxt.box == start.box and len(nxt.points) == 2 and "box kept" in nxt.notes[-1]


def test_negative_correction_cuts_a_box_that_holds_a_neighbour(segmenter, two):
    img, a, b, emb = two
    start = PromptSet(points=(Point(70.0, 80.0),), box=Box(30, 40, 185, 120, PromptSource.CLICK))
    first = segmenter.decode(emb, start)
    assert first.mask[80, 150], "premise: the sloppy box's mask covers the right disc"
    nxt = correct_with_click(segmenter, emb, start, first.low_res_logits, Point(150.0, 80.0, positive=False),
                             previous_mask=first.mask)
    m = segmenter.decode(emb, nxt).mask
    assert not m[80, 150] and dice(m, a) > dice(first.mask, a)


def _square():
    m = np.zeros((60, 60), bool)
    m[20:40, 20:40] = True
    return m


def test_edge_click_depth_is_the_distance_across_the_edge():
    m = _square()
    assert edge_click_depth(m, Point(21.0, 30.0, positive=False)) == 2.0  # 2 px inside, negative
    assert edge_click_depth(m, Point(17.0, 30.0)) == 3.0  # 3 px outside, positive
    assert edge_click_depth(m, Point(30.0, 30.0)) == 0.0  # a positive click the mask already holds
    assert edge_click_depth(m, Point(5.0, 5.0, positive=False)) == 0.0  # a negative one it already excludes
    assert edge_click_depth(m, Point(2.0, 2.0)) > 5.0  # far outside (the image border is not an edge)


def test_click_edits_move_the_edge_locally_and_leave_the_rest():
    m = _square()
    cut = apply_click_edits(m, [Point(21.0, 30.0, positive=False)])
    assert not cut[30, 21] and not cut[30, 20]  # the edge moved in past the click...
    assert cut[30, 22] and cut[20, 20] and cut[39, 39]  # ...no deeper, and only there
    assert 0 < m.sum() - cut.sum() <= 12
    grown = apply_click_edits(m, [Point(17.0, 30.0)])
    assert grown[30, 17] and grown[30, 18] and grown[30, 19] and not grown[30, 16] and not grown[20, 17]
    # deep clicks are the box's job; gaze points and text are not clicks; both leave the mask alone
    assert np.array_equal(apply_click_edits(m, [Point(30.0, 30.0, positive=False)]), m)
    assert np.array_equal(apply_click_edits(m, [Point(21.0, 30.0, False, PromptSource.GAZE)]), m)
    assert np.array_equal(m, _square())  # pure


def test_a_positive_click_in_a_hole_fills_it():
    """A ventricle inside the brain, the lumen inside a vessel wall: a positive click in a hole the mask
    encloses means the hole belongs to the structure; background open to the image's border is not a hole."""
    yy, xx = np.mgrid[:80, :80]
    ring = ((yy - 40) ** 2 + (xx - 40) ** 2 < 25 ** 2) & ((yy - 40) ** 2 + (xx - 40) ** 2 >= 10 ** 2)
    filled = apply_click_edits(ring, [Point(40.0, 40.0)])
    assert filled[40, 40] and filled.sum() == ((yy - 40) ** 2 + (xx - 40) ** 2 < 25 ** 2).sum()
    assert np.array_equal(apply_click_edits(ring, [Point(3.0, 3.0)]), ring)  # open background, far from the edge


def test_a_correction_at_the_edge_keeps_the_box_and_moves_the_edge(segmenter, disc):
    """A negative click 2 px inside the result's edge: within a hand's aim of the edge (2 px SD), so
    the box is not re-decided for it (that cut nuclei by 0.06-0.29 Dice); the edge moves there."""
    img, mask, emb = disc
    start = propose_from_points(segmenter, emb, img, [Point(118.0, 103.0)])
    first = segmenter.decode(emb, decoder_prompt(segmenter, start))  # what the app decodes: the box
    x_edge = int(np.nonzero(first.mask[100])[0].max())  # the mask's rightmost pixel on row 100
    click = Point(float(x_edge - 1), 100.0, positive=False)
    nxt = correct_with_click(segmenter, emb, start, first.low_res_logits, click, previous_mask=first.mask)
    assert nxt.box == start.box and "edge moves" in nxt.notes[-1]
    shown = apply_click_edits(segmenter.decode(emb, decoder_prompt(segmenter, nxt)).mask, nxt.points)
    assert not shown[100, x_edge - 1] and shown.sum() >= 0.97 * first.mask.sum()
    assert dice(shown, mask) > 0.9


def test_stroke_fit_prefers_the_structure_the_stroke_runs_along():
    from prompting.scribbles import ScribbleConfig, stroke_fit

    yy, xx = np.mgrid[:120, :160]
    bar = (np.abs(yy - 60) <= 8) & (xx >= 30) & (xx <= 130)  # an elongated structure
    stroke = rasterize([Scribble.of([[40, 60], [120, 60]], width=3)], bar.shape)
    bigger = (yy >= 52) & (yy <= 115) & (xx >= 20) & (xx <= 140)  # a larger region it lies along the edge of
    part = (np.abs(yy - 60) <= 8) & (xx >= 30) & (xx <= 80)  # half of it: misses half the stroke
    cfg = ScribbleConfig()
    assert stroke_fit(bar, stroke, cfg) > stroke_fit(bigger, stroke, cfg)
    assert stroke_fit(bar, stroke, cfg) > stroke_fit(part, stroke, cfg)


def _notched_disc() -> np.ndarray:
    """A disc with a deep slit from its left edge to just past its centre (a brain's midline fissure)."""
    yy, xx = np.mgrid[:120, :120]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 <= 45 ** 2
    disc[57:64, :66] = False
    return disc


def test_hull_gap_sees_a_click_at_the_middle_of_a_notched_outline():
    from prompting.clicks import _depth_stats, hull_gap

    disc = _notched_disc()
    middle = [Point(62.0, 60.0, True)]  # in the slit's end: near the mask's edge, at the outline's middle
    _, gap, top = _depth_stats(disc, middle)
    assert gap == top > 15  # by the mask's own depth, a click on its edge
    assert hull_gap(disc, middle) < 0.1
    assert hull_gap(disc, [Point(60.0, 100.0, True)]) > 0.8  # near the outline's edge
    assert hull_gap(disc, [Point(5.0, 5.0, True)]) > 0.95  # outside the outline
    assert hull_gap(np.zeros_like(disc), middle) == 1.0


# -- learned proposal ranker (prompting/proposal_ranker.py) ----------------------------------------

def test_bundled_rankers_load_and_match_the_feature_lists():
    from prompting.gaze_ranking import GAZE_FEATURES
    from prompting.proposal_ranker import CLICK_FEATURES, READ_FEATURES, STROKE_FEATURES, load_ranker

    from prompting.proposal_ranker import EnsembleRanker, LinearRanker, TreeRanker

    for kind, names in (("click", CLICK_FEATURES + READ_FEATURES), ("click_plain", CLICK_FEATURES), ("stroke", STROKE_FEATURES),
                        ("gaze", GAZE_FEATURES)):
        r = load_ranker(kind)
        assert r.features == names
        assert "disjoint" in r.trained_on
        for m in (r.members if isinstance(r, EnsembleRanker) else (r,)):
            assert m.features == names
            if isinstance(m, LinearRanker):
                assert len(m.weights) == len(names) and np.isfinite(m.weights).all() and min(m.scale) > 0
            else:
                assert isinstance(m, TreeRanker) and len(m.trees) > 10
    assert isinstance(load_ranker("gaze"), EnsembleRanker)  # linear + trees (bench/train_ranker.py MODEL)
    with pytest.raises(KeyError, match="no 'voice' ranker"):
        load_ranker("voice")


def _write_rankers(tmp_path, entry) -> str:
    import json

    p = tmp_path / "rankers.json"
    p.write_text(json.dumps({"toy": entry}))
    return str(p)


# one tree on feature "a" (a <= 0.5: node 1, else node 2 which splits on "b" at 2.0), baseline 0.1
TOY_TREE = {"feature": [0, -1, 1, -1, -1], "threshold": [0.5, 0, 2.0, 0, 0], "left": [1, 0, 3, 0, 0],
            "right": [2, 0, 4, 0, 0], "value": [0, -1.0, 0, 0.25, 0.75]}


def test_tree_ranker_walks_each_tree_to_its_leaf_and_sums(tmp_path):
    from prompting.proposal_ranker import load_ranker

    path = _write_rankers(tmp_path, {"type": "trees", "features": ["a", "b"], "baseline": 0.1,
                                     "trees": [TOY_TREE, TOY_TREE], "trained_on": "toy"})
    r = load_ranker("toy", path)
    table = {"a": np.array([0.0, 0.5, 1.0, 1.0, np.nan]), "b": np.array([9.0, 9.0, 2.0, 3.0, np.inf])}
    # nan -> 0 (left), inf -> 5 (right), as the fit saw them; a == threshold goes left
    assert np.allclose(r.score(table), [0.1 - 2.0, 0.1 - 2.0, 0.1 + 0.5, 0.1 + 1.5, 0.1 - 2.0])


def test_ensemble_sums_standardised_member_scores(tmp_path):
    from prompting.proposal_ranker import load_ranker

    linear = {"features": ["a"], "mean": [0.0], "scale": [1.0], "weights": [-1.0]}
    trees = {"type": "trees", "features": ["a", "b"], "baseline": 0.0, "trees": [TOY_TREE]}
    r = load_ranker("toy", _write_rankers(tmp_path, {"type": "ensemble", "members": [linear, trees]}))
    table = {"a": np.array([0.0, 1.0, 1.0]), "b": np.array([0.0, 1.0, 3.0])}
    lin, tr = -table["a"], np.array([-1.0, 0.25, 0.75])
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    assert r.features == ("a", "b")
    assert np.allclose(r.score(table), z(lin) + z(tr))
    assert np.argmax(r.score(table)) == 2


def test_trees_sit_out_proposals_unlike_their_training_ones(tmp_path):
    """A tree member scores only proposals inside its training range (share of feature values
    outside <= max_outside); otherwise the ensemble is its linear member alone."""
    from prompting.proposal_ranker import LinearRanker, load_ranker

    linear = {"features": ["a"], "mean": [0.0], "scale": [1.0], "weights": [-1.0]}
    trees = {"type": "trees", "features": ["a", "b"], "baseline": 0.0, "trees": [TOY_TREE],
             "range": {"low": [0.0, 0.0], "high": [1.0, 3.0], "max_outside": 0.2}}
    r = load_ranker("toy", _write_rankers(tmp_path, {"type": "ensemble", "members": [linear, trees]}))
    usual = {"a": np.array([0.0, 1.0, 1.0]), "b": np.array([0.0, 1.0, 3.0])}
    odd = {"a": np.array([0.0, 1.0, 1.0]), "b": np.array([0.0, 9.0, 30.0])}  # 2 of 6 values outside
    assert r.members[1].outside_share(usual) == 0.0 and r.members[1].outside_share(odd) == pytest.approx(1 / 3)
    assert len(r.active_members(usual)) == 2
    assert [type(m) for m in r.active_members(odd)] == [LinearRanker]
    lin = -odd["a"]
    assert np.allclose(r.score(odd), (lin - lin.mean()) / lin.std())


@pytest.mark.parametrize("broken, message", [
    ({"feature": [0, -1], "threshold": [0.5, 0], "left": [1, 0], "right": [0, 0], "value": [0, 1.0]}, "malformed tree"),
    ({"feature": [3, -1, -1], "threshold": [0.5, 0, 0], "left": [1, 0, 0], "right": [2, 0, 0], "value": [0, 1, 2]}, "malformed tree"),
    ({"feature": [-1], "threshold": [0], "left": [0], "right": [0], "value": [float("nan")]}, "malformed tree"),
    ({"feature": [], "threshold": [], "left": [], "right": [], "value": []}, "malformed tree"),
])
def test_a_malformed_tree_file_is_refused_naming_the_ranker(tmp_path, broken, message):
    from prompting.proposal_ranker import load_ranker

    path = _write_rankers(tmp_path, {"type": "trees", "features": ["a", "b"], "baseline": 0.0, "trees": [broken]})
    with pytest.raises(ValueError, match=f"'toy' ranker .*{message}"):
        load_ranker("toy", path)


def _hand_candidate(mask, box, points):
    """A click proposal with the hand-score fields computed as score_boxes does (no decoder)."""
    from prompting.clicks import ClickConfig, _box_iou, _depth_stats, _mask_box, _points_agreement, _Scored

    cfg = ClickConfig()
    cen, gap, top = _depth_stats(mask, points)
    fit = float(np.exp(-0.5 * (gap / (cfg.gap_px + cfg.gap_frac * top)) ** 2))
    return _Scored(np.asarray(box, np.float32), mask, np.zeros((1, 256, 256), np.float32), 0.0, 0.9, 0.95,
                   _box_iou(_mask_box(mask), np.asarray(box, np.float32)), _points_agreement(mask, points), cen,
                   neighbours=0.8, depth_fit=fit, area=float(mask.sum()), gap=gap, top=top)


def test_ranker_prefers_the_disc_over_an_enclosing_or_inner_mask():
    """A bright disc on a mid-grey square on a dark background, clicked at its centre: the disc's own
    mask must outrank the enclosing square and a smaller disc inside it (same decoder confidence)."""
    from prompting.clicks import ClickConfig, click_features
    from prompting.proposal_ranker import load_ranker, ranker_for

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:200, :200]
    square = (np.abs(yy - 100) <= 60) & (np.abs(xx - 100) <= 60)
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 28 ** 2
    inner = (yy - 100) ** 2 + (xx - 100) ** 2 < 14 ** 2
    img = np.clip(0.05 + 0.4 * square + 0.45 * disc + rng.normal(0, 0.02, disc.shape), 0, 1).astype(np.float32)
    pts = [Point(101.0, 99.0)]
    cands = [_hand_candidate(disc, [70, 70, 130, 130], pts), _hand_candidate(square, [38, 38, 162, 162], pts),
             _hand_candidate(inner, [85, 85, 115, 115], pts)]
    table = click_features(cands, img, pts)  # no click decoder read these: the plain ranker ranks
    scores = ranker_for(ClickConfig().ranker, table).score(table)
    assert scores[0] > scores[1] and scores[0] > scores[2], scores
    assert np.array_equal(scores, load_ranker("click_plain").score(click_features(cands, img, pts)))  # deterministic


def test_click_proposal_with_the_ranker_is_deterministic_and_finds_the_disc(segmenter, disc):
    img, mask, emb = disc
    a = propose_from_points(segmenter, emb, img, [Point(118.0, 103.0)])
    b = propose_from_points(segmenter, emb, img, [Point(118.0, 103.0)])
    assert a.box == b.box
    assert dice(segmenter.decode(emb, a).mask, mask) > 0.9


def test_scribble_ranker_uses_the_image_and_finds_the_disc(segmenter, disc):
    img, mask, emb = disc
    ps = propose_from_scribbles(segmenter, emb, [Scribble.of([[100, 100], [120, 95], [140, 105]], width=3)], image01=img,
                                cfg=ScribbleConfig(read_min_area=None))
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def _disc_in_square():
    """A small bright disc inside a large mid-grey square on a dark background: the disc is a part,
    the square the whole (a parcel inside an organ)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:220, :220]
    square = (np.abs(yy - 110) <= 80) & (np.abs(xx - 110) <= 80)
    disc = (yy - 80) ** 2 + (xx - 80) ** 2 < 16 ** 2
    img = 0.05 + 0.45 * square + 0.45 * disc + rng.normal(0, 0.02, square.shape)
    return np.clip(img, 0, 1).astype(np.float32), disc, square


def test_a_positive_click_far_outside_the_result_may_grow_it_several_fold(segmenter):
    """The result is the disc; the user clicks deep in the square, far from it: the correction must
    be allowed to grow the mask to the square (the size check would keep it at the disc's size)."""
    from dataclasses import replace

    from prompting.clicks import ClickConfig

    img, disc, square = _disc_in_square()
    emb = segmenter.embed(img)
    start = PromptSet(points=(Point(80.0, 80.0),), box=Box(60, 60, 100, 100, PromptSource.CLICK))
    first = segmenter.decode(emb, start)
    assert dice(first.mask, disc) > 0.8, "premise: the first result is the disc"
    far = Point(150.0, 160.0)
    grown = correct_with_click(segmenter, emb, start, first.low_res_logits, far, previous_mask=first.mask)
    m = segmenter.decode(emb, grown).mask
    assert m[160, 150] and m[80, 80] and m.sum() > 5 * first.mask.sum(), grown.notes[-1]
    assert dice(m, square) > 0.8
    # the old rule (size check for every correction) refuses the jump and keeps the box
    kept = correct_with_click(segmenter, emb, start, first.low_res_logits, far, previous_mask=first.mask,
                              cfg=replace(ClickConfig(), far_click_radii=None))
    assert kept.box == start.box and "box kept" in kept.notes[-1]


def test_a_negative_click_deep_inside_the_result_rejects_it_for_a_fresh_reading(segmenter):
    """The result is the square (the organ) where the disc (a part of it) was meant; the user clicks
    deep inside the square, away from the disc: the correction reads all clicks afresh (the proposal
    a new click would get) instead of trimming the square, and may shrink it several-fold."""
    from dataclasses import replace

    from prompting.clicks import ClickConfig, best_box_for_points

    img, disc, square = _disc_in_square()
    emb = segmenter.embed(img)
    # an earlier negative click below the disc already says the lower square is not meant
    start = PromptSet(points=(Point(80.0, 80.0), Point(80.0, 150.0, positive=False)),
                      box=Box(30, 30, 190, 190, PromptSource.CLICK))
    first = segmenter.decode(emb, start)
    assert dice(first.mask, square) > 0.8, "premise: the first result is the square"
    deep = Point(140.0, 90.0, positive=False)  # ~0.6 of the way from the square's edge to its middle
    fixed = correct_with_click(segmenter, emb, start, first.low_res_logits, deep, previous_mask=first.mask)
    assert "read afresh" in fixed.notes[-1], fixed.notes[-1]
    fresh = best_box_for_points(segmenter, emb, None, start.points + (deep,), replace(ClickConfig(), grow_tolerances=()))
    assert np.allclose(fixed.box.as_array(), fresh.box)
    m = segmenter.decode(emb, fixed).mask
    assert m[80, 80] and not m[90, 140] and not m[150, 80]
    assert m.sum() < 0.4 * first.mask.sum()  # more than the size check allows
    # the rule off: the size check refuses the fresh reading (a trimmed box is chosen, or none)
    old = correct_with_click(segmenter, emb, start, first.low_res_logits, deep, previous_mask=first.mask,
                             cfg=replace(ClickConfig(), deep_negative=None))
    assert "read afresh" not in old.notes[-1]
    assert not np.allclose(old.box.as_array(), fresh.box)
