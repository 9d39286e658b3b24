"""`clinseg segment-3d` (slice propagation through a volume) and `clinseg train-adapter`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from integrations.errors import ClinsegInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment-3d", help="segment a structure through a volume from a box on one slice (or a text query)")
    p.add_argument("path", help="DICOM folder/file, NIfTI, NRRD/MHA")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box on --slice, in that view's slice pixels (column, row), inclusive corners")
    p.add_argument("--slice", type=int, default=None, help="slice index of --box in --view (default: middle)")
    p.add_argument("--anchor", nargs=5, type=float, action="append", default=[], metavar=("Z", "X0", "Y0", "X1", "Y1"),
                   help="another box on slice Z that re-anchors the propagation there (repeatable)")
    p.add_argument("--query", default=None, help='a structure by name ("left putamen"): localised in 3-D by template registration')
    p.add_argument("--view", default="axial", choices=("axial", "coronal", "sagittal"))
    p.add_argument("--window", default=None, help="intensity window: brain, soft_tissue, lung, bone, liver, auto, full")
    p.add_argument("--backend", default="litemedsam")
    p.add_argument("--checkpoint", default=None, help="checkpoint path for non-bundled backends")
    p.add_argument("--series", default=None)
    p.add_argument("--cache-dir", default=os.environ.get("CLINSEG_CACHE_DIR"),
                   help="folder for the on-disk embedding cache (a second run on the same study skips the encoder)")
    p.add_argument("--stop-rule", default="learned", choices=("learned", "hand"),
                   help="where the structure ends: the learned stop model (default) or the hand rules alone (docs/volume.md)")
    p.add_argument("--no-cross-view", action="store_true",
                   help="keep the propagated slices as they are: no check in the two other views (faster: no extra encodes)")
    p.add_argument("--boxes-only", action="store_true",
                   help="decode each next slice from its box alone, without the propagation decoder that also reads the "
                        "previous slice's mask (docs/volume.md: faster, less accurate)")
    p.add_argument("--out", required=True, help="output mask: .nii.gz/.nii/.nrrd (input geometry) or .npy")
    p.set_defaults(func=cmd_segment_3d)

    p = sub.add_parser("train-adapter", help="train the multi-sequence MRI adapter on a BraTS-style folder")
    p.add_argument("data_dir", help="one folder per case: one NIfTI per sequence (t1, t1ce, t2, flair, ...) + seg.nii.gz")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="adapter.pt", help="checkpoint of the best epoch (the last state goes to OUT.last)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.last")
    p.add_argument("--sequences", default=None, help="comma-separated sequences to fuse (default: those all cases share)")
    p.add_argument("--primary", default=None, help="the sequence that attends to the others (default: the last one)")
    p.add_argument("--labels", default=None, help="comma-separated label values that make the target (default: all > 0)")
    p.add_argument("--slices-per-case", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: DATA_DIR/.clinseg-embeddings)")
    p.add_argument("--backend", default="litemedsam")
    p.add_argument("--checkpoint", default=None)
    p.set_defaults(func=cmd_train_adapter)


def _segmenter(args):
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter

    cache = EmbeddingCache(disk_dir=args.cache_dir) if args.cache_dir else None
    return build_segmenter(args.backend, checkpoint=args.checkpoint, cache=cache)


def _progress(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


def cmd_segment_3d(args) -> int:
    from integrations.errors import NothingFoundError
    from integrations.loaders import load_volume
    from integrations.mask_io import write_mask
    from integrations.windowing import WINDOWS
    from models.cross_view import CrossViewConfig
    from models.propagation import PropagationConfig, propagate
    from models.volume_views import reslice
    from prompting.promptset import PromptSet

    if args.window is not None and args.window not in WINDOWS:
        raise ClinsegInputError(f"unknown window '{args.window}'; choose one of {', '.join(WINDOWS)}")
    if args.box is None and args.query is None:
        raise ClinsegInputError("give a --box (with --slice) or a --query naming the structure.")
    if not str(args.out).lower().endswith((".nii.gz", ".nii", ".nrrd", ".npy")):
        raise ClinsegInputError(f"{args.out}: a 3-D mask goes to .nii.gz, .nii, .nrrd or .npy")
    vol = load_volume(args.path, series_uid=args.series)
    if vol.is_color:
        raise ClinsegInputError("segment-3d works on grey-level volumes (CT, MR); this one has colour channels.")
    seeds = {}
    notes = []
    label = ""
    if args.query is not None:
        seeds, label, notes = query_seeds(vol, args.query, args.view)
    if args.box is not None:
        view = reslice(vol, args.view)
        z = view.volume.num_slices // 2 if args.slice is None else args.slice
        seeds[int(z)] = PromptSet.from_box(*args.box)
    for z, *box in args.anchor:
        seeds[int(z)] = PromptSet.from_box(*box)
    segmenter = _segmenter(args)
    verbose = bool(getattr(args, "verbose", False))
    res = propagate(segmenter, vol, seeds, view=args.view, window=args.window, label=label,
                    config=PropagationConfig(stop_rule=args.stop_rule, cross_view=None if args.no_cross_view else CrossViewConfig(),
                                             prior=not args.boxes_only),
                    progress=_progress if verbose else None)
    out = write_mask(args.out, vol, res.mask)
    summary = res.summary()
    summary["notes"] = notes + summary["notes"]
    summary["out"] = str(out)
    print(json.dumps(summary))
    if res.is_empty:
        raise NothingFoundError("the 3-D mask is empty: nothing was segmented from the prompt(s) given (file written)")
    return 0


def localise_query(volume, query: str, localiser=None, min_confidence_fraction: float = 0.3):
    """({axial slice: Box}, label, notes): a named structure's per-slice boxes, MedLSAM-style, from the
    labelled template registered to `volume` (prompting/template_localiser.py, the text issue's).

    Slices whose box confidence is below `min_confidence_fraction` of the best slice's (slivers at
    the structure's ends, where the registration is least reliable) are left to propagation."""
    from integrations.errors import NothingFoundError
    from prompting.query import QueryParser
    from prompting.template_localiser import TemplateLocaliser

    parsed = QueryParser().parse(query)
    if not parsed.found:
        raise NothingFoundError(f"'{query}' names no structure clinseg knows ({parsed.explain()})")
    target = parsed.targets[0]
    notes = [parsed.explain()]
    if len(parsed.targets) > 1:
        notes.append(f"segment-3d segments one structure: used '{target.display}', ignored the others")
    loc = (localiser or TemplateLocaliser()).localise_volume(volume, target.labels)
    notes += list(loc.notes)
    if not loc.boxes:
        return {}, target.display, notes
    best = max(loc.slice_confidence.values())
    boxes = {z: b for z, b in loc.boxes.items() if loc.slice_confidence[z] >= min_confidence_fraction * best}
    notes.append(f"template localisation: boxes on {len(boxes)} axial slices ({min(boxes)}..{max(boxes)}), "
                 f"registration confidence {loc.confidence:.2f}")
    return boxes, target.display, notes


def query_seeds(volume, query: str, view: str):
    """Per-slice boxes of a named structure as propagation anchors: every localised slice anchors,
    and propagation continues past the ends while the image says the structure goes on."""
    from integrations.errors import NothingFoundError
    from prompting.promptset import PromptSet

    if view != "axial":
        raise ClinsegInputError("--query localises on axial slices; use --view axial.")
    boxes, label, notes = localise_query(volume, query)
    if not boxes:
        raise NothingFoundError(f"'{query}' was not found in this volume ({'; '.join(notes)})")
    return {z: PromptSet(box=b, label=label) for z, b in boxes.items()}, label, notes


def cmd_train_adapter(args) -> int:
    from models.adapter_training import TrainConfig, train_adapter

    seqs = tuple(s.strip().lower() for s in args.sequences.split(",")) if args.sequences else None
    try:
        labels = tuple(int(v) for v in args.labels.split(",")) if args.labels else None
    except ValueError:
        raise ClinsegInputError(f"--labels takes comma-separated integers, got {args.labels!r}") from None
    if args.epochs < 1:
        raise ClinsegInputError("--epochs must be at least 1")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, slices_per_case=args.slices_per_case, labels=labels,
                         primary=args.primary.lower() if args.primary else None, sequences=seqs)
    segmenter = _segmenter(args)
    res = train_adapter(segmenter, args.data_dir, args.out, config, resume=args.resume, cache_dir=args.cache_dir,
                        log_fn=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"checkpoint": str(res.checkpoint), "sequences": list(res.sequences), "primary": res.primary,
                      "epochs": len(res.history), "best_val_dice": round(res.best_dice, 4),
                      "primary_alone_val_dice": round(res.baseline_dice, 4), "history": res.history}))
    return 0
