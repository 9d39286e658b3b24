"""Embed a volume's slices in the background, in the order of the user's attention.

The encoder is the slow step (~0.3 s a slice with OpenVINO bf16, ~0.7 s with ONNX Runtime, ~1.4 s
with PyTorch on a laptop CPU), so while the user looks at slice z a worker thread embeds z first,
then z+1, z-1, z+2, ... When the user moves, the order is recomputed around the new slice; with
ONNX Runtime or OpenVINO the slice in flight is even interrupted if the user jumped to one that is
not ready, so the UI waits only for the slice it shows. Embeddings go to an `EmbeddingCache` (pass one with `disk_dir=` for float16
files keyed by content): an app restart on the same study finds them again.

    pre = VolumePrecomputer.for_volume(segmenter, volume, window="brain", focus=z).start()
    pre.focus(z2)                  # the user moved
    emb = pre.embedding(z2)        # the UI's slice: waits only for this one
    pre.progress().fraction        # for a progress bar; or on_progress=callback
    pre.cancel()
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .cache import EmbeddingCache
from .segmentation import ImageEmbedding

log = logging.getLogger("clinseg.precompute")


def attention_order(num_slices: int, focus: int) -> list[int]:
    """focus, focus+1, focus-1, focus+2, focus-2, ... within 0..num_slices-1."""
    return sorted(range(num_slices), key=lambda z: (abs(z - focus), z < focus))


@dataclass(frozen=True)
class PrecomputeProgress:
    total: int
    done: int  # slices whose embedding is available (computed now or found in the cache)
    computed: int  # encoded by this worker
    reused: int  # already in the cache (memory or disk)
    focus: int
    current: int | None  # slice being encoded right now
    failed: dict[int, str] = field(default_factory=dict)
    finished: bool = False
    cancelled: bool = False
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        return (self.done + len(self.failed)) / self.total if self.total else 1.0


class _Interrupted(Exception):
    """The slice in flight was abandoned because the user moved to a slice that is not ready."""


class VolumePrecomputer:
    def __init__(self, segmenter, slice_source: Callable[[int], np.ndarray], num_slices: int, focus: int = 0,
                 cache: EmbeddingCache | None = None, on_progress: Callable[[PrecomputeProgress], None] | None = None):
        if num_slices < 1:
            raise ValueError("a volume needs at least one slice")
        self.segmenter = segmenter
        self.slice_source = slice_source
        self.num_slices = int(num_slices)
        self.cache = cache if cache is not None else segmenter.cache
        self.on_progress = on_progress
        self._cond = threading.Condition()
        self._focus = self._clamp(focus)
        self._pending = set(range(self.num_slices))
        self._keys: dict[int, str] = {}  # slice -> cache key, for slices done
        self._ready = {z: threading.Event() for z in range(self.num_slices)}
        self._errors: dict[int, BaseException] = {}
        self._current: int | None = None
        self._run_options = None  # the runtime's cancel token for the slice in flight (ONNX Runtime, OpenVINO)
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._finished = False
        self.computed_order: list[int] = []  # encoded slices in order (what the tests check)
        self.reused = 0
        self.interrupted = 0  # slices abandoned midway because the user moved (ONNX Runtime, OpenVINO)

    @staticmethod
    def for_volume(segmenter, volume, window=None, focus: int | None = None, cache: EmbeddingCache | None = None,
                   on_progress=None) -> "VolumePrecomputer":
        from integrations.windowing import slice_image, volume_window

        bounds = volume_window(volume, window)  # the same window as the slices the UI shows: same keys
        z0 = volume.num_slices // 2 if focus is None else focus
        return VolumePrecomputer(segmenter, lambda z: slice_image(volume, z, bounds), volume.num_slices, z0, cache, on_progress)

    def _clamp(self, z: int) -> int:
        return min(max(int(z), 0), self.num_slices - 1)

    # -- control -----------------------------------------------------------------------------
    def start(self) -> "VolumePrecomputer":
        if self._thread is None:
            self._started_at = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="clinseg-precompute", daemon=True)
            self._thread.start()
        return self

    def focus(self, z: int) -> None:
        """The user now looks at slice z: it comes next, then its neighbours outward."""
        with self._cond:
            self._focus = self._clamp(z)
            target = self._focus
            interrupt = (self._current is not None and self._current != target and target in self._pending
                         and self._run_options is not None)
            if interrupt:
                self._run_options.terminate = True
            self._cond.notify_all()

    def cancel(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after (or, with ONNX Runtime, during) the slice in flight; done slices stay cached."""
        self._cancel.set()
        with self._cond:
            if self._run_options is not None:
                self._run_options.terminate = True
            self._cond.notify_all()
        if wait and self._thread is not None:
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def embedding(self, z: int, timeout: float | None = None) -> ImageEmbedding:
        """The embedding of slice z: from the cache, or prioritised and waited for. When the worker
        is not running (never started, cancelled, finished), it is computed here."""
        z = self._clamp(z)
        if self._ready[z].is_set() and z in self._keys:
            emb = self.cache.get(self._keys[z])
            if emb is not None:
                return emb
        if not self.running:
            return self._embed_slice(z, None)[0]
        self.focus(z)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready[z].wait(0.05):
            if not self.running:  # cancelled (or stopped) before reaching z: the caller computes it
                return self._embed_slice(z, None)[0]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"slice {z} not embedded within {timeout} s")
        if z in self._errors:
            raise self._errors[z]
        emb = self.cache.get(self._keys[z])
        return emb if emb is not None else self._embed_slice(z, None)[0]  # evicted from a small cache

    def progress(self) -> PrecomputeProgress:
        with self._cond:
            return PrecomputeProgress(
                total=self.num_slices, done=len(self._keys), computed=len(self.computed_order), reused=self.reused,
                focus=self._focus, current=self._current,
                failed={z: f"{type(e).__name__}: {e}" for z, e in self._errors.items()},
                finished=self._finished, cancelled=self._cancel.is_set(),
                elapsed_s=round(time.perf_counter() - self._started_at, 3) if self._started_at else 0.0)

    # -- worker ------------------------------------------------------------------------------
    def _embed_slice(self, z: int, run_options) -> tuple[ImageEmbedding, bool]:
        """(embedding, reused). Mirrors SamSegmenter.embed, but into this cache and interruptible."""
        from .segmentation import ImageEmbedding as Emb

        seg = self.segmenter
        img = np.asarray(self.slice_source(z), dtype=np.float32)
        key = seg.embedding_key(img)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, True
        x = seg.model_input(img)  # validates the slice (shape, finite values)
        try:
            if seg.runtime is not None:
                features = seg.runtime.encode(x, run_options)
            else:
                features = seg.encode_tensor(x)
        except Exception as e:
            if run_options is not None and run_options.terminate:
                raise _Interrupted() from e
            raise
        t = seg.transform_for(img.shape[:2])
        emb = Emb(features=features, original_size=t.original_size, input_size=t.input_size, key=key, backend=seg.version)
        self.cache.put(key, emb)
        return emb, False

    def _next_slice(self) -> int | None:
        if not self._pending:
            return None
        f = self._focus
        return min(self._pending, key=lambda z: (abs(z - f), z < f))

    def _new_run_options(self):
        """A cancel token for the runtime's encode (None: PyTorch finishes the slice in flight)."""
        rt = self.segmenter.runtime
        return rt.new_run_options() if rt is not None else None

    def _run(self) -> None:
        try:
            while not self._cancel.is_set():
                with self._cond:
                    z = self._next_slice()
                    if z is None:
                        break
                    self._current = z
                    self._run_options = self._new_run_options()
                    ro = self._run_options
                try:
                    emb, reused = self._embed_slice(z, ro)
                except _Interrupted:
                    self.interrupted += 1
                    continue  # z stays pending; the new focus (or the cancel) is handled next
                except Exception as e:  # one bad slice must not stop the volume; it is reported
                    log.warning("precompute: slice %d failed (%s)", z, type(e).__name__)
                    with self._cond:
                        self._errors[z] = e
                        self._pending.discard(z)
                    self._ready[z].set()
                else:
                    with self._cond:
                        self._keys[z] = emb.key
                        self._pending.discard(z)
                        if reused:
                            self.reused += 1
                        else:
                            self.computed_order.append(z)
                    self._ready[z].set()
                finally:
                    with self._cond:
                        self._current = None
                        self._run_options = None
                self._report()
        finally:
            with self._cond:
                self._finished = not self._pending
            self._report()

    def _report(self) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(self.progress())
        except Exception:  # a UI callback bug must not stop the embeddings
            log.exception("precompute: progress callback failed")
