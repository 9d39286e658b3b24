"""Multi-sequence cross-attention adapter: several MRI sequences -> one embedding for the mask decoder.

Each co-registered sequence (e.g. T1, T1ce, T2, FLAIR) goes through the FROZEN image encoder on its
own; the adapter fuses the per-sequence embeddings (S x 256 x 64 x 64) into one 256 x 64 x 64
embedding that the (frozen) SAM mask decoder takes unchanged.

How: at every one of the 64 x 64 token positions, the primary sequence's token is the query and the
tokens of all sequences at that position (each tagged with a learned sequence embedding) are keys and
values of an `nn.MultiheadAttention`. Attending per position is what co-registration allows, and it
keeps the cost linear in the number of tokens (4096 queries x S keys, not 4096 x 4096 S), which is
what makes CPU training in minutes possible. A small convolution before the attention gives each
token its 3 x 3 neighbourhood, so the fusion can use local context too. Pre-norm residual blocks
(attention, then an MLP), and a learned gate initialised at zero: an untrained adapter returns the
primary sequence's embedding exactly, so the decoder starts from what it knows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdapterConfig:
    sequences: tuple[str, ...]  # names, in the order embeddings are stacked; e.g. ("t1", "t1ce", "t2", "flair")
    primary: str  # the sequence that queries the others
    dim: int = 256  # channels of the image embedding (SAM: 256)
    heads: int = 8
    mlp_ratio: float = 2.0
    context_kernel: int = 3  # depthwise conv over each sequence's token grid before attention (1 = none)

    def __post_init__(self) -> None:
        if len(self.sequences) < 2:
            raise ValueError(f"a multi-sequence adapter needs at least two sequences, got {list(self.sequences)}")
        if len(set(self.sequences)) != len(self.sequences):
            raise ValueError(f"sequence names repeat: {list(self.sequences)}")
        if self.primary not in self.sequences:
            raise ValueError(f"primary sequence {self.primary!r} is not one of {list(self.sequences)}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def primary_index(self) -> int:
        return self.sequences.index(self.primary)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sequences"] = list(self.sequences)
        return d

    @staticmethod
    def from_dict(d: dict) -> "AdapterConfig":
        d = dict(d)
        d["sequences"] = tuple(d["sequences"])
        return AdapterConfig(**d)


class CrossSequenceAdapter(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        c, s = config.dim, len(config.sequences)
        self.sequence_embed = nn.Parameter(torch.zeros(s, c))
        nn.init.normal_(self.sequence_embed, std=0.02)
        k = config.context_kernel
        self.context = nn.Conv2d(c, c, k, padding=k // 2, groups=c) if k > 1 else nn.Identity()
        self.norm_q = nn.LayerNorm(c)
        self.norm_kv = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, config.heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(c)
        hidden = int(c * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c))
        # Zero gate: an untrained adapter is the identity on the primary embedding.
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, S, C, H, W) per-sequence embeddings -> (B, C, H, W) fused embedding."""
        if embeddings.ndim != 5:
            raise ValueError(f"expected (B, S, C, H, W) embeddings, got shape {tuple(embeddings.shape)}")
        b, s, c, h, w = embeddings.shape
        if s != len(self.config.sequences) or c != self.config.dim:
            raise ValueError(f"expected {len(self.config.sequences)} sequences of {self.config.dim} channels "
                             f"({', '.join(self.config.sequences)}), got {s} x {c}")
        primary = embeddings[:, self.config.primary_index]  # (B, C, H, W)
        ctx = self.context(embeddings.reshape(b * s, c, h, w)).reshape(b, s, c, h, w)
        # Tokens per position: (B*H*W, S, C); the query is the primary sequence's token.
        kv = ctx.permute(0, 3, 4, 1, 2).reshape(b * h * w, s, c) + self.sequence_embed
        q = kv[:, self.config.primary_index : self.config.primary_index + 1]
        att, _ = self.attn(self.norm_q(q), self.norm_kv(kv), self.norm_kv(kv), need_weights=False)
        x = q + att
        x = x + self.mlp(self.norm_mlp(x))
        delta = (x[:, 0] - q[:, 0]).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return primary + self.gate * delta


def save_adapter(path, adapter: CrossSequenceAdapter, backend: str, extra: dict | None = None) -> None:
    """A checkpoint that says what it was trained for: sequences, primary, encoder backend."""
    import os
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = {"kind": "clinseg-multisequence-adapter", "version": 1, "config": adapter.config.to_dict(),
            "backend": backend, "state_dict": adapter.state_dict()}
    blob.update(extra or {})
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    torch.save(blob, str(tmp))
    os.replace(tmp, p)  # a crash mid-save never leaves a half checkpoint behind


def load_adapter(path, backend: str | None = None) -> tuple[CrossSequenceAdapter, dict]:
    """(adapter in eval mode, the whole checkpoint dict). Raises ModelWeightsError on a bad file."""
    from pathlib import Path

    from integrations.errors import ModelWeightsError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelWeightsError(f"adapter checkpoint not found: {p}. Train one with `clinseg train-adapter DATA_DIR --out {p.name}`.")
    try:
        blob = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelWeightsError(f"{p.name}: not a readable adapter checkpoint ({type(e).__name__}: {e}).") from e
    if not isinstance(blob, dict) or blob.get("kind") != "clinseg-multisequence-adapter":
        raise ModelWeightsError(f"{p.name}: not a clinseg multi-sequence adapter checkpoint.")
    if backend is not None and blob.get("backend") != backend:
        raise ModelWeightsError(f"{p.name}: the adapter was trained on embeddings of {blob.get('backend')}, "
                                f"but the segmenter is {backend}; retrain it for this backend.")
    config = AdapterConfig.from_dict(blob["config"])
    adapter = CrossSequenceAdapter(config)
    try:
        adapter.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as e:
        raise ModelWeightsError(f"{p.name}: adapter weights do not match its configuration ({e}).") from e
    return adapter.eval(), blob
