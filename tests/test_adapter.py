"""Multi-sequence adapter: shapes, gradients, checkpoints, training on a tiny phantom, the fallback."""
from __future__ import annotations

import pytest
import torch

from integrations.errors import InconsistentGeometryError, ModelWeightsError

from models.adapter import AdapterConfig, CrossSequenceAdapter, load_adapter, save_adapter


def _adapter(seqs=("t1", "t2", "flair"), primary="flair", seed=0):
    torch.manual_seed(seed)
    return CrossSequenceAdapter(AdapterConfig(sequences=seqs, primary=primary))


def test_forward_backward_shapes_and_identity_at_start():
    ad = _adapter()
    x = torch.randn(2, 3, 256, 16, 16, requires_grad=True)
    y = ad(x)
    assert y.shape == (2, 256, 16, 16)
    # The zero gate makes an untrained adapter the primary sequence's embedding, exactly.
    assert torch.equal(y, x[:, 2])
    (y * torch.randn_like(y)).sum().backward()
    assert ad.gate.grad is not None and ad.gate.grad.abs() > 0  # training can open the gate
    with torch.no_grad():
        ad.gate.fill_(0.5)
    ad.zero_grad()
    x.grad = None
    out = ad(x)
    assert not torch.equal(out, x[:, 2])
    out.sum().backward()
    grads = {n: p.grad for n, p in ad.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert grads["attn.in_proj_weight"].abs().sum() > 0 and grads["sequence_embed"].abs().sum() > 0
    assert x.grad.shape == x.shape and x.grad[:, 0].abs().sum() > 0  # the other sequences do feed the result


def test_wrong_inputs_and_configs_are_refused():
    ad = _adapter()
    with pytest.raises(ValueError, match="3 sequences"):
        ad(torch.zeros(1, 2, 256, 8, 8))
    with pytest.raises(ValueError, match="B, S, C, H, W"):
        ad(torch.zeros(3, 256, 8, 8))
    with pytest.raises(ValueError, match="at least two"):
        AdapterConfig(sequences=("t1",), primary="t1")
    with pytest.raises(ValueError, match="not one of"):
        AdapterConfig(sequences=("t1", "t2"), primary="flair")


def test_checkpoint_round_trip(tmp_path):
    ad = _adapter(seed=1)
    with torch.no_grad():
        ad.gate.fill_(0.7)
        ad.mlp[0].weight.add_(0.01)
    x = torch.randn(1, 3, 256, 8, 8)
    path = tmp_path / "ad.pt"
    save_adapter(path, ad, backend="litemedsam:256-stretch-unit", extra={"epoch": 3})
    back, blob = load_adapter(path, backend="litemedsam:256-stretch-unit")
    assert blob["epoch"] == 3 and back.config == ad.config
    ad.eval()
    assert torch.allclose(back(x), ad(x))
    with pytest.raises(ModelWeightsError, match="trained on embeddings of"):
        load_adapter(path, backend="sam_vit_b:1024-longest-imagenet")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelWeightsError, match="not a readable"):
        load_adapter(bad)
    with pytest.raises(ModelWeightsError, match="not found"):
        load_adapter(tmp_path / "missing.pt")


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    from bench.phantoms import PhantomSpec, write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=3, seed=4, spec=PhantomSpec(slices=1))


def test_dataset_layout_and_errors(tiny_phantom, tmp_path):
    import shutil

    from models.adapter_training import DatasetError, common_sequences, load_case_volumes, scan_dataset

    cases = scan_dataset(tiny_phantom)
    assert [c.name for c in cases] == ["case000", "case001", "case002"]
    assert common_sequences(cases) == ("t1", "t2", "flair")
    # BraTS's own file names (<case>_<sequence>.nii.gz) are understood too.
    brats = tmp_path / "brats" / "BraTS20_001"
    brats.mkdir(parents=True)
    for f in (tiny_phantom / "case000").iterdir():
        shutil.copy(f, brats / f"BraTS20_001_{f.name}")
    c = scan_dataset(tmp_path / "brats")[0]
    assert set(c.sequences) == {"t1", "t2", "flair"} and c.label.name == "BraTS20_001_seg.nii.gz"
    with pytest.raises(DatasetError, match="no case folders"):
        scan_dataset(tmp_path / "brats" / "BraTS20_001")
    # A sequence on another grid is refused (the adapter needs co-registered sequences).
    import SimpleITK as sitk

    img = sitk.ReadImage(str(brats / "BraTS20_001_t2.nii.gz"))
    img.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(img, str(brats / "BraTS20_001_t2.nii.gz"))
    with pytest.raises(InconsistentGeometryError, match="co-register"):
        load_case_volumes(scan_dataset(tmp_path / "brats")[0], ("t1", "t2"))


@pytest.fixture(scope="module")
def trained(segmenter, tiny_phantom, tmp_path_factory):
    from models.adapter_training import TrainConfig, train_adapter

    out = tmp_path_factory.mktemp("ckpt") / "adapter.pt"
    cfg = TrainConfig(epochs=4, batch_size=1, box_jitter=0.0, lr=2e-3, sequences=("t2", "flair"), val_fraction=0.34)
    logs = []
    res = train_adapter(segmenter, tiny_phantom, out, cfg, log_fn=logs.append)
    return res, cfg, out, logs


def test_training_loss_decreases_and_checkpoints(trained, tiny_phantom):
    res, cfg, out, logs = trained
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0], losses
    assert all(0.0 <= h["val_dice"] <= 1.0 for h in res.history)
    assert out.is_file() and out.with_name(out.name + ".last").is_file()
    assert any("validation Dice" in m for m in logs)
    # Embeddings were cached on disk: one file per slice and sequence (2 train + 1 val cases x 2 sequences).
    assert len(list((tiny_phantom / ".clinseg-embeddings").glob("*.pt"))) == 6


def test_resume_continues_from_the_last_epoch(segmenter, trained, tiny_phantom):
    from models.adapter_training import TrainConfig, train_adapter

    res, cfg, out, _ = trained
    more = TrainConfig(**{**cfg.__dict__, "epochs": 5})
    res2 = train_adapter(segmenter, tiny_phantom, out, more, resume=True, log_fn=lambda m: None)
    assert res2.resumed_from_epoch == 4
    assert [h["epoch"] for h in res2.history] == [1, 2, 3, 4, 5]
    _, blob = load_adapter(out.with_name(out.name + ".last"))
    assert blob["epoch"] == 5 and "optimizer" in blob


def test_fallback_without_checkpoint_is_used_and_said(segmenter, trained, tiny_phantom, monkeypatch):
    from models.adapter_training import case_samples, scan_dataset
    from models.multisequence import ADAPTER_ENV, MultiSequenceSegmenter
    from prompting.promptset import PromptSet

    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    sample = case_samples(scan_dataset(tiny_phantom)[0], ("t2", "flair"))[0]
    ms = MultiSequenceSegmenter(segmenter)
    assert ms.mode == "channels"
    seg = ms.segment(sample.images, PromptSet.from_box(*sample.box))
    assert seg.mask.shape == sample.mask.shape
    assert any("no adapter checkpoint configured" in n and "sequences as channels" in n for n in seg.notes)
    # With the checkpoint configured through the environment, the adapter is used and said.
    _, _, out, _ = trained
    monkeypatch.setenv(ADAPTER_ENV, str(out))
    ms2 = MultiSequenceSegmenter(segmenter)
    assert ms2.mode == "adapter" and ms2.sequences == ("t2", "flair")
    seg2 = ms2.segment(sample.images, PromptSet.from_box(*sample.box))
    assert any("cross-attention adapter" in n for n in seg2.notes)
    assert not any("sequences as channels" in n for n in seg2.notes)
