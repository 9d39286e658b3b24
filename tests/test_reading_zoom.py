"""The one-shot path of strokes and clicks (models/reading_zoom.py): read again on a zoomed crop, real weights."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.reading_zoom import sharpen_clicks, sharpen_scribbles
from prompting.scribbles import Scribble, ScribbleConfig, propose_from_scribbles


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture
def small_structure():
    """A small disc (radius 9 px) touching a dimmer disc of the same size, beside a large bright blob,
    and a short stroke across the small disc: on the whole slice the decoder sees it in a few
    embedding cells, on the crop in many."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    mask = np.hypot(yy - 150, xx - 90) < 9
    img = 0.15 + 0.5 * mask + 0.4 * (np.hypot(yy - 150, xx - 110) < 9) + 0.7 * (np.hypot(yy - 80, xx - 180) < 45)
    img = np.clip(img + rng.normal(0, 0.02, mask.shape), 0, 1).astype(np.float32)
    return img, mask, Scribble.of([(85.5, 150), (94.5, 150)])


def test_strokes_are_read_again_on_the_crop_and_the_choice_is_repeatable(segmenter, small_structure):
    image, mask, stroke = small_structure
    prompt = propose_from_scribbles(segmenter, segmenter.embed(image), [stroke], image01=image)
    a = sharpen_scribbles(segmenter, image, [stroke], prompt)
    b = sharpen_scribbles(segmenter, image, [stroke], prompt)
    assert np.array_equal(a.segmentation.mask, b.segmentation.mask) and a.prompt.box == b.prompt.box
    # the choice saw the whole slice's proposals and the crop's (each ~30 boxes + their refinements)
    assert a.candidates > 60
    assert a.segmentation.mask.shape == mask.shape and _dice(a.segmentation.mask, mask) > 0.95
    assert any("zoomed reading" in n for n in a.notes + a.segmentation.notes + list(a.prompt.notes))


def test_a_stroke_on_a_small_atlas_region_is_read_again_on_the_crop(segmenter):
    """Colin27's left lingual gyrus (z = 55, a dev-set case): the whole slice's proposals are coarse
    there; a crop proposal wins the learned choice and is the better mask (measured 0.78 -> 0.84)."""
    from bench import simulated_users as su
    from bench.devdata import aal_cases
    from integrations.windowing import apply_window, default_window, window_bounds
    from models.zoom import segment_adaptive
    from prompting.clicks import decoder_prompt

    case = next(c for c in aal_cases() if c.name == "Lingual_L@z55")
    image = apply_window(case.image, window_bounds(default_window(case.modality), case.image)).astype(np.float32)
    stroke = Scribble(su.scribble(case.mask, np.random.default_rng(0)), 3.0, True)
    prompt = propose_from_scribbles(segmenter, segmenter.embed(image), [stroke], image01=image)
    whole = segment_adaptive(segmenter, image, decoder_prompt(segmenter, prompt))
    a = sharpen_scribbles(segmenter, image, [stroke], prompt)
    assert a.zoomed and _dice(a.segmentation.mask, case.mask) > _dice(whole.mask, case.mask) + 0.03
    # back on the slice grid, its box the mask's, the strokes' points kept, the crop recorded
    assert a.segmentation.mask.shape == case.mask.shape and a.prompt.box.source.value == "scribble"
    assert a.prompt.points == prompt.points and a.prompt.mask_input is None
    ys, xs = np.nonzero(a.segmentation.mask)
    assert (a.prompt.box.x0, a.prompt.box.y0, a.prompt.box.x1, a.prompt.box.y1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert a.segmentation.low_res_logits.shape == (1, 256, 256)
    x0, y0, x1, y1 = a.segmentation.zoom
    assert not a.segmentation.mask[:y0].any() and not a.segmentation.mask[:, x1:].any()
    assert any("kept a crop proposal" in n for n in a.prompt.notes)


def test_without_the_learned_choice_zoom_or_with_a_background_stroke_the_whole_slice_path_stands(segmenter, small_structure):
    image, mask, stroke = small_structure
    emb = segmenter.embed(image)
    prompt = propose_from_scribbles(segmenter, emb, [stroke], image01=image)
    for kw in ({"policy": None}, {"config": ScribbleConfig(ranker=None)}):
        same = sharpen_scribbles(segmenter, image, [stroke], prompt, **kw)
        assert same.candidates == 0 and not same.zoomed and same.prompt == prompt
    away = Scribble.of([(30, 30), (40, 30)], positive=False)
    framed = propose_from_scribbles(segmenter, emb, [stroke, away], image01=image)
    got = sharpen_scribbles(segmenter, image, [stroke, away], framed)
    assert got.candidates == 0 and not got.zoomed
    # a structure too large to zoom (box over half the slice): the gated whole-slice path, nothing re-read
    yy, xx = np.mgrid[:200, :240]
    big_mask = np.hypot(yy - 100, xx - 120) < 62
    big_image = np.clip(0.1 + 0.8 * big_mask + np.random.default_rng(0).normal(0, 0.02, big_mask.shape), 0, 1).astype(np.float32)
    big_stroke = Scribble.of([(80, 100), (120, 100), (160, 100)])
    # (the box proposals' result: a structure this large is otherwise the click decoder's to answer,
    # tests/test_click_answer.py, and a reading has no box to zoom)
    big_prompt = propose_from_scribbles(segmenter, segmenter.embed(big_image), [big_stroke], image01=big_image,
                                        cfg=ScribbleConfig(read_min_area=None))
    big = sharpen_scribbles(segmenter, big_image, [big_stroke], big_prompt)
    assert big.candidates == 0 and not big.zoomed and _dice(big.segmentation.mask, big_mask) > 0.85


def test_clicks_are_read_again_on_the_crop_with_the_whole_slice_in_the_choice(segmenter, small_structure):
    from prompting.clicks import ClickConfig, propose_from_points
    from prompting.promptset import Point, PromptSource

    image, mask, _ = small_structure
    click = Point(90.0, 150.0, True, PromptSource.CLICK)
    prompt = propose_from_points(segmenter, segmenter.embed(image), image, [click])
    a = sharpen_clicks(segmenter, image, [click], prompt)
    b = sharpen_clicks(segmenter, image, [click], prompt)
    assert np.array_equal(a.segmentation.mask, b.segmentation.mask) and a.prompt.box == b.prompt.box
    # the choice saw the whole slice's proposals and the crop's (each ~30 boxes + their refinements)
    assert a.candidates > 60 and a.segmentation.mask.shape == mask.shape
    assert a.prompt.points == (click,) and a.prompt.box.source == PromptSource.CLICK
    assert any("zoomed reading" in n for n in a.notes + a.segmentation.notes + list(a.prompt.notes))
    # no learned choice, or no zoom: the whole-slice path, nothing re-read
    for kw in ({"policy": None}, {"config": ClickConfig(ranker=None)}):
        same = sharpen_clicks(segmenter, image, [click], prompt, **kw)
        assert same.candidates == 0 and not same.zoomed and same.prompt == prompt


def test_the_gated_zoom_does_not_overrule_the_chosen_proposal(segmenter):
    """stardist's nucleus 113 (a dev-set case) clicked where the simulated user clicked: the learned
    choice keeps a whole-slice proposal (Dice ~0.9), but the gated zoom's re-decode of that box on its
    crop is rated higher by the decoder and covers a neighbour (Dice 0.32 before this rule)."""
    from bench.devdata import nuclei_cases
    from integrations.windowing import apply_window, default_window, window_bounds
    from prompting.clicks import propose_from_points
    from prompting.promptset import Point

    case = next(c for c in nuclei_cases() if c.name == "nucleus113")
    image = apply_window(case.image, window_bounds(default_window(case.modality), case.image)).astype(np.float32)
    click = Point(206.0, 262.6, True)
    prompt = propose_from_points(segmenter, segmenter.embed(image), image, [click])
    a = sharpen_clicks(segmenter, image, [click], prompt)
    assert _dice(a.segmentation.mask, case.mask) > 0.8
    # said, so that the app's Sharpen keeps the current mask instead of asking its own gate again
    assert not a.zoomed and "disagreed with the chosen proposal" in a.declined


def test_a_zoomed_decode_that_contradicts_the_winner_gives_way_to_the_whole_slice(segmenter, disc_image):
    from models.reading_zoom import _agreeing_with
    from prompting.promptset import PromptSet

    image, mask = disc_image
    prompt = PromptSet.from_box(78, 58, 162, 142)
    whole = segmenter.decode(segmenter.embed(image), prompt)
    elsewhere = replace(whole, mask=np.roll(whole.mask, 90, axis=1), notes=[])  # a "zoomed" mask of something else
    emb = segmenter.embed(image)
    kept = _agreeing_with(segmenter, emb, prompt, elsewhere, whole.mask)
    assert np.array_equal(kept.mask, whole.mask) and "disagreed with the chosen proposal" in kept.notes[-1]
    # agreeing (or the flat-box empty answer) stands as it is
    assert _agreeing_with(segmenter, emb, prompt, whole, whole.mask) is whole
    empty = replace(whole, mask=np.zeros_like(whole.mask))
    assert _agreeing_with(segmenter, emb, prompt, empty, whole.mask) is empty
