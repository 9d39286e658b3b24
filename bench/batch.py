"""Batch throughput: studies per minute with 1 and 2 Dask workers on a generated cohort.

    .venv/bin/python bench/batch.py [--studies 6] [--slices 5]

The same cohort (DICOM series and NIfTI files, 64x64, a bright ellipsoid on 3 slices, target
"foreground") is run three ways, with clean outputs before each:
  serial   one process, one model, a plain loop over `process_study` (the baseline, no Dask);
  dask x1  `run_batch` on a LocalCluster of 1 worker process (torch threads = cores);
  dask x2  `run_batch` on a LocalCluster of 2 worker processes (torch threads = cores // 2).
"processing" is first submit to last commit (what a 300-study night scales with); "end to end"
adds cluster start and model loads. RESULT keys use processing throughput:
studies_per_min_1 studies_per_min_2 scaling (= x2 / x1). Timings on a shared machine are noisy:
the load average before and after is printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=6, help="cohort size (half DICOM, half NIfTI)")
    ap.add_argument("--slices", type=int, default=5, help="slices per study (the object covers 3)")
    ap.add_argument("--keep", action="store_true", help="keep the cohort and outputs (prints where)")
    args = ap.parse_args()

    from integrations.batch.discovery import discover
    from integrations.batch.runner import BatchOptions, local_threads, run_batch
    from integrations.batch.synthetic import make_cohort
    from integrations.batch.targets import FOREGROUND, Localisers, TargetSpec
    from integrations.batch.tasks import OK, BatchSpec, build_batch_segmenter, process_study

    work = Path(tempfile.mkdtemp(prefix="clinseg-bench-batch-"))
    n_dicom = args.studies // 2
    make_cohort(work / "cohort", n_dicom=n_dicom, n_nifti=args.studies - n_dicom, corrupt=False,
                shape=(args.slices, 64, 64))
    studies = discover(work / "cohort")
    cores = os.cpu_count() or 1
    print(f"cohort: {len(studies)} studies of {args.slices}x64x64, target 'foreground'; {cores} cores; load before {_load()}")

    rows = []

    def spec_for(name: str) -> BatchSpec:
        out = work / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        return BatchSpec(targets=(TargetSpec(FOREGROUND, FOREGROUND),), out_dir=str(out), dicom_outputs=())

    # Baseline: the same work in one process, no Dask.
    spec = spec_for("serial")
    t0 = time.monotonic()
    seg = build_batch_segmenter(spec, torch_threads=cores)
    loc = Localisers()
    t1 = time.monotonic()
    ok = sum(process_study(s, spec, seg, loc).status == OK for s in studies)
    t2 = time.monotonic()
    rows.append(("serial", 1, cores, ok, t2 - t0, t2 - t1))

    for n in (1, 2):
        spec = spec_for(f"dask{n}")
        rep = run_batch(work / "cohort", spec, BatchOptions(workers=n, progress=False))
        rows.append((f"dask x{n}", n, local_threads(n), rep.ok, rep.seconds, rep.processing_seconds))
        if rep.failed:
            print(f"  {rep.failed} studies failed: {[r.reason for r in rep.results if r.status != OK][:3]}")

    print(f"\n| mode | workers | torch threads | studies ok | end-to-end s | processing s | studies/min (processing) | studies/min (end to end) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, n, threads, ok, wall, proc in rows:
        print(f"| {mode} | {n} | {threads} | {ok}/{len(studies)} | {wall:.1f} | {proc:.1f} | "
              f"{60 * len(studies) / proc:.2f} | {60 * len(studies) / wall:.2f} |")
    print(f"load after {_load()}")
    spm = {mode: 60 * len(studies) / proc for mode, _, _, _, _, proc in rows}
    spm1, spm2 = spm["dask x1"], spm["dask x2"]
    print(f"serial baseline {spm['serial']:.2f} studies/min; dask x1 / serial = {spm1 / spm['serial']:.2f}")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"RESULT studies_per_min_1={spm1:.3f} studies_per_min_2={spm2:.3f} scaling={spm2 / spm1:.3f} "
          f"studies_per_min_serial={spm['serial']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
