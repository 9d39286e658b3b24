"""Run a batch on Dask: discover -> skip what is done -> one task per study -> commit each result once.

- Cluster: a `LocalCluster` of worker processes on 127.0.0.1 by default (`workers` of them, one Dask
  thread each, torch threads = cores // workers, so the machine is never oversubscribed), or an
  existing scheduler (`scheduler="tcp://host:8786"`), or a `Client` handed in.
- One model per worker process, built once by `SegmenterPlugin` (also after a worker restart).
- Worker loss: the scheduler re-runs a task whose worker died, up to `retries` times
  (`allowed-failures` for our LocalCluster, `retries=` for task errors); a study that keeps killing
  workers (a crash in a native library, out of memory) is then recorded as failed.
- Exactly once: only this process writes results. Dask delivers one result per future however
  often the task ran; the manifest upserts it under (study key, target, model version).
- Resumable: a re-run skips every study whose rows are finished; `retry_failed` redoes failures.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from integrations.errors import ClinsegInputError

from .discovery import StudyDescriptor, discover
from .manifest import Manifest
from .progress import Progress
from .tasks import FAILED, OK, PLUGIN_NAME, BatchSpec, SegmenterPlugin, StudyResult, TargetResult, run_study_on_worker
from .worklist import WorklistSink

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.sqlite"
SUMMARY_NAME = "summary.csv"


@dataclass(frozen=True)
class BatchOptions:
    workers: int | None = None  # LocalCluster size; default: one per core, at most one per study
    scheduler: str | None = None  # address of an existing Dask scheduler
    retries: int = 2
    retry_failed: bool = False
    progress: bool = True
    worklist: str | None = None  # triage worklist (SQLite path or SQLAlchemy URL) to publish findings to
    only_new: bool = False  # with a worklist: skip studies the worklist has past "new"


@dataclass
class BatchReport:
    discovered: int
    skipped: int  # finished in an earlier run
    submitted: int
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0  # the whole call: discovery, cluster start, model loads, studies, summary
    processing_seconds: float = 0.0  # first submit to last commit: what a longer batch scales with
    workers: int = 0
    manifest: str = ""
    summary_csv: str = ""
    results: list[StudyResult] = field(default_factory=list)

    @property
    def studies_per_min(self) -> float:
        """End to end, start-up included."""
        return 60.0 * self.submitted / self.seconds if self.seconds > 0 else 0.0

    @property
    def processing_per_min(self) -> float:
        """Steady throughput once the workers have their model."""
        return 60.0 * self.submitted / self.processing_seconds if self.processing_seconds > 0 else 0.0


def local_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker so that workers x threads <= cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _task_key(desc: StudyDescriptor, model_version: str, targets: tuple[str, ...]) -> str:
    # Deterministic: the same study submitted twice to one scheduler is one task, not two.
    h = hashlib.sha1(f"{desc.key}|{model_version}|{'|'.join(targets)}".encode()).hexdigest()[:20]
    return f"clinseg-study-{h}"


def _lost_result(desc: StudyDescriptor, spec: BatchSpec, error: BaseException) -> StudyResult:
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):
        reason = (f"the worker running this study died {error.allowed_failures + 1} times (a crash or out of memory); "
                  "re-run with --retry-failed after checking the study")
    else:
        reason = f"the task failed outside the study code ({type(error).__name__}: {error})"
    model_version = spec.model_version()
    return StudyResult(desc.key, desc.kind, desc.relpath, model_version, FAILED, reason=reason,
                       study_uid=desc.study_uid or "", series_uid=desc.series_uid or "",
                       targets=[TargetResult(t, FAILED, reason=reason) for t in spec.target_names])


def _start_local_cluster(stack: ExitStack, n_workers: int, retries: int):
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        cluster = stack.enter_context(LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR,
        ))
    return stack.enter_context(Client(cluster))


def _register_segmenter(client, spec: BatchSpec, threads_by_host: dict[str, int], default_threads: int) -> int:
    """Build the model on every worker (once per process) and return how many workers there are."""
    client.register_plugin(SegmenterPlugin(spec, default_threads, threads_by_host), name=PLUGIN_NAME)
    return len(client.scheduler_info(n_workers=-1)["workers"])


def remote_threads(client) -> dict[str, int]:
    """Torch threads per worker, per host, for an existing cluster: the host's cores shared among the
    Dask threads of all workers on that host (each Dask thread runs one study at a time)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(os.cpu_count)  # asked of each worker: hosts differ
    dask_threads: Counter[str] = Counter()
    for w in workers.values():
        dask_threads[w["host"]] += max(1, int(w.get("nthreads", 1)))
    share: dict[str, int] = {}
    for addr, w in workers.items():
        host = w["host"]
        per = max(1, int(cores.get(addr) or 1) // max(1, dask_threads[host]))
        share[host] = min(share.get(host, per), per)
    return share


def run_batch(input_path: str | os.PathLike, spec: BatchSpec, options: BatchOptions = BatchOptions(),
              client=None, on_result: Callable[[StudyResult], None] | None = None) -> BatchReport:
    """Segment every study under `input_path` that is not finished yet. Returns what happened."""
    t0 = time.monotonic()
    out_root = Path(spec.out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    model_version = spec.model_version()
    if options.workers is not None and options.workers < 1:
        raise ClinsegInputError(f"--workers must be at least 1 (got {options.workers}).")
    if options.workers is not None and options.scheduler:
        raise ClinsegInputError("give --workers (a local cluster) or --scheduler (an existing one), not both.")
    if options.only_new and not options.worklist:
        raise ClinsegInputError("--only-new needs --worklist: it selects the studies the worklist has as 'new'.")
    studies = discover(input_path)
    manifest = Manifest(out_root / MANIFEST_NAME)
    done = manifest.done_keys(spec.target_names, model_version, out_root, retry_failed=options.retry_failed)
    pending = [s for s in studies if s.key not in done]
    with ExitStack() as stack:
        if not log.isEnabledFor(logging.INFO):
            # Dask logs every scheduler/nanny event at INFO on its own handler; a batch's stderr is
            # for the progress line and real problems (restored afterwards: the caller's logging).
            dlog = logging.getLogger("distributed")
            stack.callback(dlog.setLevel, dlog.level)
            dlog.setLevel(logging.ERROR)
        sink = None
        if options.worklist:
            sink = WorklistSink(options.worklist)
            stack.callback(sink.close)
            if options.only_new:
                # A study not on the worklist yet is new too; one a person has taken further is left alone.
                pending = [s for s in pending if sink.status_of(s) in (None, "new")]
        report = BatchReport(discovered=len(studies), skipped=len(studies) - len(pending), submitted=len(pending),
                             manifest=str(manifest.path))
        if pending:
            if client is None and options.scheduler:
                from distributed import Client

                client = stack.enter_context(Client(options.scheduler, timeout="20s"))
                by_host = remote_threads(client)
            elif client is None:
                n = options.workers or max(1, min(os.cpu_count() or 1, len(pending)))
                client = _start_local_cluster(stack, n, options.retries)
                by_host = {"127.0.0.1": local_threads(n)}
            else:
                by_host = remote_threads(client)
            # A worker joining later on an unseen host gets the most conservative share.
            report.workers = _register_segmenter(client, spec, by_host, min(by_host.values(), default=1))
            _execute(client, pending, spec, manifest, sink, report, options, on_result)
    manifest.write_summary(out_root / SUMMARY_NAME, [s.key for s in studies], spec.target_names, model_version)
    report.summary_csv = str(out_root / SUMMARY_NAME)
    report.seconds = round(time.monotonic() - t0, 3)
    return report


def _execute(client, pending: list[StudyDescriptor], spec: BatchSpec, manifest: Manifest, sink: WorklistSink | None,
             report: BatchReport, options: BatchOptions, on_result) -> None:
    from distributed import as_completed

    model_version = spec.model_version()
    t0 = time.monotonic()
    futures = {}
    for desc in pending:
        fut = client.submit(run_study_on_worker, desc, spec, key=_task_key(desc, model_version, spec.target_names),
                            retries=options.retries, pure=False)
        futures[fut] = desc
    progress = Progress(total=len(pending), enabled=options.progress)
    progress.start()
    for fut in as_completed(list(futures)):
        desc = futures[fut]
        try:
            result = fut.result()
        except Exception as e:  # worker lost too often, or Dask itself failed: the batch goes on
            result = _lost_result(desc, spec, e)
        finally:
            fut.release()
        if result.model_version != model_version:
            result = _lost_result(desc, spec, RuntimeError(f"worker used model {result.model_version}, expected {model_version}"))
        if sink is not None:
            try:
                # Worklist first, manifest second: if this process dies in between, the re-run redoes
                # the study and the worklist upsert finds its finding already there (no duplicate).
                sink.commit(result, label=desc.safe_name)
            except Exception as e:  # the worklist is unreachable or locked: leave the study not done
                log.error("worklist commit failed for %s: %s", desc.safe_name, type(e).__name__)
                result.status, result.reason = FAILED, f"results computed but the worklist commit failed ({type(e).__name__}: {e}); re-run"
                report.results.append(result)
                report.failed += 1
                progress.update(failed=True)
                continue
        manifest.commit(result)
        report.results.append(result)
        report.ok += int(result.status == OK)
        report.failed += int(result.status == FAILED)
        progress.update(failed=result.status == FAILED)
        if on_result is not None:
            on_result(result)
    report.processing_seconds = round(time.monotonic() - t0, 3)
