"""Fusion rules, case by case (docs/prompting.md), bad prompts, and multi-object decoding."""
from __future__ import annotations

import math

import numpy as np
import pytest

from integrations.errors import InvalidPromptError
from integrations.metrics import dice
from prompting.fusion import (FusionConflictError, FusionPolicy, choose_box, fuse, fuse_and_propose, place_negative,
                              place_positive, resolve_point_conflicts, with_negative_points)
from prompting.multi_object import label_map, resolve_overlaps, segment_objects
from prompting.promptset import Box, Point, PromptSet, PromptSource

S = PromptSource


def text_box(x0=20, y0=20, x1=80, y1=80, conf=0.6):
    return PromptSet(box=Box(x0, y0, x1, y1, S.TEXT, conf), label="left hippocampus")


def test_text_box_plus_gaze_inside_keeps_box_adds_point():
    fix = Point(50, 50, True, S.GAZE, 0.8)
    out = fuse([text_box(), PromptSet(points=(fix,))])
    assert out.box == text_box().box
    assert out.points == (fix,)
    assert out.label == "left hippocampus"


def test_gaze_fixation_outside_text_box_is_dropped_as_stray():
    out = fuse([text_box(), PromptSet(points=(Point(150, 150, True, S.GAZE),))])
    assert out.points == () and out.box == text_box().box
    assert any("stray" in n for n in out.notes)


def test_scribble_just_outside_the_box_widens_it():
    p = Point(85, 50, True, S.SCRIBBLE)
    out = fuse([text_box(), PromptSet(points=(p,))])
    assert out.box.x1 >= 85 and out.box.x0 == 20 and p in out.points
    assert any("widened" in n for n in out.notes)


def test_scribble_far_outside_the_box_is_rejected_with_a_reason():
    p = Point(190, 50, True, S.SCRIBBLE)
    out = fuse([text_box(), PromptSet(points=(p,))])
    assert out.box == text_box().box and p not in out.points
    assert any("rejected" in n and "redraw the box" in n for n in out.notes)


def test_widening_limit_is_a_policy():
    p = Point(190, 50, True, S.SCRIBBLE)
    out = fuse([text_box(), PromptSet(points=(p,))], FusionPolicy(max_widen=5.0))
    assert out.box.x1 >= 190 and p in out.points


def test_user_box_beats_text_box_and_conflict_is_reported():
    user = PromptSet.from_box(100, 100, 150, 150)  # explicit box, far from the text box
    out = fuse([text_box(), user])
    assert out.box.source is S.BOX
    assert any("conflict" in n and "text box" in n for n in out.notes)


def test_overlapping_boxes_agree_quietly():
    box, notes = choose_box([Box(20, 20, 80, 80, S.TEXT, 0.6), Box(22, 25, 82, 78, S.LOCALISER, 0.9)])
    assert box.source is S.LOCALISER and notes == []  # same rank, higher confidence wins


def test_negative_point_inside_box_is_kept_outside_dropped():
    ok, note = place_negative(Box(0, 0, 10, 10), Point(5, 5, False))
    assert ok and note == ""
    ok, note = place_negative(Box(0, 0, 10, 10), Point(50, 5, False))
    assert not ok and "outside the box" in note
    out = fuse([text_box(), with_negative_points(PromptSet(), [(30, 30), (150, 150)])])
    assert [(p.x, p.y, p.positive) for p in out.points] == [(30.0, 30.0, False)]


def test_positive_vs_negative_conflict_higher_rank_wins():
    pts = [Point(50, 50, True, S.GAZE, 0.9), Point(51, 50, False, S.CLICK)]
    kept, notes = resolve_point_conflicts(pts)
    assert kept == [pts[1]] and "kept the negative click point" in notes[0]


def test_equal_rank_conflict_the_later_correction_wins():
    pts = [Point(50, 50, True, S.CLICK), Point(50, 51, False, S.CLICK)]
    kept, _ = resolve_point_conflicts(pts)
    assert kept == [pts[1]]


def test_only_negative_evidence_cannot_be_fused():
    with pytest.raises(FusionConflictError, match="no box and no positive point"):
        fuse([with_negative_points(PromptSet(), [(3, 3)])])
    with pytest.raises(FusionConflictError, match="no prompt"):
        fuse([PromptSet(), None])


def test_mask_input_comes_from_the_refinement():
    logits = np.ones((1, 256, 256), np.float32)
    ref = PromptSet(points=(Point(50, 50, True, S.REFINEMENT),), mask_input=logits)
    out = fuse([text_box(), ref])
    assert out.mask_input is logits


def test_place_positive_inside_is_unchanged():
    b = Box(0, 0, 10, 10)
    assert place_positive(b, Point(5, 5)) == (b, True, "")


@pytest.mark.parametrize("ps, words", [
    (PromptSet.from_box(300, 300, 400, 400), "outside"),
    (PromptSet.from_box(10, 10, 10, 40), "no area"),
    (PromptSet.from_box(math.nan, 10, 20, 40), "non-numeric"),
    (PromptSet(points=(Point(math.nan, 4.0),)), "non-numeric"),
    (PromptSet(), "no prompt"),
])
def test_bad_prompts_are_rejected_with_a_clear_message(ps, words):
    with pytest.raises(InvalidPromptError, match=words):
        ps.validate((200, 240))


# -- with the real model ---------------------------------------------------------------------

def _three_blobs():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:180, :240]
    a = (yy - 60) ** 2 + (xx - 60) ** 2 < 28 ** 2
    b = (yy - 60) ** 2 + (xx - 128) ** 2 < 28 ** 2  # touches a
    c = (yy - 135) ** 2 + (xx - 180) ** 2 < 25 ** 2
    img = 0.1 + 0.75 * a + 0.55 * b + 0.85 * c + rng.normal(0, 0.02, a.shape)
    return np.clip(img, 0, 1).astype(np.float32), [a, b, c]


@pytest.fixture(scope="module")
def blobs(segmenter):
    img, masks = _three_blobs()
    return img, masks, segmenter.embed(img)


def test_fuse_and_propose_turns_gaze_points_into_a_box(segmenter, blobs):
    img, masks, emb = blobs
    out = fuse_and_propose(segmenter, emb, img, [PromptSet(points=(Point(180, 135, True, S.GAZE, 0.8),))])
    assert out.box is not None and out.box.source is S.GAZE
    assert dice(segmenter.decode(emb, out).mask, masks[2]) > 0.85


def test_multi_object_one_batch_no_overlap(segmenter, blobs):
    img, masks, emb = blobs
    # generous boxes that overlap each other on purpose
    prompts = [PromptSet.from_box(25, 25, 105, 95, label="a"), PromptSet.from_box(85, 25, 165, 95, label="b"),
               PromptSet.from_box(150, 105, 210, 165, label="c")]
    segs = segment_objects(segmenter, emb, prompts)
    assert [s.label for s in segs] == ["a", "b", "c"]
    stack = np.stack([s.mask for s in segs])
    assert stack.sum(0).max() <= 1, "objects must not overlap"
    for s, m in zip(segs, masks):
        assert dice(s.mask, m) > 0.8
    lm = label_map(segs)
    assert set(np.unique(lm)) == {0, 1, 2, 3}
    both = segment_objects(segmenter, emb, prompts, allow_overlap=True)
    assert all(b.mask.sum() >= s.mask.sum() for b, s in zip(both, segs))


def test_multi_object_rejects_duplicate_labels_and_empty(segmenter, blobs):
    img, masks, emb = blobs
    with pytest.raises(InvalidPromptError, match="share the label"):
        segment_objects(segmenter, emb, [PromptSet.from_box(1, 1, 20, 20, label="x"), PromptSet.from_box(30, 30, 50, 50, label="x")])
    with pytest.raises(InvalidPromptError, match="no objects"):
        segment_objects(segmenter, emb, [])


def test_resolve_overlaps_by_logits():
    logits = np.array([[[2.0, 1.0, -1.0]], [[1.0, 3.0, -2.0]]])
    m = resolve_overlaps(logits)
    assert m.tolist() == [[[True, False, False]], [[False, True, False]]]
