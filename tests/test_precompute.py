"""Background volume embedding: attention order, re-prioritising, cancel, failures, disk reuse."""
from __future__ import annotations

import numpy as np
import pytest

from integrations.errors import InvalidPromptError
from models.cache import EmbeddingCache
from models.precompute import VolumePrecomputer, attention_order


def _slices(n: int) -> list[np.ndarray]:
    """n distinct small slices (a disc moving across the field): distinct content keys."""
    yy, xx = np.mgrid[:64, :80]
    return [np.clip(0.1 + 0.8 * (((yy - 32) ** 2 + (xx - 15 - 8 * i) ** 2) < 12 ** 2), 0, 1).astype(np.float32) for i in range(n)]


def test_attention_order_is_current_then_outward():
    assert attention_order(7, 3) == [3, 4, 2, 5, 1, 6, 0]
    assert attention_order(4, 0) == [0, 1, 2, 3]
    assert attention_order(4, 3) == [3, 2, 1, 0]


def test_order_progress_and_reuse_across_restart(segmenter, tmp_path):
    imgs = _slices(4)
    seen = []
    pre = VolumePrecomputer(segmenter, imgs.__getitem__, len(imgs), focus=2,
                            cache=EmbeddingCache(disk_dir=tmp_path), on_progress=seen.append)
    pre.start()
    assert pre.join(timeout=300)
    assert pre.computed_order == [2, 3, 1, 0]
    prog = pre.progress()
    assert prog.finished and prog.done == 4 and prog.computed == 4 and prog.fraction == 1.0 and not prog.failed
    assert [p.done for p in seen][:4] == [1, 2, 3, 4]  # one report per slice, in order
    assert len(list(tmp_path.glob("*.pt"))) == 4  # float16 files on disk

    want = segmenter.encode_tensor(segmenter.model_input(imgs[2]))
    got = pre.embedding(2).features
    assert float((got - want).abs().max()) < 1e-3

    # "App restart": a new cache object on the same folder, a new worker: nothing is re-encoded.
    again = VolumePrecomputer(segmenter, imgs.__getitem__, len(imgs), focus=0, cache=EmbeddingCache(disk_dir=tmp_path))
    assert again.start().join(timeout=60)
    assert again.computed_order == [] and again.progress().reused == 4
    emb = again.embedding(2)
    assert emb.features.dtype.is_floating_point and float((emb.features - want).abs().max()) < 5e-3  # float16 on disk


def test_refocus_then_cancel(segmenter, tmp_path):
    imgs = _slices(5)
    holder = {}

    def on_progress(p):
        pre = holder["pre"]
        if p.computed == 1:
            pre.focus(4)  # the user jumped to the last slice
        if p.computed == 2:
            pre.cancel(wait=False)

    pre = VolumePrecomputer(segmenter, imgs.__getitem__, len(imgs), focus=0, cache=EmbeddingCache(disk_dir=tmp_path),
                            on_progress=on_progress)
    holder["pre"] = pre
    pre.start()
    assert pre.join(timeout=300)
    assert pre.computed_order == [0, 4]
    prog = pre.progress()
    assert prog.cancelled and not prog.finished and prog.done == 2
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_bad_slice_is_reported_not_fatal(segmenter):
    bad = np.full((32, 32), np.nan, np.float32)
    pre = VolumePrecomputer(segmenter, lambda z: bad, 1, cache=EmbeddingCache())
    assert pre.start().join(timeout=60)
    prog = pre.progress()
    assert 0 in prog.failed and "NaN" in prog.failed[0] and prog.done == 0
    with pytest.raises(InvalidPromptError):
        pre.embedding(0)
