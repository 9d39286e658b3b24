"""The bundled LiteMedSAM through segment_anything's modules, on CPU, with real weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from integrations.errors import InvalidPromptError, ModelWeightsError
from integrations.metrics import box_of, dice
from integrations.windowing import slice_image, volume_window
from models.cache import EmbeddingCache
from models.registry import BACKENDS, build_segmenter
from models.weights import litemedsam_checkpoint_path
from prompting.promptset import Point, PromptSet, PromptSource


def test_disc(segmenter, disc_image):
    img, gt = disc_image
    emb = segmenter.embed(img)
    seg = segmenter.decode(emb, PromptSet.from_box(*box_of(gt)))
    assert seg.mask.shape == gt.shape and seg.mask.dtype == bool
    assert dice(seg.mask, gt) > 0.95
    assert 0.5 < seg.predicted_iou <= 1.1
    assert seg.low_res_logits.shape == (1, 256, 256)


def test_real_slice_brain_mask(segmenter, colin27):
    t1, _ = colin27
    from integrations.loaders import load_volume

    bet = load_volume("/usr/share/mricron/templates/ch2bet.nii.gz")
    z = 80
    gt = bet.voxels[z] > 0
    img = slice_image(t1, z, volume_window(t1))
    seg = segmenter.decode(segmenter.embed(img), PromptSet.from_box(*box_of(gt)))
    assert dice(seg.mask, gt) > 0.85


def test_real_slice_structure_and_batch_matches_single(segmenter, colin27):
    t1, aal = colin27
    z = 70
    img = slice_image(t1, z, volume_window(t1))
    emb = segmenter.embed(img)
    labels = [71, 72, 77]  # Caudate_L, Caudate_R, Thalamus_L
    prompts = [PromptSet.from_box(*box_of(aal.voxels[z] == lab)) for lab in labels]
    batch = segmenter.decode_batch(emb, prompts)
    for lab, p, seg in zip(labels, prompts, batch):
        single = segmenter.decode(emb, p)
        assert dice(single.mask, seg.mask) > 0.99  # batching does not change the answer
        assert dice(seg.mask, aal.voxels[z] == lab) > 0.5


def test_embedding_cached_by_content(disc_image):
    seg = build_segmenter("litemedsam", cache=EmbeddingCache())
    img, gt = disc_image
    calls = []
    original = seg.encode_tensor
    seg.encode_tensor = lambda x: calls.append(1) or original(x)
    e1 = seg.embed(img)
    e2 = seg.embed(img.copy())  # same content, another array
    assert len(calls) == 1 and e1 is e2
    seg.embed(np.clip(img * 0.9, 0, 1))  # other content: encoded again
    assert len(calls) == 2


def test_disk_cache_float16_survives_a_new_cache(tmp_path, segmenter, disc_image):
    img, gt = disc_image
    cache = EmbeddingCache(disk_dir=tmp_path)
    seg = build_segmenter("litemedsam", cache=cache)
    emb = seg.embed(img)
    fresh = EmbeddingCache(disk_dir=tmp_path)  # as after an app restart
    back = fresh.get(emb.key)
    assert back is not None and back.original_size == emb.original_size
    assert torch.allclose(back.features, emb.features, atol=2e-2 * emb.features.abs().max().item())
    m1 = seg.decode(emb, PromptSet.from_box(*box_of(gt))).mask
    m2 = seg.decode(back, PromptSet.from_box(*box_of(gt))).mask
    assert dice(m1, m2) > 0.99


def test_lru_cap_evicts_oldest(segmenter, disc_image):
    img, _ = disc_image
    one = segmenter.embed(img).nbytes
    cache = EmbeddingCache(max_bytes=2 * one)
    emb = segmenter.embed(img)
    for k in ("a", "b", "c"):
        cache.put(k, emb)
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None


def test_multimask_and_refinement(segmenter, disc_image):
    img, gt = disc_image
    emb = segmenter.embed(img)
    box = PromptSet.from_box(*box_of(gt))
    multi = segmenter.decode(emb, box, multimask=True)
    assert len(multi.candidates) == 3
    ious = [c[1] for c in multi.candidates]
    assert ious == sorted(ious, reverse=True) and multi.predicted_iou == ious[0]
    first = segmenter.decode(emb, box)
    refined = segmenter.decode(emb, box.with_mask_input(first.low_res_logits).with_points(Point(120, 100)))
    assert dice(refined.mask, gt) > 0.9


def test_one_click_alone_is_not_enough_for_litemedsam(segmenter, disc_image, monkeypatch):
    # DESIGN.md: LiteMedSAM was trained on boxes; documents why clicks become boxes in prompting/ (with
    # the bundled click decoder, clicks alone are read by it instead: tests/test_click_answer.py)
    img, gt = disc_image
    monkeypatch.setattr(segmenter, "click_decoder", None)
    seg = segmenter.decode(segmenter.embed(img), PromptSet(points=(Point(120, 100, source=PromptSource.CLICK),)))
    assert dice(seg.mask, gt) < 0.5


@pytest.mark.parametrize("box,msg", [
    ((10, 10, 10, 50), "no area"),
    ((500, 500, 600, 600), "outside"),
    ((50, 50, 20, 80), "swapped"),
    ((float("nan"), 0, 10, 10), "non-numeric"),
])
def test_bad_boxes_rejected(segmenter, disc_image, box, msg):
    img, _ = disc_image
    with pytest.raises(InvalidPromptError, match=msg):
        segmenter.decode(segmenter.embed(img), PromptSet.from_box(*box))


def test_nan_image_rejected(segmenter):
    img = np.zeros((64, 64), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(InvalidPromptError, match="NaN"):
        segmenter.embed(img)


def test_missing_checkpoint_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINSEG_CHECKPOINT_DIR", str(tmp_path))
    for name in ("sam_vit_b", "medsam_vit_b"):
        with pytest.raises(ModelWeightsError, match=BACKENDS[name].default_checkpoint):
            build_segmenter(name)
    with pytest.raises(ModelWeightsError, match="nope.pth"):
        build_segmenter("sam_vit_h", checkpoint=tmp_path / "nope.pth")


def test_wrong_checkpoint_rejected(tmp_path):
    bad = tmp_path / "sam_vit_b.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelWeightsError, match="not a readable"):
        build_segmenter("sam_vit_b", checkpoint=bad)
    # a checkpoint missing the mask decoder: the strict load refuses it instead of running half-random
    state = torch.load(litemedsam_checkpoint_path(), weights_only=True)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("mask_decoder.")}, partial)
    with pytest.raises(ModelWeightsError, match="does not match the architecture"):
        build_segmenter("litemedsam", checkpoint=partial)


def test_checksum_verified_for_bundled_weights(tmp_path, monkeypatch):
    damaged = tmp_path / "lite_medsam.pth"
    shutil.copy(litemedsam_checkpoint_path(), damaged)
    with damaged.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    import models.registry as registry

    monkeypatch.setattr(registry, "litemedsam_checkpoint_path", lambda: damaged)
    with pytest.raises(ModelWeightsError, match="SHA-256"):
        build_segmenter("litemedsam")


def test_no_copy_of_weights_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_segmenter("litemedsam")
    assert list(tmp_path.iterdir()) == []
