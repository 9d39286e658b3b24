"""models/propagation_decoder.py: the bundled decoder that reads the previous slice's mask beside the box."""
from __future__ import annotations

import numpy as np
import pytest

from integrations.errors import ModelWeightsError
from integrations.metrics import dice
from integrations.volume import Volume
import models.propagation as propagation_module
from models.propagation import PropagationConfig, propagate
from models.propagation_stop import STOP_MODEL_PRIOR_PATH, LearnedStop, load_stop_model
from models.propagation_decoder import (BUNDLED_CHECKPOINT, CHECKPOINT_ENV, PRIOR_LOGIT, PropagationDecoder,
                                        prior_in_model_frame, propagation_decoder_for)
from prompting.promptset import PromptSet
from tests._shapes import mask_box


def test_the_bundled_decoder_is_loaded_and_small(segmenter):
    assert segmenter.propagation_decoder is not None
    assert segmenter.propagation_decoder.source == str(BUNDLED_CHECKPOINT)
    assert BUNDLED_CHECKPOINT.stat().st_size < 5_000_000  # int8 changes to LiteMedSAM's decoder


def test_a_missing_checkpoint_is_named_and_off_means_none(segmenter, tmp_path, monkeypatch):
    with pytest.raises(ModelWeightsError, match="propagation decoder checkpoint not found: .*nowhere.pt"):
        PropagationDecoder.from_checkpoint(segmenter.sam, tmp_path / "nowhere.pt")
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "nowhere.pt"))
    with pytest.raises(ModelWeightsError, match="nowhere.pt"):
        propagation_decoder_for(segmenter.sam, "litemedsam")
    monkeypatch.setenv(CHECKPOINT_ENV, "off")
    assert propagation_decoder_for(segmenter.sam, "litemedsam") is None
    monkeypatch.delenv(CHECKPOINT_ENV)
    assert propagation_decoder_for(segmenter.sam, "medsam") is None  # other backends: only when named


def test_the_prior_goes_in_as_a_binary_mask_in_the_model_frame(segmenter):
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True  # a quarter of the rows, half the columns
    frame = prior_in_model_frame(mask, segmenter.transform_for(mask.shape), 256)
    assert frame.shape == (256, 256) and set(np.unique(frame)) == {-PRIOR_LOGIT, PRIOR_LOGIT}
    inside = frame > 0
    assert abs(inside.mean() - mask.mean()) < 0.01  # LiteMedSAM stretches the slice to the square frame


def _decode_like_propagation(segmenter, emb, prior, box_from=None):
    from models.propagation import _mask_box, enlarge_box

    box = enlarge_box(_mask_box(prior if box_from is None else box_from), prior.shape, 0.05, 2.0)
    return segmenter.decode_with_prior(emb, PromptSet(box=box), prior)


def test_the_decoder_continues_the_prior_it_is_given(segmenter, disc_image):
    img, disc = disc_image
    emb = segmenter.embed(img)
    yy, xx = np.mgrid[: disc.shape[0], : disc.shape[1]]
    under = (yy - 100) ** 2 + (xx - 120) ** 2 < 38 ** 2  # the previous slice's mask, 2 px inside the edge
    seg = _decode_like_propagation(segmenter, emb, under)
    assert seg.mask.shape == disc.shape and np.isfinite(seg.predicted_iou)
    assert dice(seg.mask, disc) > 0.9
    # Same box, half the prior: the decoder follows the structure it was handed, not the box alone
    half = under & (xx < 120)
    seg = _decode_like_propagation(segmenter, emb, half, box_from=under)
    assert dice(seg.mask, half) > 0.85 and dice(seg.mask, disc) < 0.75
    # A prior with a hole (a ring): the disc's inside is filled in
    ring = under & ((yy - 100) ** 2 + (xx - 120) ** 2 > 20 ** 2)
    assert dice(_decode_like_propagation(segmenter, emb, ring).mask, disc) > 0.85


def test_without_a_decoder_or_a_box_the_prompt_alone_is_decoded(segmenter, disc_image, monkeypatch):
    img, mask = disc_image
    emb = segmenter.embed(img)
    prompt = PromptSet.from_box(*mask_box(mask))
    monkeypatch.setattr(segmenter, "propagation_decoder", None)
    assert np.array_equal(segmenter.decode_with_prior(emb, prompt, mask).mask, segmenter.decode(emb, prompt).mask)


def test_propagation_says_which_decoder_drew_the_next_slices(segmenter, monkeypatch):
    vol, disc = _disc_volume()
    vox = vol.voxels
    seed = {3: PromptSet.from_box(*mask_box(disc))}
    res = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None))  # the default
    assert any("previous slice's mask as a prior" in n and "propagation_decoder.pt" in n for n in res.notes), res.notes
    assert res.slice_range == (1, 5), res.notes  # the disc spans slices 1..5
    assert dice(res.mask, vox > 400) > 0.9
    boxes = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=False))
    assert any("boxes alone (prior=False)" in n for n in boxes.notes), boxes.notes
    monkeypatch.setattr(segmenter, "propagation_decoder", None)
    none = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=True))
    assert any("has no propagation decoder" in n for n in none.notes), none.notes
    assert np.array_equal(none.mask, boxes.mask)


def _disc_volume():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 <= 14 ** 2
    vox = np.stack([100 + 700 * disc * (abs(z - 3) <= 2) for z in range(7)]).astype(np.float32)
    return Volume(vox, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), modality="MR"), disc


def test_where_the_decoders_chain_stops_the_box_chain_carries_on_to_its_own_stop(segmenter, monkeypatch):
    import dataclasses

    vol, disc = _disc_volume()
    seed = {3: PromptSet.from_box(*mask_box(disc))}
    asked = []

    def stop_models(prior_threshold, box_threshold):
        def load(path):
            # in domain everywhere; threshold 1.01 rejects every slice, -1 keeps every slice
            tree = load_stop_model(path).model
            tree = dataclasses.replace(tree, low=(-1e9,) * len(tree.features), high=(1e9,) * len(tree.features))
            prior = path == str(STOP_MODEL_PRIOR_PATH)
            asked.append("prior" if prior else "box")
            return LearnedStop(tree, prior_threshold if prior else box_threshold, "test")
        monkeypatch.setattr(propagation_module, "load_stop_model", load)

    stop_models(1.01, -1.0)
    own = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=True, prior_handover=False))
    assert own.slice_range == (3, 3) and set(asked) == {"prior"}, own.notes
    asked.clear()
    both = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=True))
    assert set(asked) == {"prior", "box"}
    assert any("a chain decoded from boxes alone beside it carried on" in n for n in both.notes), both.notes
    # the box chain never stops (only the area floor would): its slices are kept to the volume's edges ...
    assert both.slice_range == (0, 6) and all("edge of the volume" in s.reason for s in both.stops), both.notes
    boxes = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None))
    assert np.array_equal(both.mask, boxes.mask)  # ... and they are the box chain's own
    assert all(r.stop_score > -1.0 for r in both.slices if not r.anchor)  # scored by the box chain's model

    stop_models(-1.0, 1.01)  # the box chain stops at once, the decoder's chain goes on
    both = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=True))
    alone = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=True, prior_handover=False))
    assert np.array_equal(both.mask, alone.mask)

    stop_models(1.01, 1.01)
    both = propagate(segmenter, vol, seed, config=PropagationConfig(cross_view=None, prior=True))
    assert both.slice_range == (3, 3)
    assert sorted(s.index for s in both.stops) == [2, 4]
    assert all("both chains stopped at slice" in s.reason and "the box chain (learned stop" in s.reason for s in both.stops)


def test_the_handover_reason_names_the_chain_that_went_further_in_either_direction():
    from models.propagation import StopEvent, _Propagator

    def reason(direction, own_z, guide_z):
        own, guide = StopEvent(direction, own_z, "own"), StopEvent(direction, guide_z, "guide")
        return _Propagator.handed_over(direction, guide_z if (guide_z - own_z) * direction > 0 else own_z, own, guide).reason

    # upwards the box chain stopping at a higher slice went further; downwards at a lower one
    assert reason(1, 40, 45).startswith("the decoder's chain stopped at slice 40 (own); the box chain's slices went on to slice 45")
    assert reason(-1, 40, 35).startswith("the decoder's chain stopped at slice 40 (own); the box chain's slices went on to slice 35")
    assert reason(-1, 35, 40).startswith("the box chain stopped at slice 40 (guide); the decoder's chain went on to slice 35")
    assert reason(1, 45, 40).startswith("the box chain stopped at slice 40 (guide); the decoder's chain went on to slice 45")
    assert reason(-1, 38, 38).startswith("both chains stopped at slice 38")


def test_cli_segment_3d_uses_the_decoder_unless_boxes_only(tmp_path, capsys):
    import json

    from app.cli import main
    from integrations.mask_io import write_mask

    vol, disc = _disc_volume()
    study = write_mask(tmp_path / "study.nii.gz", vol, vol.voxels)
    box = [str(v) for v in mask_box(disc)]
    notes = {}
    for flag in ([], ["--boxes-only"]):
        out = tmp_path / f"mask{len(flag)}.nii.gz"
        assert main(["segment-3d", str(study), "--box", *box, "--slice", "3", "--no-cross-view", *flag, "--out", str(out)]) == 0
        notes[bool(flag)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["notes"]
    assert any("as a prior" in n and "boxes alone beside it" in n for n in notes[False]), notes[False]
    assert any("boxes alone (prior=False)" in n for n in notes[True]), notes[True]


def test_the_openvino_decoder_decodes_like_pytorch_or_steps_aside(segmenter, disc_image, tmp_path):
    from models.propagation import _mask_box, enlarge_box

    img, mask = disc_image
    emb = segmenter.embed(img)
    tr = segmenter.transform_for(img.shape)
    prior = prior_in_model_frame(mask, tr, 256)
    box = tr.box_to_model(enlarge_box(_mask_box(mask), mask.shape, 0.05, 2.0).as_array())
    twin = PropagationDecoder.from_checkpoint(segmenter.sam, BUNDLED_CHECKPOINT)
    want, want_iou = twin.decode_logits(emb.features, box, prior)
    note = twin.use_openvino(2, tmp_path)
    assert twin.runtime == "openvino" and "f32" in note, note
    assert list(tmp_path.glob("propagation_decoder-w*.onnx"))  # exported once, keyed by the twin's weights
    for _ in range(2):  # the first decode is checked against PyTorch's, the second runs on its own
        got, got_iou = twin.decode_logits(emb.features, box, prior)
        assert twin.runtime == "openvino" and twin._validated
        assert got.shape == want.shape and got_iou.shape == want_iou.shape
        assert np.array_equal(got.numpy() > 0, want.numpy() > 0)
        assert abs(float(got_iou) - float(want_iou)) < 1e-3
    # a compiled graph that disagrees is dropped on its first decode, and PyTorch's answer returned
    other = PropagationDecoder.from_checkpoint(segmenter.sam, BUNDLED_CHECKPOINT)
    other.use_openvino(2, tmp_path)

    class Wrong:
        def run(self, feeds):
            return np.full((1, 4, 256, 256), -5.0, np.float32), np.zeros((1, 4), np.float32)
    other._graph = Wrong()
    got, _ = other.decode_logits(emb.features, box, prior)
    assert other.runtime == "torch" and "disagreed" in other.runtime_note
    assert np.array_equal(got.numpy() > 0, want.numpy() > 0)


def test_a_prior_of_the_wrong_size_is_refused(segmenter, disc_image):
    from integrations.errors import InvalidPromptError

    img, mask = disc_image
    with pytest.raises(InvalidPromptError, match="prior mask is"):
        segmenter.decode_with_prior(segmenter.embed(img), PromptSet.from_box(*mask_box(mask)), mask[:-1])
