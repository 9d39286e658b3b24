"""Long work off the script thread: embedding a volume, 3-D propagation, registration.

A `Job` runs a function in a daemon thread and exposes its progress; the page polls it from a
`st.fragment(run_every=...)`, so the screen stays responsive and shows a progress bar. Jobs never
touch Streamlit or the session state: their result is applied by the script thread when it sees
them finished (`Job.take_result`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("clinseg.app")

# progress(done, total, message)
Progress = Callable[[int, int, str], None]


@dataclass
class Job:
    name: str
    kind: str  # what to do with the result: "embed", "propagate"
    payload: dict = field(default_factory=dict)  # what the script thread needs to apply the result
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = None
    error: BaseException | None = None
    finished: bool = False
    applied: bool = False
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, done: int, total: int, message: str = "") -> None:
        with self._lock:
            self.done, self.total, self.message = int(done), int(total), message

    @property
    def fraction(self) -> float:
        with self._lock:
            return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)

    @property
    def running(self) -> bool:
        return not self.finished

    def take_result(self) -> Any:
        """The result, once: later calls return None (a result is applied to the state only once)."""
        if not self.finished or self.applied:
            return None
        self.applied = True
        return self.result


def start_job(name: str, kind: str, fn: Callable[[Job], Any], payload: dict | None = None) -> Job:
    job = Job(name=name, kind=kind, payload=dict(payload or {}))

    def run() -> None:
        try:
            job.result = fn(job)
        except BaseException as e:  # noqa: BLE001 - reported to the user by the page
            job.error = e
            log.warning("background job %s failed: %s", name, type(e).__name__)
        finally:
            job.finished = True

    threading.Thread(target=run, name=f"clinseg-{kind}", daemon=True).start()
    return job


def embed_volume(segmenter, images: Callable[[int], Any], num_slices: int, focus: int, job: Job) -> int:
    """Encode every slice into the segmenter's cache with models.precompute's worker (the slice on
    screen first, then outward; slices already cached on disk are reused)."""
    from models.precompute import VolumePrecomputer

    worker = VolumePrecomputer(segmenter, images, num_slices, focus=focus).start()
    while not worker.join(0.25):
        p = worker.progress()
        job.progress(p.done, p.total, f"slice {p.current} ({p.reused} reused)" if p.current is not None else "")
        if job.cancel.is_set():
            worker.cancel()
    p = worker.progress()
    job.progress(p.done, p.total, "cancelled" if p.cancelled else "done")
    if p.failed:
        raise RuntimeError(f"{len(p.failed)} slice(s) could not be encoded: {next(iter(p.failed.values()))}")
    return p.done
