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
from .targets import Localisers, TargetNotFoundError, TargetSpec, VolumeLocalisation, target_slug

log = logging.getLogger(__name__)

PLUGIN_NAME = "clinseg-segmenter"

# Result statuses. "not_found" is a finding (the target is absent), not a failure.
OK, NOT_FOUND, FAILED = "ok", "not_found", "failed"


@dataclass(frozen=True)
class BatchSpec:
    """What every study of a batch gets done to. Picklable; travels to the workers."""

    targets: tuple[TargetSpec, ...]
    out_dir: str
    backend: str = "litemedsam"
    checkpoint: str | None = None
    template: str | None = None  # template for anatomical targets: None (default), 'demo', 'colin27', a folder
    window: str | None = None
    dicom_outputs: tuple[str, ...] = ("seg",)  # for DICOM input, besides NIfTI: "seg" and/or "rtstruct"
    embedding_cache_mb: int = 64  # studies do not share slices: a small cache is enough

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

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
    size_mm: float = 0.0  # the mask's largest extent along the volume axes, in mm
    voxels: int = 0
    slices: int = 0
    mean_iou: float = 0.0  # the decoder's own quality estimate, averaged over segmented slices
    uncertainty: float = 1.0  # 1 - mean_iou x localiser confidence, in [0, 1]; what triage ranks on
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
    study_uid: str = ""  # DICOM StudyInstanceUID, "" for NIfTI
    series_uid: str = ""
    modality: str = ""
    dicom_outputs: tuple[str, ...] = ()  # SEG / RTSTRUCT files, relative to the output folder

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


def _plugin_on_worker() -> "SegmenterPlugin":
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None:
        raise RuntimeError("this Dask worker has no clinseg segmenter plugin; run batches through integrations.batch.runner")
    return plugin


def _atomic_write_mask(path: Path, volume: Volume, mask: np.ndarray) -> None:
    from integrations.mask_io import write_mask

    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder and suffix (the writer picks the format from it), unique per process.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write_mask(tmp, volume, mask)
    os.replace(tmp, path)


def _remove_stale_temporaries(study_dir: Path) -> None:
    """Half-written files of an earlier attempt whose worker was killed mid-write."""
    if study_dir.is_dir():
        for p in study_dir.glob(".tmp-*"):
            p.unlink(missing_ok=True)


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


def short_reason(e: BaseException, limit: int = 240) -> str:
    """One line for the summary: ITK errors carry a C++ source location and several lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text[-limit:]


def extent_mm(volume: Volume, mask: np.ndarray) -> float:
    """The mask's largest extent along the x, y, z index axes, in mm (a lesion's 'size' for triage)."""
    idx = np.nonzero(mask)
    if not len(idx[0]):
        return 0.0
    extents_zyx = [(int(a.max()) - int(a.min()) + 1) for a in idx]
    sx, sy, sz = volume.spacing
    return float(max(extents_zyx[2] * sx, extents_zyx[1] * sy, extents_zyx[0] * sz))


def _run_target(segmenter, volume: Volume, target: TargetSpec, localisers: Localisers, spec: BatchSpec,
                study_dir: Path, out_root: Path) -> tuple[TargetResult, np.ndarray | None]:
    try:
        loc = localisers.localise(volume, target)
    except TargetNotFoundError as e:
        return TargetResult(target.name, NOT_FOUND, reason=str(e)), None
    except ClinsegInputError:
        raise
    except RuntimeError as e:  # registration diverged (SimpleITK), e.g. the study is not of the template's anatomy
        return TargetResult(target.name, FAILED, reason=f"localisation failed: {short_reason(e)}"), None
    mask, ious = segment_volume(segmenter, volume, loc, spec.window)
    n = int(mask.sum())
    if n == 0:
        return TargetResult(target.name, NOT_FOUND, localiser=loc.method,
                            reason=f"the model returned an empty mask on all {len(loc.boxes)} localised slices"), None
    path = study_dir / f"{target_slug(target.name)}.nii.gz"
    _atomic_write_mask(path, volume, mask)
    mean_iou = float(np.clip(np.mean(ious), 0.0, 1.0))
    return TargetResult(target.name, OK, mask_path=str(path.relative_to(out_root)), volume_ml=round(n * volume.voxel_volume_ml, 4),
                        size_mm=round(extent_mm(volume, mask), 2), voxels=n, slices=int(mask.any(axis=(1, 2)).sum()),
                        mean_iou=round(mean_iou, 4), uncertainty=round(1.0 - mean_iou * float(np.clip(loc.confidence, 0, 1)), 4),
                        localiser=loc.method), mask


def _write_dicom_outputs(volume: Volume, masks: dict[str, np.ndarray], spec: BatchSpec, study_dir: Path,
                         out_root: Path) -> tuple[str, ...]:
    """DICOM-SEG and/or RTSTRUCT referencing the source series, so PACS and TPS show the result."""
    written = []
    if "seg" in spec.dicom_outputs:
        from integrations.dicom_seg import write_seg

        path = study_dir / "segmentation.seg.dcm"
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        write_seg(tmp, volume, masks, algorithm="clinseg-batch", algorithm_version=spec.model_version())
        os.replace(tmp, path)
        written.append(str(path.relative_to(out_root)))
    if "rtstruct" in spec.dicom_outputs:
        from integrations.rtstruct import write_rtstruct

        path = study_dir / "contours.rtstruct.dcm"
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        write_rtstruct(tmp, volume, masks)
        os.replace(tmp, path)
        written.append(str(path.relative_to(out_root)))
    return tuple(written)


def process_study(desc: StudyDescriptor, spec: BatchSpec, segmenter=None, localisers: Localisers | None = None) -> StudyResult:
    """Run one study. Never raises for bad input: the reason goes into the result.

    `segmenter`/`localisers` are built once per process by the caller (in Dask: `SegmenterPlugin`)."""
    from integrations.loaders import load_volume

    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    result = StudyResult(desc.key, desc.kind, desc.relpath, spec.model_version(), OK, worker=worker,
                         study_uid=desc.study_uid or "", series_uid=desc.series_uid or "")
    try:
        if segmenter is None:
            plugin = _plugin_on_worker()
            segmenter, localisers = plugin.get(), localisers or plugin.localisers()
        localisers = localisers or Localisers(spec.template, spec.window)
        volume = load_volume(desc.path, series_uid=desc.series_uid)
        result.shape_zyx, result.modality = volume.shape, volume.modality
        if volume.is_color:
            raise ClinsegInputError("a colour image: batch segmentation takes grey-level studies (CT, MR, PET, X-ray).")
        out_root = Path(spec.out_dir)
        study_dir = out_root / desc.safe_name
        _remove_stale_temporaries(study_dir)
        masks: dict[str, np.ndarray] = {}
        for target in spec.targets:
            try:
                tr, mask = _run_target(segmenter, volume, target, localisers, spec, study_dir, out_root)
            except ClinsegInputError as e:  # this target cannot be done here; the others still can
                tr, mask = TargetResult(target.name, FAILED, reason=str(e)), None
            result.targets.append(tr)
            if mask is not None:
                masks[target.name] = mask
        if masks and volume.dicom is not None and spec.dicom_outputs:
            try:
                result.dicom_outputs = _write_dicom_outputs(volume, masks, spec, study_dir, out_root)
                export_error = ""
            except Exception as e:  # headers highdicom/rt-utils reject: the NIfTI masks stand, the study is flagged
                export_error = f"masks written as NIfTI, but the DICOM export failed ({type(e).__name__}: {short_reason(e)})"
            for tr in result.targets:
                if tr.status == OK:
                    tr.extra_outputs = result.dicom_outputs
                    if export_error:
                        tr.status, tr.reason = FAILED, export_error
    except (ClinsegInputError, ModelWeightsError) as e:
        result.status, result.reason = FAILED, str(e)
    except MemoryError:
        result.status, result.reason = FAILED, "out of memory while processing this study"
    except Exception as e:  # an unexpected bug on one study must not end the batch; keep the type for the report
        log.debug("study %s failed", desc.safe_name, exc_info=True)
        result.status, result.reason = FAILED, f"internal error ({type(e).__name__}: {short_reason(e)})"
    if result.status == FAILED:
        result.targets = [TargetResult(t.name, FAILED, reason=result.reason) for t in spec.targets]
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
        self._localisers = None

    def setup(self, worker) -> None:
        host = str(worker.address).split("://")[-1].rsplit(":", 1)[0]
        self.torch_threads = self.threads_by_host.get(host, self.torch_threads)
        self.get()

    def get(self):
        if self._segmenter is None:
            self._segmenter = build_batch_segmenter(self.spec, self.torch_threads)
        return self._segmenter

    def localisers(self) -> Localisers:
        if self._localisers is None:
            self._localisers = Localisers(self.spec.template, self.spec.window)
        return self._localisers

    def __getstate__(self):
        # The model never travels: each worker builds its own from the spec.
        return {"spec": self.spec, "torch_threads": self.torch_threads, "threads_by_host": self.threads_by_host}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._segmenter = None
        self._localisers = None
