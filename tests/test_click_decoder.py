"""models/click_decoder.py: the bundled click-reading decoder, its checkpoint, and how clicks use its opinion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from integrations.errors import ModelWeightsError
from integrations.metrics import dice
from models.click_decoder import BUNDLED_CHECKPOINT, CHECKPOINT_ENV, DELTA_FORMAT, ClickDecoder, click_decoder_for, save_checkpoint
from prompting.clicks import ClickConfig, click_candidates, click_features, click_scores, propose_from_points
from prompting.promptset import Point
from prompting.proposal_ranker import READ_FEATURES, EnsembleRanker, load_ranker, ranker_for


def test_the_bundled_decoder_reads_one_click_on_a_disc(segmenter, disc_image):
    img, mask = disc_image
    assert segmenter.click_decoder is not None and segmenter.click_decoder.source == str(BUNDLED_CHECKPOINT)
    reading = segmenter.read_clicks(segmenter.embed(img), [Point(120, 100, True)])
    assert reading.masks.shape == (3,) + mask.shape and reading.iou.shape == (3,)
    # LiteMedSAM's own decoder gives an empty mask for a click alone (DESIGN.md); the twin finds the disc
    assert max(dice(m, mask) for m in reading.masks) > 0.8


def test_no_reading_without_a_positive_click(segmenter, disc_image):
    img, _ = disc_image
    assert segmenter.read_clicks(segmenter.embed(img), [Point(5, 5, False)]) is None


@pytest.mark.parametrize("as_delta", [False, True], ids=["float16", "int8-delta"])
def test_a_saved_checkpoint_reads_like_the_float32_twin(segmenter, disc_image, tmp_path, as_delta):
    img, _ = disc_image
    emb = segmenter.embed(img)
    twin = segmenter.click_decoder
    path = tmp_path / "cd.pt"
    save_checkpoint(twin.prompt_encoder, twin.mask_decoder, path, base_sam=segmenter.sam if as_delta else None)
    again = ClickDecoder.from_checkpoint(segmenter.sam, path)
    clicks = [Point(120, 100, True), Point(30, 30, False)]
    a, b = twin.read(emb, clicks, segmenter.transform_for(img.shape)), again.read(emb, clicks, segmenter.transform_for(img.shape))
    for x, y in zip(a.masks, b.masks):
        assert (x & y).sum() >= 0.99 * max((x | y).sum(), 1)
    assert np.abs(a.iou - b.iou).max() < 1e-2


def test_the_bundled_checkpoint_is_small_and_tied_to_its_base_weights(segmenter, tmp_path):
    assert BUNDLED_CHECKPOINT.stat().st_size < 5_000_000
    state = torch.load(BUNDLED_CHECKPOINT, weights_only=True)
    assert state["format"] == DELTA_FORMAT
    state["base"] = "0" * 64  # changes made to some other decoder must not be added to this one's weights
    foreign = tmp_path / "foreign.pt"
    torch.save(state, foreign)
    with pytest.raises(ModelWeightsError, match="foreign.pt.*other decoder weights"):
        ClickDecoder.from_checkpoint(segmenter.sam, foreign)


def test_a_missing_or_foreign_checkpoint_is_named(segmenter, tmp_path, monkeypatch):
    with pytest.raises(ModelWeightsError, match="nowhere.pt"):
        ClickDecoder.from_checkpoint(segmenter.sam, tmp_path / "nowhere.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelWeightsError, match="bad.pt"):
        ClickDecoder.from_checkpoint(segmenter.sam, bad)
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "nowhere.pt"))
    with pytest.raises(ModelWeightsError, match="nowhere.pt"):
        click_decoder_for(segmenter.sam, "litemedsam")
    monkeypatch.setenv(CHECKPOINT_ENV, "off")
    assert click_decoder_for(segmenter.sam, "litemedsam") is None
    monkeypatch.delenv(CHECKPOINT_ENV)
    assert click_decoder_for(segmenter.sam, "sam_vit_b") is None  # trained on LiteMedSAM's decoder only


def test_proposals_carry_the_opinion_and_the_ranker_reads_it(segmenter, disc_image):
    img, mask = disc_image
    emb = segmenter.embed(img)
    click = [Point(118, 103, True)]
    cands = click_candidates(segmenter, emb, img, click, ClickConfig())
    table = click_features(cands, img, click)
    assert all(f in table for f in READ_FEATURES)
    # the proposal that IS the disc agrees with one of the twin's masks; the smallest proposal with none
    best = max(cands, key=lambda s: dice(s.mask, mask))
    smallest = min((s for s in cands if s.mask.any()), key=lambda s: s.mask.sum())
    assert max(best.read[:3]) > 0.6 > max(smallest.read[:3])
    assert set(READ_FEATURES) <= set(load_ranker("click").features)
    # the opinion-reading ranker, averaged with the plain one (it over-trusts the twin on its own)
    ranker = ranker_for("click", table)
    assert isinstance(ranker, EnsembleRanker)
    assert ranker.members[0] is load_ranker("click") and ranker.members[1] is load_ranker("click_plain")
    assert len(click_scores(cands, img, click)) == len(cands)
    # the twin reads this crisp disc short (its best mask: Dice ~0.82); with the average the disc still wins
    assert dice(segmenter.decode(emb, propose_from_points(segmenter, emb, img, click)).mask, mask) > 0.9


def test_without_the_decoder_the_plain_ranker_ranks(segmenter, disc_image, monkeypatch):
    img, mask = disc_image
    emb = segmenter.embed(img)
    monkeypatch.setattr(segmenter, "click_decoder", None)
    click = [Point(118, 103, True)]
    cands = click_candidates(segmenter, emb, img, click, ClickConfig())
    table = click_features(cands, img, click)
    assert all(s.read is None for s in cands) and not any(f in table for f in READ_FEATURES)
    assert not set(READ_FEATURES) & set(load_ranker("click_plain").features)
    assert ranker_for("click", table) is load_ranker("click_plain")
    assert dice(segmenter.decode(emb, propose_from_points(segmenter, emb, img, click)).mask, mask) > 0.9


def test_the_openvino_twin_reads_like_pytorch_or_steps_aside(segmenter, disc_image, tmp_path, monkeypatch):
    img, mask = disc_image
    emb = segmenter.embed(img)
    tr = segmenter.transform_for(img.shape)
    clicks = [Point(120, 100, True)]
    twin = ClickDecoder.from_checkpoint(segmenter.sam, BUNDLED_CHECKPOINT)
    torch_reading = twin.read(emb, clicks, tr)
    note = twin.use_openvino(2, tmp_path)
    assert twin.runtime == "openvino", note
    assert list(tmp_path.glob("click_decoder-w*.onnx"))  # exported once, keyed by the twin's weights
    compiled = twin.read(emb, clicks, tr)  # the first reading is checked against PyTorch's
    assert twin.runtime == "openvino"
    for a, b in zip(compiled.masks, torch_reading.masks):
        assert (a & b).sum() >= 0.97 * max((a | b).sum(), 1)
    # a compiled graph that disagrees is dropped on its first reading, and the PyTorch answer returned
    other = ClickDecoder.from_checkpoint(segmenter.sam, BUNDLED_CHECKPOINT)
    other.use_openvino(2, tmp_path)
    monkeypatch.setattr(other, "_read_openvino", lambda *a: (np.full((1, 3, 256, 256), -5.0, np.float32), np.zeros((1, 3))))
    reading = other.read(emb, clicks, tr)
    assert other.runtime == "torch" and "disagreed" in other.runtime_note
    assert max(dice(m, mask) for m in reading.masks) > 0.8
