"""Publish batch results to the triage worklist (`integrations.triage.TriageStore`).

Each study is put on the worklist (or found there), each segmented target becomes a finding keyed
by (study, target, model version), so a re-run or a retried task updates, never duplicates. A study
that failed, or where a requested structure was not found, goes to "needs review" with the reason
in the audit trail, unless a person already reviewed it (the batch never undoes a human decision).
Study identity: the StudyInstanceUID for DICOM (a finding's target carries the series, since a
study can have several), the content key "nifti:<hash>" for NIfTI. The label is the pseudonymous
output folder name, never a file name (which may hold a patient's name).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .discovery import StudyDescriptor
from .tasks import FAILED, NOT_FOUND, OK, StudyResult

ACTOR = "clinseg-batch"


def worklist_study_uid(key: str, study_uid: str, series_uid: str) -> str:
    if study_uid:
        return study_uid
    if series_uid:
        return f"series:{series_uid}"[:64]
    return key[:64]


def finding_target(target: str, series_uid: str) -> str:
    return f"{target}|{series_uid}" if series_uid else target


@dataclass
class WorklistSink:
    path_or_url: str

    def __post_init__(self) -> None:
        from integrations.triage import TriageStore

        self.store = TriageStore(os.fspath(self.path_or_url))

    def close(self) -> None:
        self.store.close()

    def uid_for(self, desc: StudyDescriptor) -> str:
        return worklist_study_uid(desc.key, desc.study_uid or "", desc.series_uid or "")

    def status_of(self, desc: StudyDescriptor) -> str | None:
        """The study's worklist status, None when it is not on the worklist."""
        from integrations.triage import TriageError

        try:
            return self.store.get(self.uid_for(desc)).status
        except TriageError:
            return None

    def commit(self, result: StudyResult, label: str) -> None:
        uid = worklist_study_uid(result.key, result.study_uid, result.series_uid)
        self.store.add_study(uid, label=label, modality=result.modality, actor=ACTOR)
        for t in result.targets:
            if t.status == OK:
                self.store.upsert_finding(uid, finding_target(t.target, result.series_uid), result.model_version,
                                          structure=t.target, volume_ml=t.volume_ml, size_mm=t.size_mm,
                                          uncertainty=t.uncertainty, actor=ACTOR)
        problems = [f"{t.target}: {t.reason}" for t in result.targets if t.status in (FAILED, NOT_FOUND)]
        if result.status == FAILED and result.reason and not any(result.reason in p for p in problems):
            problems.insert(0, result.reason)
        if problems and self.store.get(uid).status in ("new", "auto-processed"):
            self.store.set_status(uid, "needs review", actor=ACTOR, note=("batch: " + "; ".join(problems))[:2000])
