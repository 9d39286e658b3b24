"""bench/train_click_decoder.py: the loss, the simulated clicks, and that training makes the decoder read a click."""
from __future__ import annotations

import numpy as np
import torch

from bench.train_click_decoder import (click_answer, click_loss, click_modules, correction_click, depth, embed_cases,
                                       embed_packed, first_click, model_frame_mask, pack_cases, synthetic_cases,
                                       train_steps)
from integrations.metrics import dice
from prompting.promptset import Point


def test_the_loss_scores_the_best_of_the_three_outputs():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    right = (target * 40 - 20)[:, None]
    wrong = -right
    iou = torch.zeros(1, 3)
    w = torch.ones(1)
    _, one_right = click_loss(torch.cat([wrong, right, wrong], 1), iou, target, w)
    _, none_right = click_loss(torch.cat([wrong, wrong, wrong], 1), iou, target, w)
    assert one_right < 0.01 < none_right


def test_simulated_clicks_fall_where_they_should():
    truth = np.zeros((64, 64), bool)
    truth[10:40, 10:40] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = first_click(depth(truth), rng, p_deepest=0.5, sigma=1.0)
        assert truth[int(y), int(x)]
    missed = truth.copy()
    missed[10:40, 25:40] = False  # the answer misses the right half: the correction is positive, inside it
    x, y, label = correction_click(truth, missed)
    assert label == 1.0 and truth[int(y), int(x)] and not missed[int(y), int(x)]
    extra = truth.copy()
    extra[40:60, 10:40] = True  # the answer spills below: the correction is negative, outside the truth
    x, y, label = correction_click(truth, extra)
    assert label == 0.0 and not truth[int(y), int(x)]
    assert correction_click(truth, truth) is None


def test_a_few_steps_teach_the_decoder_to_read_a_click_and_the_checkpoint_round_trips(segmenter, disc_image, tmp_path):
    img, mask = disc_image
    emb = segmenter.embed(img)
    pe, md = click_modules(segmenter)
    click = [Point(120.0, 100.0)]
    before = dice(click_answer(segmenter, pe, md, emb, click)[0], mask)
    data = [{"group": "disc", "features": emb.features.detach().to(torch.float16).clone(),
             "masks": model_frame_mask(mask, emb.input_size)[None], "names": ["disc"]}]
    history = train_steps(pe, md, data, steps=20, lr=1e-3, rng=np.random.default_rng(0), batch=1, max_clicks=1,
                          log_every=0)
    after = dice(click_answer(segmenter, pe, md, emb, click)[0], mask)
    assert np.mean(history[-5:]) < np.mean(history[:5])
    assert before < 0.1 and after > 0.5, (before, after)  # LiteMedSAM alone: an empty mask (DESIGN.md)

    path = tmp_path / "click_decoder.pt"
    torch.save({"prompt_encoder": pe.state_dict(), "mask_decoder": md.state_dict()}, path)
    pe2, md2 = click_modules(segmenter, str(path))
    assert np.array_equal(click_answer(segmenter, pe2, md2, emb, click)[0], click_answer(segmenter, pe, md, emb, click)[0])


def test_the_twin_trains_even_when_the_segmenter_s_modules_are_frozen(segmenter):
    # models/adapter_training freezes the shared segmenter's modules; the twin must not inherit that
    modules = (segmenter.sam.prompt_encoder, segmenter.sam.mask_decoder)
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    try:
        for m in modules:
            m.requires_grad_(False)
        pe, md = click_modules(segmenter)
    finally:
        for m, fs in zip(modules, flags):
            for p, f in zip(m.parameters(), fs):
                p.requires_grad_(f)
    assert all(p.requires_grad for p in list(pe.parameters()) + list(md.parameters()))


def test_packed_images_embed_where_training_runs_as_the_segmenter_does(segmenter):
    """`build --images-only`: uint8 model inputs and packed masks, embedded later on the training device;
    the features match the segmenter's own within the uint8 rounding, the masks exactly."""
    cases = synthetic_cases(2, seed=3)
    assert cases and all(c.mask.sum() >= 30 for c in cases) and {c.group for c in cases} == {"synthetic0", "synthetic1"}
    packed = pack_cases(segmenter, cases)
    assert all("features" not in d and "masks" not in d for d in packed)
    embed_packed(segmenter, packed, "cpu")
    direct = embed_cases(segmenter, cases)
    for a, b in zip(packed, direct):
        assert a["group"] == b["group"] and a["names"] == b["names"] and np.array_equal(a["masks"], b["masks"])
        fa, fb = a["features"].float(), b["features"].float()
        assert torch.nn.functional.cosine_similarity(fa.flatten(), fb.flatten(), dim=0) > 0.99
