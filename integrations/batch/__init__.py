"""Batch segmentation over a folder of studies, on one machine or a Dask cluster.

`discover` finds studies, `process_study` runs one, `run_batch` runs them all (resumable, exactly
once, failures isolated); `clinseg batch` is the command line for it.
"""
from .discovery import StudyDescriptor, discover
from .runner import BatchOptions, BatchReport, run_batch
from .tasks import BatchSpec, StudyResult, TargetResult, process_study

__all__ = ["BatchOptions", "BatchReport", "BatchSpec", "StudyDescriptor", "StudyResult", "TargetResult",
           "discover", "process_study", "run_batch"]
