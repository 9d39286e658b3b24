"""The per-study task: load -> localise each target -> segment -> write masks -> findings.

It runs in a Dask worker process (or in-process for one-machine use and tests). The segmenter is
built ONCE per worker process by `SegmenterPlugin.setup` and reused by every task on that worker:
loading LiteMedSAM costs seconds, a study a few seconds more. Torch threads are set there too, so
that workers x threads never exceeds the machine's cores.

A task never raises for a bad study: every error becomes a failed `StudyResult` with the reason,
so one corrupt series cannot stop a batch of 300. Outputs are written atomically (temp file +
rename), so a worker killed mid-write leaves no half mask that looks finished.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from integrations.errors import ClinsegInputError, ModelWeightsError
from integrations.volume import Volume

from .discovery import StudyDescriptor
from .targets import LocaliserChain, TargetNotFoundError, UnknownTargetError, VolumeLocalisation, default_localisers, target_slug

log = logging.getLogger(__name__)

PLUGIN_NAME = "clinseg-segmenter"

# Result statuses. "not_found" is a finding (the target is absent), not a failure.
OK, NOT_FOUND, FAILED = "ok", "not_found", "failed"


@dataclass(frozen=True)
class BatchSpec:
    """What every study of a batch gets done to. Picklable; travels to the workers."""

    targets: tuple[str, ...]
    out_dir: str
    backend: str = "litemedsam"
    checkpoint: str | None = None
    template: str | None = None
    window: str | None = None
    embedding_cache_mb: int = 64  # studies do not share slices: a small cache is enough

    def model_version(self) -> str:
        """The version string results are keyed by; equals the built segmenter's `.version`."""
        from models.registry import BACKENDS

        if self.backend not in BACKENDS:
            raise ModelWeightsError(f"unknown backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")
        version = f"{self.backend}:{BACKENDS[self.backend].preprocessing.describe()}"
        # A user checkpoint is other weights: results made with it must not count as done for the bundled ones.
        return version if not self.checkpoint else f"{version}@{Path(self.checkpoint).name}"


@dataclass
class TargetResult:
    target: str
    status: str
    reason: str = ""
    mask_path: str = ""  # relative to the batch output folder
    extra_outputs: tuple[str, ...] = ()
    volume_ml: float = 0.0
    voxels: int = 0
    slices: int = 0
    mean_iou: float = 0.0
    localiser: str = ""


@dataclass
class StudyResult:
    key: str
    kind: str
    relpath: str
    model_version: str
    status: str  # ok (every target ok/not_found) | failed (the study or at least one target failed)
    reason: str = ""
    targets: list[TargetResult] = field(default_factory=list)
    seconds: float = 0.0
    worker: str = ""
    shape_zyx: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def build_batch_segmenter(spec: BatchSpec, torch_threads: int | None = None):
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter

    seg = build_segmenter(spec.backend, checkpoint=spec.checkpoint,
                          cache=EmbeddingCache(max_bytes=spec.embedding_cache_mb * 1024 * 1024),
                          num_threads=torch_threads)
    if seg.version != spec.model_version().split("@")[0]:
        raise ModelWeightsError(f"segmenter version {seg.version} differs from the expected {spec.model_version()}")
    return seg


def _segmenter_from_worker():
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None:
        raise RuntimeError("this Dask worker has no clinseg segmenter plugin; run batches through integrations.batch.runner")
    return plugin.get()


def _atomic_write_mask(path: Path, volume: Volume, mask: np.ndarray) -> None:
    from integrations.mask_io import write_mask

    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder and suffix (the writer picks the format from it), unique per process.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write_mask(tmp, volume, mask)
    os.replace(tmp, path)


def segment_volume(segmenter, volume: Volume, loc: VolumeLocalisation, window: str | None = None) -> tuple[np.ndarray, list[float]]:
    """A (z, y, x) bool mask: every localised slice encoded once and decoded with its box."""
    from app.pipeline import SliceSession, segment
    from prompting.promptset import PromptSet

    mask = np.zeros(volume.shape, bool)
    ious: list[float] = []
    for z in sorted(loc.boxes):
        session = SliceSession.open(volume, z, window)
        prompt = PromptSet(box=loc.boxes[z], label=loc.target)
        seg = segment(segmenter, session, prompt)
        mask[z] = seg.mask
        ious.append(float(seg.predicted_iou))
    return mask, ious


def _run_target(segmenter, volume: Volume, target: str, localisers: LocaliserChain, spec: BatchSpec,
                study_dir: Path, out_root: Path) -> TargetResult:
    try:
        loc = localisers.localise(volume, target)
    except TargetNotFoundError as e:
        return TargetResult(target, NOT_FOUND, reason=str(e))
    except UnknownTargetError as e:
        return TargetResult(target, FAILED, reason=str(e))
    mask, ious = segment_volume(segmenter, volume, loc, spec.window)
    n = int(mask.sum())
    if n == 0:
        return TargetResult(target, NOT_FOUND, reason=f"the model returned an empty mask on all {len(loc.boxes)} localised slices",
                            localiser=loc.method)
    path = study_dir / f"{target_slug(target)}.nii.gz"
    _atomic_write_mask(path, volume, mask)
    return TargetResult(target, OK, mask_path=str(path.relative_to(out_root)), volume_ml=round(n * volume.voxel_volume_ml, 4),
                        voxels=n, slices=int(mask.any(axis=(1, 2)).sum()), mean_iou=round(float(np.mean(ious)), 4),
                        localiser=loc.method)


def check_gzip_complete(path: str | os.PathLike) -> None:
    """Raise TruncatedFileError when a .gz file's stream ends early.

    SimpleITK zero-fills the missing part of a cut-short .nii.gz without an error (checked with
    SimpleITK 2.x): a half-copied scan would be segmented as if it were whole. Unattended batches
    meet interrupted copies, so the stream is checked before loading.
    """
    import gzip
    import zlib

    from integrations.errors import TruncatedFileError

    if not str(path).lower().endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise TruncatedFileError(f"{Path(path).name}: the compressed data is incomplete or damaged ({e}); "
                                 "the file was cut short (an interrupted copy?). Copy it again.") from e


def process_study(desc: StudyDescriptor, spec: BatchSpec, segmenter=None) -> StudyResult:
    """Run one study. Never raises for bad input: the reason goes into the result."""
    from integrations.loaders import load_volume

    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    result = StudyResult(desc.key, desc.kind, desc.relpath, spec.model_version(), OK, worker=worker)
    try:
        if desc.kind == "nifti":
            check_gzip_complete(desc.path)
        volume = load_volume(desc.path, series_uid=desc.series_uid)
        result.shape_zyx = volume.shape
        if volume.is_color:
            raise ClinsegInputError("a colour image: batch segmentation takes grey-level studies (CT, MR, PET, X-ray).")
        seg = segmenter if segmenter is not None else _segmenter_from_worker()
        localisers = default_localisers(spec.template, spec.window)
        out_root = Path(spec.out_dir)
        study_dir = out_root / desc.safe_name
        for target in spec.targets:
            try:
                result.targets.append(_run_target(seg, volume, target, localisers, spec, study_dir, out_root))
            except ClinsegInputError as e:
                result.targets.append(TargetResult(target, FAILED, reason=str(e)))
    except (ClinsegInputError, ModelWeightsError) as e:
        result.status, result.reason = FAILED, str(e)
    except MemoryError:
        result.status, result.reason = FAILED, "out of memory while processing this study"
    except Exception as e:  # an unexpected bug on one study must not end the batch; keep the type for the report
        log.debug("study %s failed", desc.safe_name, exc_info=True)
        result.status, result.reason = FAILED, f"internal error ({type(e).__name__}: {e})"
    if result.status == FAILED:
        result.targets = [TargetResult(t, FAILED, reason=result.reason) for t in spec.targets]
    elif any(t.status == FAILED for t in result.targets):
        result.status = FAILED
        result.reason = "; ".join(f"{t.target}: {t.reason}" for t in result.targets if t.status == FAILED)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def run_study_on_worker(desc: StudyDescriptor, spec: BatchSpec) -> StudyResult:
    """The function submitted to Dask (one call per study)."""
    return process_study(desc, spec)


class SegmenterPlugin(WorkerPlugin):
    """Dask WorkerPlugin: one segmenter per worker process, built when the worker starts (and again
    by a worker restarted after a crash), with torch's thread count set for that worker."""

    name = PLUGIN_NAME

    def __init__(self, spec: BatchSpec, torch_threads: int | None = None, threads_by_host: dict[str, int] | None = None):
        self.spec = spec
        self.torch_threads = torch_threads
        self.threads_by_host = dict(threads_by_host or {})
        self._segmenter = None

    def setup(self, worker) -> None:
        host = str(worker.address).split("://")[-1].rsplit(":", 1)[0]
        self.torch_threads = self.threads_by_host.get(host, self.torch_threads)
        self.get()

    def get(self):
        if self._segmenter is None:
            self._segmenter = build_batch_segmenter(self.spec, self.torch_threads)
        return self._segmenter

    def __getstate__(self):
        # The model never travels: each worker builds its own from the spec.
        return {"spec": self.spec, "torch_threads": self.torch_threads, "threads_by_host": self.threads_by_host}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._segmenter = None
