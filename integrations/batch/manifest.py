"""The batch's record of results, in the output folder: one row per study + target + model version.

It is what makes a batch resumable and its commits exactly-once: the runner (the one writer)
upserts each result under its primary key, and a re-run skips every study whose rows say done.
`commits` counts how many times a row was written, so "exactly once" can be checked, not assumed.
SQLite in WAL mode: readers (a dashboard, `clinseg batch` run again to see progress) never block it.
"""
from __future__ import annotations

import csv
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .tasks import FAILED, NOT_FOUND, OK, StudyResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    study_key TEXT NOT NULL,
    target TEXT NOT NULL,
    model_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    relpath TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    mask_path TEXT NOT NULL DEFAULT '',
    extra_outputs TEXT NOT NULL DEFAULT '',
    volume_ml REAL NOT NULL DEFAULT 0,
    size_mm REAL NOT NULL DEFAULT 0,
    uncertainty REAL NOT NULL DEFAULT 1,
    voxels INTEGER NOT NULL DEFAULT 0,
    slices INTEGER NOT NULL DEFAULT 0,
    mean_iou REAL NOT NULL DEFAULT 0,
    localiser TEXT NOT NULL DEFAULT '',
    study_seconds REAL NOT NULL DEFAULT 0,
    worker TEXT NOT NULL DEFAULT '',
    committed_at TEXT NOT NULL,
    commits INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (study_key, target, model_version)
)
"""

SUMMARY_COLUMNS = ("study_key", "kind", "relpath", "target", "status", "reason", "mask_path", "extra_outputs",
                   "volume_ml", "size_mm", "voxels", "slices", "mean_iou", "uncertainty", "localiser", "study_seconds", "model_version", "committed_at")


@dataclass(frozen=True)
class Row:
    study_key: str
    target: str
    model_version: str
    status: str
    reason: str
    mask_path: str
    commits: int


class Manifest:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def commit(self, result: StudyResult) -> None:
        """Upsert every target row of one study in one transaction (all or nothing)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows = [
            (result.key, t.target, result.model_version, result.kind, result.relpath, t.status, t.reason, t.mask_path,
             ";".join(t.extra_outputs), t.volume_ml, t.size_mm, t.uncertainty, t.voxels, t.slices, t.mean_iou,
             t.localiser, result.seconds,
             result.worker, now)
            for t in result.targets
        ]
        with closing(self._connect()) as con, con:
            con.executemany(
                """INSERT INTO results (study_key, target, model_version, kind, relpath, status, reason, mask_path,
                       extra_outputs, volume_ml, size_mm, uncertainty, voxels, slices, mean_iou, localiser,
                       study_seconds, worker, committed_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (study_key, target, model_version) DO UPDATE SET
                       kind=excluded.kind, relpath=excluded.relpath, status=excluded.status, reason=excluded.reason,
                       mask_path=excluded.mask_path, extra_outputs=excluded.extra_outputs, volume_ml=excluded.volume_ml,
                       size_mm=excluded.size_mm, uncertainty=excluded.uncertainty,
                       voxels=excluded.voxels, slices=excluded.slices, mean_iou=excluded.mean_iou,
                       localiser=excluded.localiser, study_seconds=excluded.study_seconds, worker=excluded.worker,
                       committed_at=excluded.committed_at, commits=results.commits + 1""",
                rows,
            )

    def rows(self, study_keys: Iterable[str] | None = None, model_version: str | None = None) -> list[Row]:
        sql = "SELECT study_key, target, model_version, status, reason, mask_path, commits FROM results"
        with closing(self._connect()) as con:
            out = [Row(**dict(r)) for r in con.execute(sql)]
        keys = set(study_keys) if study_keys is not None else None
        return [r for r in out if (keys is None or r.study_key in keys) and (model_version is None or r.model_version == model_version)]

    def done_keys(self, targets: Iterable[str], model_version: str, out_root: str | os.PathLike,
                  retry_failed: bool = False) -> set[str]:
        """Studies with a finished row for every target. A finished 'ok' row whose mask file is gone
        is not done (someone cleaned the outputs): it is redone rather than reported as present."""
        targets = set(targets)
        out_root = Path(out_root)
        by_study: dict[str, set[str]] = {}
        for r in self.rows(model_version=model_version):
            if r.target not in targets:
                continue
            finished = (r.status == NOT_FOUND or (r.status == OK and (out_root / r.mask_path).is_file())
                        or (r.status == FAILED and not retry_failed))
            if finished:
                by_study.setdefault(r.study_key, set()).add(r.target)
        return {k for k, ts in by_study.items() if ts >= targets}

    def write_summary(self, path: str | os.PathLike, study_keys: Iterable[str], targets: Iterable[str], model_version: str) -> Path:
        """The summary CSV: one row per study + target of this batch (done now or in an earlier run)."""
        keys, targets = set(study_keys), set(targets)
        with closing(self._connect()) as con:
            rows = [dict(r) for r in con.execute(
                f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM results WHERE model_version = ? ORDER BY study_key, target",
                (model_version,))]
        path = Path(path)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            w.writeheader()
            for r in rows:
                if r["study_key"] in keys and r["target"] in targets:
                    w.writerow(r)
        os.replace(tmp, path)
        return path
