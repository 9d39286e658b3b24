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
