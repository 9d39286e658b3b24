"""`clinseg info` and `clinseg segment`."""
from __future__ import annotations

import argparse
import json

from integrations.errors import ClinsegInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a study (geometry, modality; no patient data)")
    p.add_argument("path")
    p.add_argument("--series", help="SeriesInstanceUID when a folder holds several series")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("segment", help="segment one slice from a box prompt")
    p.add_argument("path")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), required=True,
                   help="box in slice pixels (column, row), inclusive corners")
    p.add_argument("--slice", type=int, default=None, help="axial slice index (default: middle)")
    p.add_argument("--window", default=None, help="intensity window: brain, soft_tissue, lung, bone, liver, auto, full")
    p.add_argument("--backend", default="litemedsam", help="litemedsam (bundled), sam_vit_b|l|h, medsam_vit_b")
    p.add_argument("--checkpoint", default=None, help="checkpoint path for non-bundled backends")
    p.add_argument("--series", default=None)
    p.add_argument("--out", required=True, help="output: .nii.gz/.nii/.nrrd (input geometry), .png or .npy")
    p.add_argument("--no-zoom", action="store_true", help="decode on the whole slice only (no zoomed re-encode for small boxes)")
    p.set_defaults(func=cmd_segment)


def cmd_info(args) -> int:
    from integrations.loaders import load_volume

    vol = load_volume(args.path, series_uid=args.series)
    info = vol.describe()
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def cmd_segment(args) -> int:
    from integrations.errors import NothingFoundError
    from app.pipeline import SliceSession, segment_best
    from models.zoom import ZoomPolicy
    from integrations.loaders import load_volume
    from integrations.mask_io import write_mask
    from integrations.windowing import WINDOWS
    from models.registry import build_segmenter
    from prompting.promptset import PromptSet

    if args.window is not None and args.window not in WINDOWS:
        raise ClinsegInputError(f"unknown window '{args.window}'; choose one of {', '.join(WINDOWS)}")
    vol = load_volume(args.path, series_uid=args.series)
    session = SliceSession.open(vol, args.slice, args.window)
    segmenter = build_segmenter(args.backend, checkpoint=args.checkpoint)
    seg = segment_best(segmenter, session, PromptSet.from_box(*args.box), zoom=None if args.no_zoom else ZoomPolicy())
    out = write_mask(args.out, vol, seg.mask, slice_index=session.slice_index)
    area_mm2 = seg.area_px * vol.pixel_area_mm2
    print(json.dumps({"out": str(out), "slice": session.slice_index, "area_px": seg.area_px,
                      "area_mm2": round(area_mm2, 2), "predicted_iou": round(seg.predicted_iou, 4),
                      "zoomed": seg.zoom is not None}))
    if seg.is_empty:
        why = f" ({seg.flags[-1]})" if seg.flags else ""
        raise NothingFoundError(f"the mask is empty: nothing was segmented in box {args.box} on slice {session.slice_index}{why} (file written)")
    return 0
