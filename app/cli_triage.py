"""`clinseg triage add|list|assign|accept|audit|export` and `clinseg rt-compare`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from integrations.errors import ClinsegInputError



def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("triage", help="the triage worklist (SQLite file or a SQLAlchemy URL)")
    t.add_argument("--db", default=None, help="worklist file or database URL (default $CLINSEG_WORKLIST or ~/.clinseg/worklist.db)")
    ts = t.add_subparsers(dest="triage_command", metavar="ACTION")
    ts.required = True

    p = ts.add_parser("add", help="add a study (or update its metadata), optionally with findings")
    p.add_argument("study_uid", help="StudyInstanceUID")
    p.add_argument("--label", default="", help="accession number or pseudonym (no patient names)")
    p.add_argument("--modality", default="")
    p.add_argument("--description", default="")
    p.add_argument("--urgency", default="routine", help="routine, soon, urgent, emergency")
    p.add_argument("--history", default="", help="clinical history / referral text")
    p.add_argument("--finding", action="append", default=[], metavar="TARGET:VOLUME_ML:SIZE_MM:UNCERTAINTY",
                   help="a segmentation finding (repeatable); re-adding the same target and model version updates it")
    p.add_argument("--model-version", default="manual")
    p.add_argument("--actor", default=os.environ.get("USER", "cli"))
    p.set_defaults(func=cmd_add)

    p = ts.add_parser("list", help="list studies, highest priority first")
    _filters(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--formula", action="store_true", help="print the priority formula first")
    p.set_defaults(func=cmd_list)

    p = ts.add_parser("assign", help="assign a study to a user")
    p.add_argument("study_uid")
    p.add_argument("user")
    p.add_argument("--actor", default=os.environ.get("USER", "cli"))
    p.set_defaults(func=cmd_assign)

    p = ts.add_parser("accept", help="accept a study's findings (all, or one structure)")
    p.add_argument("study_uid")
    p.add_argument("--structure", default=None)
    p.add_argument("--actor", default=os.environ.get("USER", "cli"))
    p.set_defaults(func=cmd_accept)

    p = ts.add_parser("audit", help="who did what and when")
    p.add_argument("study_uid", nargs="?", default=None)
    p.set_defaults(func=cmd_audit)

    p = ts.add_parser("export", help="write the worklist as CSV or JSON")
    p.add_argument("out", help="output file (.csv or .json)")
    p.add_argument("--format", choices=("csv", "json"), default=None)
    _filters(p)
    p.set_defaults(func=cmd_export)

    r = sub.add_parser("rt-compare", help="compare two RTSTRUCTs on their image series; write a review report")
    r.add_argument("rtss_a", help="reference RTSTRUCT (e.g. clinical)")
    r.add_argument("rtss_b", help="RTSTRUCT to compare (e.g. auto-generated or second observer)")
    r.add_argument("--series", required=True, help="folder (or file) of the CT/MR series both refer to")
    r.add_argument("--out", required=True, help="folder for structures.csv, slices.csv, report.html")
    r.add_argument("--tolerance", type=float, default=2.0, help="surface Dice / APL tolerance in mm (default 2)")
    r.add_argument("--min-dice", type=float, default=0.8)
    r.add_argument("--max-hd95", type=float, default=5.0, help="mm")
    r.add_argument("--max-msd", type=float, default=2.0, help="mm")
    r.add_argument("--min-surface-dice", type=float, default=0.8)
    r.add_argument("--max-volume-diff", type=float, default=10.0, help="percent")
    r.add_argument("--map", action="append", default=[], metavar="NAME_A=NAME_B", help="pair differently named ROIs")
    r.add_argument("--window", default=None)
    r.add_argument("--json", action="store_true", help="print the structure table as JSON")
    r.set_defaults(func=cmd_rt_compare)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", action="append", default=None, help="new, auto-processed, 'needs review', reviewed")
    p.add_argument("--assigned", default=None, help="only studies assigned to this user")
    p.add_argument("--urgency", default=None)
    p.add_argument("--text", default="", help="search label, description and history")
    p.add_argument("--sort", default="priority", help="priority, updated, created, urgency, status, study_uid")
    p.add_argument("--asc", action="store_true", help="ascending order")
    p.add_argument("--limit", type=int, default=None)


def _store(args):
    from integrations.triage import TriageStore

    return TriageStore(args.db)  # None: $CLINSEG_WORKLIST or ~/.clinseg/worklist.db


def _filter_kwargs(args) -> dict:
    return dict(status=args.status, assigned_to=args.assigned, urgency=args.urgency, text=args.text,
                sort=args.sort, descending=not args.asc, limit=args.limit)


def _parse_finding(text: str) -> tuple[str, float, float, float]:
    parts = text.rsplit(":", 3)
    if len(parts) != 4:
        raise ClinsegInputError(f"--finding {text!r} must be TARGET:VOLUME_ML:SIZE_MM:UNCERTAINTY, e.g. tumour:12.5:31:0.2")
    try:
        return parts[0], float(parts[1]), float(parts[2]), float(parts[3])
    except ValueError as e:
        raise ClinsegInputError(f"--finding {text!r}: volume, size and uncertainty must be numbers") from e


def cmd_add(args) -> int:
    findings = [_parse_finding(f) for f in args.finding]  # check all before writing anything
    st = _store(args)
    st.add_study(args.study_uid, label=args.label, modality=args.modality, description=args.description,
                 urgency=args.urgency, history=args.history, actor=args.actor)
    for target, vol_ml, size, unc in findings:
        st.upsert_finding(args.study_uid, target, args.model_version, volume_ml=vol_ml, size_mm=size,
                          uncertainty=unc, actor=args.actor)
    s = st.get(args.study_uid)
    print(json.dumps({"study_uid": s.study_uid, "status": s.status, "priority": s.priority,
                      "why": s.priority_explained}))
    return 0


def cmd_list(args) -> int:
    from dataclasses import asdict

    from integrations.triage import PRIORITY_FORMULA

    studies = _store(args).list_studies(**_filter_kwargs(args))
    if args.json:
        print(json.dumps([asdict(s) for s in studies], indent=1))
        return 0
    if args.formula:
        print(PRIORITY_FORMULA)
    print(f"{'priority':>8}  {'status':<14} {'urgency':<9} {'assigned':<10} {'label':<14} study / why")
    for s in studies:
        print(f"{s.priority:8.1f}  {s.status:<14} {s.urgency:<9} {s.assigned_to or '-':<10} {s.label or '-':<14} "
              f"{s.study_uid}\n{'':10}{s.priority_explained}")
    return 0


def cmd_assign(args) -> int:
    s = _store(args).assign(args.study_uid, args.user, actor=args.actor)
    print(json.dumps({"study_uid": s.study_uid, "assigned_to": s.assigned_to}))
    return 0


def cmd_accept(args) -> int:
    s = _store(args).accept(args.study_uid, actor=args.actor, structure=args.structure)
    print(json.dumps({"study_uid": s.study_uid, "status": s.status}))
    return 0


def cmd_audit(args) -> int:
    for a in _store(args).audit(args.study_uid):
        print(f"{a.at}  {a.actor:<12} {a.action:<15} {a.study_uid}  {json.dumps(a.detail, sort_keys=True)}")
    return 0


def cmd_export(args) -> int:
    n = _store(args).export(args.out, fmt=args.format, **_filter_kwargs(args))
    print(json.dumps({"out": args.out, "studies": n}))
    return 0


def cmd_rt_compare(args) -> int:
    from integrations.contour_review import ReviewThresholds, compare_contour_sets
    from integrations.loaders import load_volume
    from integrations.review_report import write_review_report
    from integrations.rtstruct import read_rtstruct

    name_map = {}
    for m in args.map:
        if "=" not in m:
            raise ClinsegInputError(f"--map {m!r} must be NAME_A=NAME_B")
        a, b = m.split("=", 1)
        name_map[a.strip()] = b.strip()
    vol = load_volume(args.series)
    ra = read_rtstruct(args.rtss_a, vol)
    rb = read_rtstruct(args.rtss_b, vol)
    for label, rs in (("A", ra), ("B", rb)):
        miss = rs.missing_by_roi()
        if miss:
            print(f"warning: RTSTRUCT {label}: contours on slices missing from the series: "
                  + ", ".join(f"{k} {v}" for k, v in miss.items()), file=sys.stderr)
        for w in rs.warnings:
            print(f"warning: RTSTRUCT {label}: {w}", file=sys.stderr)
    th = ReviewThresholds(min_dice=args.min_dice, max_hd95_mm=args.max_hd95, max_msd_mm=args.max_msd,
                          min_surface_dice=args.min_surface_dice, max_volume_diff_pct=args.max_volume_diff,
                          tolerance_mm=args.tolerance)
    cmp_ = compare_contour_sets(ra.masks, rb.masks, vol.spacing, th, name_map=name_map, reference_label="A",
                                test_label="B")
    files = write_review_report(args.out, vol, cmp_, ra.masks, rb.masks, study_label=os.path.basename(
        os.path.normpath(args.series)), window=args.window, name_map=name_map)
    rows = cmp_.table()
    if args.json:
        from integrations.contour_review import finite

        print(json.dumps([{k: (finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]))
    else:
        print(f"{'structure':<20} {'Dice':>6} {'HD95mm':>7} {'MSDmm':>6} {'sDice':>6} {'APLmm':>7} {'dV%':>7}  flags")
        for r in rows:
            print(f"{r['structure'][:20]:<20} {r['dice']:6.3f} {r['hd95_mm']:7.2f} {r['msd_mm']:6.2f} "
                  f"{r['surface_dice']:6.3f} {r['apl_mm']:7.1f} {r['volume_diff_pct']:7.1f}  {r['flags']}")
        print(f"report: {files.html}")
    return 0
