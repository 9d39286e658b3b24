"""Clicks (and strokes on a large structure) the click decoder answers itself
(prompting.clicks.read_answer, SamSegmenter.reads_clicks): one decode for a structure large enough
for the model frame, the box proposals for a small one."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from integrations.metrics import dice
from models.uncertainty import segment_with_uncertainty
from prompting.clicks import ClickConfig, correct_with_click, propose_from_points, read_answer
from prompting.fusion import fuse_and_propose
from prompting.promptset import Point, PromptSet, PromptSource
from prompting.scribbles import Scribble, ScribbleConfig, propose_from_scribbles, sample_along


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(int((a | b).sum()), 1)


@pytest.fixture(scope="module")
def demo_slice():
    """The demo study's first slice (Colin27, 181 x 217) and the left putamen there (68, 126): no
    crisp outline, so the click decoder's reading is the answer."""
    from app import actions
    from app.state import Workstation, open_study
    from app.views.study import DEMO, load_study

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    return actions.slice_session(ws).image01, Point(68.0, 126.0, True)


READ_ONLY = ClickConfig(read_box_iou=None)  # the reading answers, whatever LiteMedSAM makes of its box


def test_a_click_on_a_large_structure_is_read_in_one_decode(segmenter, demo_slice):
    img, click = demo_slice
    emb = segmenter.embed(img)
    ps = propose_from_points(segmenter, emb, img, [click])
    assert ps.box is None and "read by the click decoder" in ps.notes[-1], ps.notes
    assert segmenter.reads_clicks(ps)
    seg = segmenter.decode(emb, ps)
    # what is shown is the reading's best mask, and its IoU head's rating
    reading = segmenter.read_clicks(emb, ps.points)
    assert _iou(seg.mask, reading.best) > 0.99 and seg.mask[126, 68] and 300 < seg.mask.sum() < 1500
    assert seg.predicted_iou == pytest.approx(float(reading.iou.max()), abs=1e-3)


def test_a_crisp_outline_is_drawn_from_the_box_around_the_reading(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    click = [Point(118, 103, True)]
    read = propose_from_points(segmenter, emb, img, click, READ_ONLY)
    assert read.box is None and dice(segmenter.decode(emb, read).mask, mask) > 0.8
    # LiteMedSAM is sure of the box around that reading (IoU >= read_box_iou): the box is the prompt
    ps = propose_from_points(segmenter, emb, img, click)
    assert ps.box is not None and ps.box.confidence >= 0.9 and "that box is the prompt" in ps.notes[-1], ps.notes
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def test_an_answer_below_the_size_rule_goes_to_the_box_proposals(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    click = [Point(118, 103, True)]
    # the disc's reading covers ~4,000 px of the slice, ~5,400 of the model frame
    small_rule = ClickConfig(read_min_area=8_000)
    assert read_answer(segmenter, emb, click, ClickConfig(read_min_area=4_000, read_box_iou=None)) is not None
    assert read_answer(segmenter, emb, click, small_rule) is None
    ps = propose_from_points(segmenter, emb, img, click, small_rule)
    assert ps.box is not None and "chosen among proposals" in ps.notes[-1]
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def test_who_answers_the_proposals_otherwise(segmenter, disc_image, monkeypatch):
    img, _ = disc_image
    emb = segmenter.embed(img)
    click = Point(118, 103, True)

    def proposed(ps):
        return ps.box is not None and "chosen among proposals" in ps.notes[-1]

    # the size rule turned off, gaze points (their own reader), no click decoder: box proposals
    assert proposed(propose_from_points(segmenter, emb, img, [click], ClickConfig(read_min_area=None)))
    assert proposed(propose_from_points(segmenter, emb, img, [replace(click, source=PromptSource.GAZE)]))
    monkeypatch.setattr(segmenter, "click_decoder", None)
    assert read_answer(segmenter, emb, [click]) is None
    assert proposed(propose_from_points(segmenter, emb, img, [click]))
    assert not segmenter.reads_clicks(PromptSet(points=(click,)))


def test_a_batch_mixing_clicks_alone_and_boxes_decodes_each_as_alone(segmenter, disc_image):
    img, _ = disc_image
    emb = segmenter.embed(img)
    clicks = PromptSet(points=(Point(118, 103, True), Point(20, 20, False)))
    box = PromptSet.from_box(70, 50, 170, 150)
    assert not segmenter.reads_clicks(box) and not segmenter.reads_clicks(PromptSet(points=(Point(20, 20, False),)))
    together = segmenter.decode_batch(emb, [box, clicks, box])
    alone = [segmenter.decode(emb, box), segmenter.decode(emb, clicks)]
    for got, want in zip(together, [alone[0], alone[1], alone[0]]):
        assert _iou(got.mask, want.mask) > 0.99
    low, iou = segmenter.decode_logits(emb, [clicks], multimask=True)
    assert tuple(low.shape) == (1, 3, 256, 256) and tuple(iou.shape) == (1, 3)
    multi = segmenter.decode(emb, clicks, multimask=True)
    assert len(multi.candidates) == 3 and multi.predicted_iou == max(s for _, s in multi.candidates)


def test_corrections_of_a_read_answer_are_read_with_every_click(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    ps = propose_from_points(segmenter, emb, img, [Point(118, 103, True)], READ_ONLY)
    shown = segmenter.decode(emb, ps).mask
    # a negative click outside the disc, and a positive one inside: still read, with all the clicks
    ps2 = correct_with_click(segmenter, emb, ps, None, Point(30, 30, False), READ_ONLY, previous_mask=shown)
    ps3 = correct_with_click(segmenter, emb, ps2, None, Point(130, 120, True), READ_ONLY, previous_mask=shown)
    assert ps3.box is None and len(ps3.points) == 3 and "2 positive / 1 negative" in ps3.notes[-1]
    answer = segmenter.decode(emb, ps3).mask
    assert answer[103, 118] and answer[120, 130] and not answer[30, 30] and dice(answer, mask) > 0.6


def test_a_read_answer_has_its_uncertainty(segmenter, demo_slice):
    img, click = demo_slice
    emb = segmenter.embed(img)
    ps = propose_from_points(segmenter, emb, img, [click])
    seg = segment_with_uncertainty(segmenter, emb, ps)
    assert seg.uncertainty_map.shape == img.shape and 0.0 <= seg.uncertainty <= 1.0


def test_fused_clicks_read_by_the_decoder_drop_a_mask_prompt(segmenter, demo_slice):
    img, click = demo_slice
    emb = segmenter.embed(img)
    inputs = [PromptSet(points=(click,)), PromptSet(mask_input=np.zeros((1, 256, 256), np.float32))]
    fused = fuse_and_propose(segmenter, emb, img, inputs)
    assert fused.box is None and fused.mask_input is None and segmenter.reads_clicks(fused)
    assert segmenter.decode(emb, fused).mask[126, 68]


def test_a_click_is_read_once_to_answer_and_to_decode(segmenter, demo_slice, monkeypatch):
    img, click = demo_slice
    emb = segmenter.embed(img)
    twin = segmenter.click_decoder
    calls = []
    real = twin._read_logits
    monkeypatch.setattr(twin, "_read_logits", lambda *a: calls.append(1) or real(*a))
    moved = replace(click, x=click.x + 1)  # not the clicks of the test before: a fresh reading
    ps = propose_from_points(segmenter, emb, img, [moved])
    seg = segmenter.decode(emb, ps)
    assert len(calls) == 1 and seg.mask.any()
    segmenter.decode(emb, PromptSet(points=(click,)))  # other clicks: read again
    assert len(calls) == 2


STROKE = Scribble.of([[95, 100], [120, 96], [145, 104]], width=3)  # across the middle of the 40-px disc


def test_a_stroke_across_a_large_structure_is_answered_by_the_click_decoder(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    # the reading alone: five points along the stroke, decoded by the click decoder
    read = propose_from_scribbles(segmenter, emb, [STROKE], cfg=ScribbleConfig(click=READ_ONLY), image01=img)
    assert read.box is None and segmenter.reads_clicks(read)
    assert len(read.points) == 5 and all(p.positive and p.source is PromptSource.SCRIBBLE for p in read.points)
    assert "along the strokes read by the click decoder" in read.notes[0] and "answered by the click decoder" in read.notes[-1]
    shown = segmenter.decode(emb, read).mask
    assert dice(shown, mask) > 0.8 and shown[100, 95] and shown[104, 145]
    # the disc's outline is crisp: LiteMedSAM's box around the reading is the prompt
    ps = propose_from_scribbles(segmenter, emb, [STROKE], image01=img)
    assert ps.box is not None and ps.box.source is PromptSource.SCRIBBLE and "that box is the prompt" in ps.notes[0]
    assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9


def test_strokes_the_reading_would_leave_out_or_a_small_answer_go_to_the_box_proposals(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    points = sample_along(STROKE, 5)
    assert read_answer(segmenter, emb, points, READ_ONLY) is not None
    elsewhere = np.zeros(mask.shape, bool)
    elsewhere[5:8, 5:60] = True  # a "stroke" the disc does not contain
    assert read_answer(segmenter, emb, points, READ_ONLY, must_cover=elsewhere) is None
    # the disc's reading covers ~5,700 px of the model frame: under an 8,000-px rule, or with the rule
    # off, the strokes' box proposals answer
    for cfg in (ScribbleConfig(read_min_area=8_000), ScribbleConfig(read_min_area=None)):
        ps = propose_from_scribbles(segmenter, emb, [STROKE], cfg=cfg, image01=img)
        assert ps.box is not None and "chosen among" in ps.notes[-1] and len(ps.points) == 3
        assert dice(segmenter.decode(emb, ps).mask, mask) > 0.9
    # a background stroke too: the proposals that keep it out (not measured for the reading)
    bg = Scribble.of([[20, 20], [40, 20]], width=3, positive=False)
    assert "chosen among" in propose_from_scribbles(segmenter, emb, [STROKE, bg], image01=img).notes[-1]


def test_a_click_after_a_read_stroke_is_read_with_the_strokes_points(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    read = propose_from_scribbles(segmenter, emb, [STROKE], cfg=ScribbleConfig(click=READ_ONLY), image01=img)
    shown = segmenter.decode(emb, read).mask
    nxt = correct_with_click(segmenter, emb, read, None, Point(30, 30, False), READ_ONLY, previous_mask=shown)
    assert nxt.box is None and len(nxt.points) == 6 and "5 positive / 1 negative point(s) along the strokes" in nxt.notes[-1]
    answer = segmenter.decode(emb, nxt).mask
    assert answer[100, 120] and not answer[30, 30] and dice(answer, mask) > 0.8
