"""Embedding cache: the encoder is the slow part (~1.4 s a slice on a laptop CPU), so a slice is
encoded once and every later prompt only decodes.

Keys are content hashes (the windowed slice's bytes + backend + preprocessing), so the same slice
opened from another file, or after an app restart (on-disk tier), is still a hit; a different
window or backend is a different key.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .segmentation import ImageEmbedding


def content_key(image01: np.ndarray, backend: str, preprocessing: str) -> str:
    arr = np.ascontiguousarray(image01, dtype=np.float32)
    h = hashlib.sha256()
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(f"|{backend}|{preprocessing}".encode())
    return h.hexdigest()[:40]


class EmbeddingCache:
    """Thread-safe LRU in memory (byte cap), with an optional float16 tier on disk."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024, disk_dir: str | os.PathLike | None = None):
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir else None
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._items:
                return True
        return self._disk_path(key) is not None and self._disk_path(key).exists()

    def _disk_path(self, key: str) -> Path | None:
        return self.disk_dir / f"{key}.pt" if self.disk_dir else None

    def get(self, key: str) -> ImageEmbedding | None:
        with self._lock:
            emb = self._items.get(key)
            if emb is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return emb
        path = self._disk_path(key)
        if path is not None and path.exists():
            try:
                blob = torch.load(str(path), map_location="cpu", weights_only=True)
                emb = ImageEmbedding(
                    features=blob["features"].to(torch.float32),
                    original_size=tuple(int(v) for v in blob["original_size"].tolist()),
                    input_size=tuple(int(v) for v in blob["input_size"].tolist()),
                    key=key,
                    backend=str(bytes(blob["backend"].tolist()).decode()),
                )
            except Exception:
                path.unlink(missing_ok=True)  # a half-written or stale file: recompute
            else:
                self._put_memory(key, emb)
                with self._lock:
                    self.hits += 1
                return emb
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, emb: ImageEmbedding) -> None:
        self._put_memory(key, emb)
        path = self._disk_path(key)
        if path is not None and not path.exists():
            blob = {
                "features": emb.features.to(torch.float16),
                "original_size": torch.tensor(emb.original_size),
                "input_size": torch.tensor(emb.input_size),
                "backend": torch.tensor(list(emb.backend.encode()), dtype=torch.uint8),
            }
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            torch.save(blob, str(tmp))
            os.replace(tmp, path)  # atomic: a reader never sees a half-written embedding

    def _put_memory(self, key: str, emb: ImageEmbedding) -> None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = emb
            self._bytes += emb.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
