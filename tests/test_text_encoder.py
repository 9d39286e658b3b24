"""Text encoders load offline: the network is blocked while MiniLM loads and encodes."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from models.text_encoder import ClipTextEncoder, MiniLMEncoder, TextEncoderConfig, TextEncoderError, load_text_encoder, minilm_path


class NetworkBlocked(AssertionError):
    pass


@pytest.fixture(scope="module")
def offline_encoder():
    """MiniLM loaded while every socket connect raises: proof that nothing is fetched."""
    mp = pytest.MonkeyPatch()

    def refuse(self, *args, **kwargs):
        raise NetworkBlocked(f"network access attempted: {args}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "create_connection", refuse)
    try:
        enc = load_text_encoder(TextEncoderConfig())
        vecs = enc.encode(["left hippocampus", "hippocampal formation", "banana"])
    finally:
        mp.undo()
    return enc, vecs


def test_minilm_loads_from_site_packages_with_network_blocked(offline_encoder):
    enc, vecs = offline_encoder
    assert isinstance(enc, MiniLMEncoder)
    assert "site-packages" in str(enc.path) and enc.path == minilm_path()
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_minilm_similarity_is_meaningful(offline_encoder):
    _, v = offline_encoder
    related, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert related > 0.5 > unrelated


def test_parser_uses_embeddings_for_paraphrases_but_not_for_unknown_words(offline_encoder):
    from prompting.query import QueryParser
    from prompting.vocabulary import load_vocabulary

    p = QueryParser(load_vocabulary(use_env=False), encoder=offline_encoder[0])
    q = p.parse("left caudate nucleus head")  # not in the vocabulary; MiniLM places it
    assert [t.display for t in q.targets] == ["Caudate_L"] and q.targets[0].via == "embedding"
    assert "text-embedding similarity" in q.explain()
    for word in ("banana", "knee", "nose", "guitar", "the moon"):
        assert not p.parse(word).found, word


def test_clip_without_open_clip_names_what_is_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *a, **k):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(TextEncoderError, match="open_clip_torch"):
        ClipTextEncoder("ViT-B-32", "/nonexistent.pt")


def test_clip_config_from_env(monkeypatch):
    monkeypatch.setenv("CLINSEG_CLIP_MODEL", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    monkeypatch.delenv("CLINSEG_CLIP_CHECKPOINT", raising=False)
    cfg = TextEncoderConfig.from_env()
    assert cfg.wants_clip and cfg.clip_checkpoint is None
    monkeypatch.delenv("CLINSEG_CLIP_MODEL")
    assert not TextEncoderConfig.from_env().wants_clip


def test_clip_from_a_local_checkpoint_encodes_and_scores_patches(tmp_path, monkeypatch):
    """A tiny open_clip ViT (random weights, saved as a local checkpoint): the whole CLIP path runs
    offline -- text encoding, patch-text similarity, and the text prompter's CLIP localiser."""
    import json

    import open_clip
    import torch

    from prompting.query import QueryParser
    from prompting.text_prompt import TextPrompter
    from prompting.vocabulary import load_vocabulary

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (tmp_path / "clinseg-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("clinseg-tiny-clip", pretrained=None).state_dict(), tmp_path / "tiny.pt")

    monkeypatch.setenv("CLINSEG_CLIP_MODEL", "clinseg-tiny-clip")
    monkeypatch.setenv("CLINSEG_CLIP_CHECKPOINT", str(tmp_path / "tiny.pt"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(NetworkBlocked("network")))
    clip = load_text_encoder()
    assert isinstance(clip, ClipTextEncoder)
    v = clip.encode(["left kidney", "brain"])
    assert v.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    image = np.zeros((96, 128), np.float32)
    image[30:70, 40:90] = 1.0
    sim = clip.dense_similarity(image, "left kidney")
    assert sim.shape == (4, 4) and np.all(np.abs(sim) <= 1.0 + 1e-5)

    from integrations.volume import Volume

    vol = Volume(image[None], spacing=(1.0, 1.0, 1.0))
    result = TextPrompter(QueryParser(load_vocabulary(use_env=False)), template=None, clip=clip,
                          min_confidence=0.0).prompts_for_slice("left kidney", vol, 0, image)
    if result.found:  # random weights may or may not single out a region; if they do, it is said honestly
        assert "CLIP patch-text similarity" in result.prompts[0].notes[0] and result.prompts[0].box.confidence <= 0.5
    else:
        assert "CLIP similarity found no region" in result.failures[0]

    with pytest.raises(TextEncoderError, match="does not exist"):
        ClipTextEncoder("clinseg-tiny-clip", str(tmp_path / "missing.pt"))
    with pytest.raises(TextEncoderError, match="needs a local checkpoint"):
        ClipTextEncoder("clinseg-tiny-clip", None)
