"""Zoomed decoding for small targets: crop geometry, mask placement, and the keep-if-better rule."""
from __future__ import annotations

import numpy as np
import pytest

from integrations.errors import InvalidPromptError
from integrations.metrics import box_of, dice
from models.zoom import ZOOM_IOU_MARGIN, ZoomPolicy, crop_window, segment_adaptive, segment_zoomed
from prompting.promptset import Box, Point, PromptSet


@pytest.mark.parametrize("box,shape", [((5, 5, 15, 15), (200, 240)), ((220, 180, 238, 198), (200, 240)), ((0, 0, 199, 10), (200, 240))])
def test_crop_window_inside_image_and_contains_box(box, shape):
    b = Box(*box)
    x0, y0, x1, y1 = crop_window(b, shape, ZoomPolicy())
    assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]
    assert x0 <= b.x0 and y0 <= b.y0 and x1 >= b.x1 + 1 and y1 >= b.y1 + 1


def _small_blob():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    gt = ((yy - 150) / 9.0) ** 2 + ((xx - 90) / 13.0) ** 2 < 1  # a small ellipse, ~370 px
    img = 0.35 + 0.25 * gt + rng.normal(0, 0.03, gt.shape)
    return np.clip(img, 0, 1).astype(np.float32), gt


def test_zoomed_mask_lands_on_the_slice_grid(segmenter):
    img, gt = _small_blob()
    seg = segment_zoomed(segmenter, img, PromptSet.from_box(*box_of(gt)).with_points(Point(90, 150)))
    assert seg.mask.shape == gt.shape and seg.zoom is not None
    x0, y0, x1, y1 = seg.zoom
    assert not seg.mask[:y0].any() and not seg.mask[y1:].any()  # nothing outside the crop
    assert dice(seg.mask, gt) > 0.8


def test_zoomed_logits_come_back_in_the_slice_frame(segmenter):
    """A zoomed result's low-res logits are resampled into the WHOLE slice's model frame: thresholded
    back onto the slice they give the zoomed mask (up to the two resamplings: a rim pixel)."""
    img, gt = _small_blob()
    img = img[:, :200]  # not square: the slice frame is padded, the crop's is not
    gt = gt[:, :200]
    seg = segment_zoomed(segmenter, img, PromptSet.from_box(*box_of(gt)))
    assert seg.low_res_logits.shape == (1, 256, 256)
    back = segmenter.transform_for(img.shape).logits_to_image_np(seg.low_res_logits)[0] > 0
    assert dice(back, seg.mask) > 0.95 and not back[:, 130:].any()
    # the round trip on the slice grid alone is exact up to resampling
    t = segmenter.transform_for(img.shape)
    logits = np.where(gt, 8.0, -8.0).astype(np.float32)[None]
    assert dice(t.logits_to_image_np(t.image_to_logits_np(logits, 256))[0] > 0, gt) > 0.95


def test_adaptive_keeps_whole_slice_unless_clearly_better(segmenter):
    img, gt = _small_blob()
    prompt = PromptSet.from_box(*box_of(gt))
    base = segmenter.decode(segmenter.embed(img), prompt)
    zoomed = segment_zoomed(segmenter, img, prompt)
    chosen = segment_adaptive(segmenter, img, prompt)
    if zoomed.predicted_iou >= base.predicted_iou + ZOOM_IOU_MARGIN:
        assert chosen.zoom is not None
    else:
        assert chosen.zoom is None and any("zoom tried" in n for n in chosen.notes)
    big = PromptSet.from_box(10, 10, 240, 240)  # large boxes are never zoomed
    assert segment_adaptive(segmenter, img, big).zoom is None
    assert segment_adaptive(segmenter, img, prompt, policy=None).zoom is None


def test_zoom_needs_a_box(segmenter):
    img, _ = _small_blob()
    with pytest.raises(InvalidPromptError, match="needs a box"):
        segment_zoomed(segmenter, img, PromptSet(points=(Point(90, 150),)))


def test_uniform_box_gives_no_mask_and_says_why(segmenter):
    img, _ = _small_blob()
    img[:40, :40] = 0.0  # uniform padding in a corner
    seg = segment_adaptive(segmenter, img, PromptSet.from_box(2, 2, 30, 30))
    assert seg.is_empty and "no image contrast" in seg.flags[-1]
