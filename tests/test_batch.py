"""Batch segmentation: discovery, the per-study task, and Dask runs on a generated cohort.

The cluster tests use real LocalClusters (worker processes on 127.0.0.1, the real LiteMedSAM in
each), a real SQLite manifest and the real triage worklist. Studies are 64x64 with the object on 3
slices, so a study costs ~3 encoder passes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from integrations.batch.discovery import discover
from integrations.batch.manifest import Manifest
from integrations.batch.runner import MANIFEST_NAME, BatchOptions, run_batch
from integrations.batch.synthetic import make_cohort
from integrations.batch.targets import (FOREGROUND, TEMPLATE, ForegroundLocaliser, Localisers, TargetSpec,
                                        UnknownTargetError, resolve_query)
from integrations.batch.tasks import FAILED, OK, BatchSpec, process_study
from integrations.errors import InvalidPromptError
from integrations.loaders import load_volume
from integrations.metrics import dice

# The kill plugin below is defined here; workers unpickle it by value, not by importing this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FG = (TargetSpec(FOREGROUND, FOREGROUND),)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    studies = make_cohort(root, n_dicom=2, n_nifti=2, corrupt=True)
    return root, studies


def _rows(out: Path) -> list[dict]:
    con = sqlite3.connect(out / MANIFEST_NAME)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM results")]
    finally:
        con.close()


def _by_source(cohort_studies, out: Path) -> dict[str, dict]:
    """manifest rows keyed by the synthetic study's name (matched through discovery)."""
    descs = {}
    for s in discover(Path(cohort_studies[0].path).parents[1]):
        descs[s.key] = s
    rows = {}
    for r in _rows(out):
        path = descs[r["study_key"]].path
        name = next(st.name for st in cohort_studies if Path(st.path) == Path(path))
        rows[name] = r
    return rows


# ------------------------------------------------------------------------------------ cheap units
def test_discovery_keys_are_stable_and_content_based(cohort, tmp_path):
    root, studies = cohort
    first = discover(root)
    assert [s.key for s in first] == [s.key for s in discover(root)]
    assert sorted(s.kind for s in first) == ["dicom"] * 3 + ["nifti"] * 3
    for s in first:
        if s.kind == "dicom":
            assert s.key == f"dicom:{s.study_uid}/{s.series_uid}" and s.n_files in (4, 5)
        else:
            assert s.key.startswith("nifti:") and len(s.key) == len("nifti:") + 32
        assert root.name not in s.safe_name and "/" not in s.safe_name
    # A copy under another name is the same study (content key), so it is not segmented twice.
    nifti = next(st for st in studies if st.kind == "nifti" and not st.corrupt)
    shutil.copytree(root, tmp_path / "copy")
    shutil.copy(nifti.path, tmp_path / "copy" / "nifti" / "renamed_copy.nii.gz")
    assert [s.key for s in discover(tmp_path / "copy")] == [s.key for s in first]


def test_resolve_query_targets_and_errors():
    specs = resolve_query("foreground; left hippocampus;  Left Hippocampus ; caudate")
    assert [(s.name, s.kind) for s in specs] == [
        ("foreground", FOREGROUND), ("Hippocampus_L", TEMPLATE), ("Caudate_L", TEMPLATE), ("Caudate_R", TEMPLATE)]
    assert specs[1].labels == ("Hippocampus_L",)
    with pytest.raises(UnknownTargetError, match="xyzzy"):
        resolve_query("brain; xyzzy")
    with pytest.raises(UnknownTargetError, match="template does not contain"):
        resolve_query("liver")
    with pytest.raises(InvalidPromptError):
        resolve_query(" ; ")


def test_foreground_localiser_boxes_the_largest_object():
    from integrations.batch.synthetic import ellipsoid_volume
    from integrations.volume import Volume

    vox, truth = ellipsoid_volume(seed=5)
    loc = ForegroundLocaliser().localise(Volume(vox), FG[0])
    assert sorted(loc.boxes) == sorted(np.nonzero(truth.reshape(truth.shape[0], -1).sum(1) >= 4)[0].tolist())
    for z, b in loc.boxes.items():
        ys, xs = np.nonzero(truth[z])
        assert b.x0 <= xs.min() and b.x1 >= xs.max() and b.y0 <= ys.min() and b.y1 >= ys.max()
        assert b.x0 >= xs.min() - 3 and b.x1 <= xs.max() + 3  # tight, not the dim decoy blob at (8, 8)


def test_text_query_template_study_in_process(segmenter, tmp_path):
    """'left hippocampus' -> parser -> template registration -> per-slice boxes -> LiteMedSAM -> NIfTI."""
    from prompting.template_localiser import DEMO

    t1 = load_volume(DEMO / "colin27_demo.nii.gz")
    aal = load_volume(DEMO / "colin27_demo_aal.nii.gz")
    idx = list(range(10, 22, 2))  # 6 slices 2 mm apart: a thick-slice study, 6 encoder passes
    study = dataclasses.replace(t1, voxels=t1.voxels[idx].copy(), spacing=(1.0, 1.0, 2.0),
                                origin=tuple(t1.index_to_lps([0, 0, 10])[0]))
    import SimpleITK as sitk

    path = tmp_path / "in" / "brain_slab.nii.gz"
    path.parent.mkdir()
    img = sitk.GetImageFromArray(study.voxels.astype(np.int16))
    img.SetSpacing(study.spacing)
    img.SetOrigin(study.origin)
    img.SetDirection(tuple(study.direction.reshape(-1)))
    sitk.WriteImage(img, str(path), True)
    desc = discover(path)[0]
    spec = BatchSpec(targets=resolve_query("left hippocampus"), out_dir=str(tmp_path / "out"), template="demo")
    result = process_study(desc, spec, segmenter, Localisers("demo"))
    assert result.status == OK, result.reason
    (tr,) = result.targets
    assert tr.target == "Hippocampus_L" and tr.localiser.startswith("template") and 0 <= tr.uncertainty <= 1
    mask = load_volume(tmp_path / "out" / tr.mask_path)
    assert mask.shape == study.shape and np.allclose(mask.spacing, study.spacing) and np.allclose(mask.origin, study.origin, atol=1e-3)
    left, right = np.rint(aal.voxels[idx]) == 37, np.rint(aal.voxels[idx]) == 38
    d_left, d_right = dice(mask.voxels > 0, left), dice(mask.voxels > 0, right)
    assert d_left > 0.3 and d_left > 3 * d_right, (d_left, d_right)


# ------------------------------------------------------------------------------------ the cluster
def test_cli_batch_on_local_cluster_then_rerun_does_nothing(cohort, tmp_path, capsys):
    from app.cli import main
    from integrations.triage import TriageStore

    root, studies = cohort
    out, wl = tmp_path / "out", tmp_path / "worklist.db"
    argv = ["batch", str(root), "--query", "foreground", "--out", str(out), "--workers", "2",
            "--worklist", str(wl), "--json", "--no-progress"]
    rc = main(argv)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 2  # two corrupt studies failed; every other study was still processed
    assert report["studies"] == 6 and report["processed"] == 6 and report["ok"] == 4 and report["failed"] == 2
    assert report["workers"] == 2

    rows = _by_source(studies, out)
    assert len(_rows(out)) == 6 and all(r["commits"] == 1 for r in rows.values())
    for st in studies:
        r = rows[st.name]
        if st.corrupt:
            assert r["status"] == FAILED
            assert ("truncated" in r["reason"] or "cut short" in r["reason"]) if st.kind == "nifti" else "missing" in r["reason"]
            continue
        assert r["status"] == OK, r["reason"]
        src = load_volume(st.path)
        mask = load_volume(out / r["mask_path"])
        assert mask.shape == src.shape
        assert np.allclose(mask.spacing, src.spacing, atol=1e-4) and np.allclose(mask.origin, src.origin, atol=1e-3)
        assert np.allclose(mask.direction, src.direction, atol=1e-6)
        assert dice(mask.voxels > 0, st.truth) > 0.8
        if st.kind == "dicom":  # DICOM input also gets a DICOM-SEG referencing the series
            from integrations.dicom_seg import read_seg

            seg = read_seg(out / r["extra_outputs"], src)
            assert np.array_equal(seg.masks["foreground"], mask.voxels > 0)

    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 7 and summary[0].startswith("study_key,")
    store = TriageStore(wl)
    try:
        listed = {s.label: s for s in store.list_studies()}
        assert len(listed) == 6
        assert sorted(s.status for s in listed.values()).count("needs review") >= 2
        with_findings = [s for s in listed.values() if s.findings]
        assert len(with_findings) == 4 and all(len(s.findings) == 1 for s in with_findings)
        audit_notes = " ".join(json.dumps(a.detail) for a in store.audit())
        assert "missing" in audit_notes and ("cut short" in audit_notes or "truncated" in audit_notes)
    finally:
        store.close()

    # Re-run: nothing new. No cluster is even started; rows, commits and files are untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    rc = main(argv)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["processed"] == 0 and report["already_done"] == 6 and report["workers"] == 0
    assert rc == 0
    assert all(r["commits"] == 1 for r in _rows(out)) and len(_rows(out)) == 6
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == mtimes
    # --retry-failed would redo the two corrupt studies, but --only-new leaves alone what the
    # worklist has already moved past "new" (both are "needs review" now).
    rc = main(argv + ["--retry-failed", "--only-new"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and report["processed"] == 0 and report["already_done"] == 6


class KillOnce(WorkerPlugin):
    """SIGKILLs the worker running the first study task, once per test (the flag file is atomic)."""

    name = "test-kill-once"

    def __init__(self, flag: str, delay_s: float):
        self.flag, self.delay_s = flag, delay_s

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("clinseg-study-"):
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        # Mid-task: the study is loading/encoding when the process dies, as in an OOM kill.
        threading.Timer(self.delay_s, os.kill, (os.getpid(), signal.SIGKILL)).start()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_worker_killed_mid_batch_every_study_once(tmp_path):
    from distributed import Client, LocalCluster

    root = tmp_path / "cohort"
    studies = make_cohort(root, n_dicom=1, n_nifti=2, corrupt=False, shape=(4, 64, 64))  # the object on 2 slices
    out, flag = tmp_path / "out", tmp_path / "killed.flag"
    spec = BatchSpec(targets=FG, out_dir=str(out), dicom_outputs=())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(KillOnce(str(flag), delay_s=1.0))
        report = run_batch(root, spec, BatchOptions(scheduler=cluster.scheduler_address, progress=False))
        assert all(w["host"] == "127.0.0.1" for w in client.scheduler_info()["workers"].values())
        # One model per worker (built by the plugin), torch threads so that workers x threads <= cores.
        threads = client.run(_torch_threads)
        assert list(threads.values()) == [max(1, (os.cpu_count() or 1) // 2)] * 2
    assert flag.exists(), "the kill plugin never fired"
    killed_pid = int(flag.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)
    assert report.submitted == 3 and report.ok == 3 and report.failed == 0, [r.reason for r in report.results]
    rows = _rows(out)
    assert len(rows) == 3 and len({(r["study_key"], r["target"], r["model_version"]) for r in rows}) == 3
    assert all(r["status"] == OK and r["commits"] == 1 for r in rows)
    assert not any(str(r["worker"]).endswith(f":{killed_pid}") for r in rows)
    for st in studies:
        assert dice(load_volume(out / _by_source(studies, out)[st.name]["mask_path"]).voxels > 0, st.truth) > 0.8
    assert not list(out.rglob(".tmp-*"))
    # Manifest reads agree with what the runner reported.
    assert Manifest(out / MANIFEST_NAME).done_keys(["foreground"], spec.model_version(), out) == {s.key for s in discover(root)}


def test_worklist_commits_are_idempotent_and_flag_failures(tmp_path):
    from integrations.batch.tasks import NOT_FOUND, StudyResult, TargetResult
    from integrations.batch.worklist import WorklistSink
    from integrations.triage import TriageStore

    sink = WorklistSink(str(tmp_path / "wl.db"))
    ok = StudyResult("dicom:1.2.3/1.2.3.4", "dicom", "a", "litemedsam:v", OK, study_uid="1.2.3", series_uid="1.2.3.4",
                     modality="MR", targets=[TargetResult("brain", OK, volume_ml=1200.0, size_mm=150.0, uncertainty=0.1)])
    for _ in range(2):  # a retried or re-run commit updates, never duplicates
        sink.commit(ok, label="dicom-abc")
    half = StudyResult("nifti:ff", "nifti", "b", "litemedsam:v", OK,
                       targets=[TargetResult("brain", OK, volume_ml=900.0, size_mm=120.0, uncertainty=0.05),
                                TargetResult("Hippocampus_L", NOT_FOUND, reason="not inside this image")])
    sink.commit(half, label="nifti-ff")
    bad = StudyResult("nifti:ee", "nifti", "c", "litemedsam:v", FAILED, reason="x.nii.gz: truncated",
                      targets=[TargetResult("brain", FAILED, reason="x.nii.gz: truncated")])
    sink.commit(bad, label="nifti-ee")
    sink.close()
    store = TriageStore(tmp_path / "wl.db")
    try:
        a, b, c = store.get("1.2.3"), store.get("nifti:ff"), store.get("nifti:ee")
        assert a.status == "auto-processed" and len(a.findings) == 1 and a.findings[0].target == "brain|1.2.3.4"
        assert a.findings[0].volume_ml == 1200.0 and a.label == "dicom-abc"
        assert b.status == "needs review" and [f.target for f in b.findings] == ["brain"]
        assert c.status == "needs review" and not c.findings
        notes = [e.detail.get("note", "") for e in store.audit("nifti:ee") if e.action == "status"]
        assert notes and "truncated" in notes[0]
        # A study a person reviewed is never sent back to review by a later batch run.
        store.set_status("nifti:ee", "reviewed", actor="dr_a")
        WorklistSink(str(tmp_path / "wl.db")).commit(bad, label="nifti-ee")
        assert store.get("nifti:ee").status == "reviewed"
    finally:
        store.close()
