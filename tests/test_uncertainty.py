"""SAM-U style uncertainty: larger on an ambiguous target than on a crisp one, with the real model."""
from __future__ import annotations

import numpy as np
import pytest

from models.uncertainty import UncertaintyConfig, add_uncertainty, disagreement, jittered_prompts, segment_with_uncertainty
from prompting.promptset import Box, Point, PromptSet


def _crisp_and_ambiguous():
    """Left: a sharp-edged bright disc. Right: a faint blob whose intensity fades slowly into the
    background (no edge says where it ends)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :300]
    crisp = (yy - 80) ** 2 + (xx - 75) ** 2 < 35 ** 2
    r2 = (yy - 80) ** 2 + (xx - 220) ** 2
    blob = 0.45 * np.exp(-r2 / (2 * 30.0 ** 2))
    img = 0.1 + 0.8 * crisp + blob + rng.normal(0, 0.03, crisp.shape)
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def scene(segmenter):
    img = _crisp_and_ambiguous()
    return img, segmenter.embed(img)


def test_ambiguous_target_is_less_certain_than_crisp(segmenter, scene):
    img, emb = scene
    crisp = segment_with_uncertainty(segmenter, emb, PromptSet.from_box(38, 43, 112, 117))
    vague = segment_with_uncertainty(segmenter, emb, PromptSet.from_box(180, 40, 260, 120))
    for s in (crisp, vague):
        assert s.uncertainty_map.shape == img.shape and s.uncertainty_map.dtype == np.float32
        assert 0.0 <= s.uncertainty_map.min() and s.uncertainty_map.max() <= 1.0
        assert 0.0 <= s.uncertainty <= 1.0
        assert any("uncertainty" in n for n in s.notes)
    assert vague.uncertainty > crisp.uncertainty + 0.05
    assert vague.uncertainty_map.sum() > 2 * crisp.uncertainty_map.sum()
    # the crisp disc's disagreement (if any) sits on its edge, never in its middle
    assert crisp.uncertainty_map[80, 75] == 0.0


def test_one_batch_result_matches_plain_decode(segmenter, scene):
    img, emb = scene
    ps = PromptSet.from_box(38, 43, 112, 117)
    plain = segmenter.decode(emb, ps)
    withu = segment_with_uncertainty(segmenter, emb, ps, UncertaintyConfig(samples=4))
    assert (plain.mask == withu.mask).all()
    assert withu.predicted_iou == pytest.approx(plain.predicted_iou, abs=1e-5)


def test_add_uncertainty_fills_an_existing_result_with_multimask(segmenter, scene):
    img, emb = scene
    ps = PromptSet.from_box(180, 40, 260, 120)
    seg = segmenter.decode(emb, ps)
    assert seg.uncertainty is None
    add_uncertainty(segmenter, emb, ps, seg, UncertaintyConfig(samples=4, multimask=True))
    assert seg.uncertainty is not None and seg.uncertainty_map.shape == img.shape


def test_jitter_is_seeded_and_keeps_boxes_valid():
    ps = PromptSet.from_box(0, 0, 20, 20).with_points(Point(5, 5))
    cfg = UncertaintyConfig(samples=6, box_jitter=0.5, seed=3)
    a = jittered_prompts(ps, (30, 30), cfg)
    b = jittered_prompts(ps, (30, 30), cfg)
    assert len(a) == 7 and a[0] is ps
    assert [p.box for p in a] == [p.box for p in b]
    for p in a:
        p.validate((30, 30))
        assert isinstance(p.box, Box) and p.box.x1 > p.box.x0 and p.box.y1 > p.box.y0


def test_disagreement_of_identical_and_split_masks():
    m = np.zeros((4, 10, 10), bool)
    m[:, 2:8, 2:8] = True
    pmap, score = disagreement(m)
    assert score == 0.0 and pmap.max() == 0.0
    m[2:, 2:8, 8:] = True  # half of the samples extend further right
    pmap, score = disagreement(m)
    assert pmap[5, 9] == pytest.approx(1.0) and pmap[5, 5] == 0.0 and score > 0
