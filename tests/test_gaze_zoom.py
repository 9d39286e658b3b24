"""The one-shot gaze path (models/gaze_zoom.py): the reading repeated on a zoomed crop, real weights."""
from __future__ import annotations

import numpy as np
import pytest

from bench.simulated_gaze import simulate_gaze
from models.gaze_zoom import sharpen_gaze
from prompting.gaze import GazePromptConfig, ViewingGeometry, detect_fixations, gaze_prompt

GEOM = ViewingGeometry(600.0, 0.27, 4.0)  # ~9.7 image px per degree


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture
def small_structure():
    """A small ring-shaped lesion (bright rim, darker core) beside a larger bright blob: the whole slice
    gives the decoder few pixels of it, the crop many."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - 150, xx - 90)
    mask = r < 13
    img = 0.15 + 0.6 * mask - 0.25 * (r < 5) + 0.7 * (np.hypot(yy - 80, xx - 180) < 45)
    img = np.clip(img + rng.normal(0, 0.02, mask.shape), 0, 1).astype(np.float32)
    return img, mask


def _reading(segmenter, image, mask, seed=5):
    emb = segmenter.embed(image)
    fx = detect_fixations(simulate_gaze(mask, GEOM, np.random.default_rng(seed), sigma_deg=0.5).samples, GEOM)
    return fx, gaze_prompt(segmenter, emb, mask.shape, fx, GEOM, image01=image)


def test_zoomed_reading_offers_crop_masks_and_is_repeatable(segmenter, small_structure):
    image, mask = small_structure
    fx, prop = _reading(segmenter, image, mask)
    a = sharpen_gaze(segmenter, image, prop, fx, GEOM)
    b = sharpen_gaze(segmenter, image, prop, fx, GEOM)
    assert np.array_equal(a.segmentation.mask, b.segmentation.mask) and a.prompt.box == b.prompt.box
    # the crop's masks were in the choice (the whole slice's candidates, the zoomed box, the crop's own)
    assert a.candidates > len(prop.choices) + 1
    assert a.segmentation.mask.shape == mask.shape and _dice(a.segmentation.mask, mask) > 0.8
    assert a.prompt.box.source.value == "gaze" and a.prompt.points == prop.prompt.points
    a.prompt.validate(mask.shape)
    said = a.segmentation.notes + list(a.notes) + list(a.prompt.notes)
    assert any("zoomed reading" in n for n in said), said
    assert a.zoomed  # a small structure: decoded on a crop, back on the slice grid, its crop recorded
    x0, y0, x1, y1 = a.segmentation.zoom
    assert not a.segmentation.mask[:y0].any() and not a.segmentation.mask[:, x1:].any()


def test_without_the_learned_choice_or_zoom_the_whole_slice_result_stands(segmenter, small_structure):
    image, mask = small_structure
    fx, prop = _reading(segmenter, image, mask)
    same = sharpen_gaze(segmenter, image, prop, fx, GEOM, policy=None)
    assert same.segmentation is prop.segmentation and not same.zoomed and same.prompt == prop.prompt
    vote = gaze_prompt(segmenter, segmenter.embed(image), mask.shape, fx, GEOM)  # no image: no choices kept
    got = sharpen_gaze(segmenter, image, vote, fx, GEOM, config=GazePromptConfig(ranker=None))
    assert got.candidates == 0 and not any("zoomed reading" in n for n in got.notes)
    # a structure too large to zoom (box over half the slice): the gated whole-slice path, nothing re-read
    yy, xx = np.mgrid[:200, :240]
    big_mask = np.hypot(yy - 100, xx - 120) < 62
    big_image = np.clip(0.1 + 0.8 * big_mask + np.random.default_rng(0).normal(0, 0.02, big_mask.shape), 0, 1)
    fx, prop = _reading(segmenter, big_image.astype(np.float32), big_mask, seed=4)
    big = sharpen_gaze(segmenter, big_image.astype(np.float32), prop, fx, GEOM)
    assert big.candidates == len(prop.choices) and not big.zoomed
    assert not any("zoomed reading" in n for n in big.notes + big.segmentation.notes)
    assert _dice(big.segmentation.mask, big_mask) > 0.85


def test_fixations_outside_the_crop_do_not_break_it(segmenter, small_structure):
    """A glance far away (off the crop) is dropped there, not clamped onto the crop's edge."""
    from dataclasses import replace

    image, mask = small_structure
    fx, prop = _reading(segmenter, image, mask)
    far = replace(fx[0], x=240.0, y=20.0, t_start=fx[-1].t_end + 0.05, t_end=fx[-1].t_end + 0.2)
    got = sharpen_gaze(segmenter, image, prop, list(fx) + [far], GEOM)
    assert _dice(got.segmentation.mask, mask) > 0.8
    assert not got.segmentation.mask[:60, 200:].any()
