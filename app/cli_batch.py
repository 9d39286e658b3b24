"""`clinseg batch`: segment every study under a folder, on this machine or a Dask cluster.

    clinseg batch /data/yesterday --query "brain; left hippocampus" --out /data/clinseg-out \
        --workers 2 --worklist /data/worklist.db

Exit codes: 0 every study done (or already done), 2 at least one study failed (see summary.csv;
the batch still processed all the others) or bad options, 3 model weights unusable.
"""
from __future__ import annotations

import argparse
import json
import sys

DEFAULT_OUT = "clinseg-batch"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="segment a folder of studies (DICOM series, NIfTI) locally or on a Dask cluster")
    p.add_argument("input", help="folder tree of DICOM series and/or NIfTI files (or one NIfTI file)")
    p.add_argument("--query", required=True, help='targets separated by ";", e.g. "brain; left hippocampus" or "foreground"')
    p.add_argument("--template", default=None, help="template for anatomical targets: demo, colin27 or a folder (default: colin27 if installed, else demo)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder: masks, manifest.sqlite, summary.csv (default ./{DEFAULT_OUT})")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    where.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--worklist", default=None, help="triage worklist to publish findings to (SQLite file or SQLAlchemy URL)")
    p.add_argument("--only-new", action="store_true", help="with --worklist: only studies the worklist still has as 'new'")
    p.add_argument("--retry-failed", action="store_true", help="redo studies that failed in an earlier run")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a study after its worker died (default 2)")
    p.add_argument("--dicom-out", default="seg", choices=("seg", "rtstruct", "both", "none"),
                   help="for DICOM input, also write DICOM-SEG and/or RTSTRUCT (default seg)")
    p.add_argument("--backend", default="litemedsam", help="litemedsam (bundled), sam_vit_b|l|h, medsam_vit_b")
    p.add_argument("--checkpoint", default=None, help="checkpoint path for non-bundled backends")
    p.add_argument("--window", default=None, help="intensity window: brain, soft_tissue, lung, bone, liver, auto, full")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_batch)


def _dicom_outputs(choice: str) -> tuple[str, ...]:
    return {"seg": ("seg",), "rtstruct": ("rtstruct",), "both": ("seg", "rtstruct"), "none": ()}[choice]


def cmd_batch(args) -> int:
    from integrations.batch.runner import BatchOptions, run_batch
    from integrations.batch.targets import resolve_query, template_folder
    from integrations.batch.tasks import BatchSpec
    from integrations.errors import ClinsegInputError
    from integrations.windowing import WINDOWS

    if args.window is not None and args.window not in WINDOWS:
        raise ClinsegInputError(f"unknown window '{args.window}'; choose one of {', '.join(WINDOWS)}")
    if args.retries < 0:
        raise ClinsegInputError("--retries must be 0 or more")
    targets = resolve_query(args.query)
    template_folder(args.template)  # a wrong --template fails now, not on every study
    spec = BatchSpec(targets=targets, out_dir=args.out, backend=args.backend, checkpoint=args.checkpoint,
                     template=args.template, window=args.window, dicom_outputs=_dicom_outputs(args.dicom_out))
    spec.model_version()  # unknown backend -> exit 3 before anything starts
    options = BatchOptions(workers=args.workers, scheduler=args.scheduler, retries=args.retries,
                           retry_failed=args.retry_failed, progress=not args.no_progress,
                           worklist=args.worklist, only_new=args.only_new)
    report = run_batch(args.input, spec, options)
    summary = {
        "studies": report.discovered, "already_done": report.skipped, "processed": report.submitted,
        "ok": report.ok, "failed": report.failed, "workers": report.workers, "seconds": report.seconds,
        "studies_per_min": round(report.studies_per_min, 2), "targets": [t.name for t in targets],
        "summary_csv": report.summary_csv, "manifest": report.manifest,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{report.discovered} studies: {report.skipped} already done, {report.submitted} processed "
              f"({report.ok} ok, {report.failed} failed) in {report.seconds:.1f} s on {report.workers} worker(s)")
        for r in report.results:
            if r.status == "failed":
                print(f"  failed {r.key}: {r.reason}")
        print(f"summary: {report.summary_csv}")
    if report.failed:
        print(f"error: {report.failed} study(ies) failed; see {report.summary_csv}", file=sys.stderr)
        return 2
    return 0
