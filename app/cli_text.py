"""`clinseg segment-text PATH --query "left hippocampus" --out OUT`: segment structures named in words."""
from __future__ import annotations

import argparse
import json

from integrations.errors import ClinsegInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment-text", help="segment structures named in a text query (e.g. 'left hippocampus; brain')")
    p.add_argument("path")
    p.add_argument("--query", required=True, help="what to segment, e.g. 'left hippocampus', 'Putamen_R', 'brain'")
    p.add_argument("--slice", type=int, default=None,
                   help="axial slice index (default: where the first target is largest after registration)")
    p.add_argument("--template", default=None,
                   help="template folder (default: $CLINSEG_TEMPLATE_DIR, /usr/share/mricron/templates, or the bundled demo slab)")
    p.add_argument("--exemplars", default=None, help="exemplar library folder (accepted segmentations) to search too")
    p.add_argument("--vocabulary", action="append", default=None, help="extra vocabulary JSON file (repeatable)")
    p.add_argument("--no-embedding", action="store_true", help="exact/synonym/spelling matching only (no MiniLM)")
    p.add_argument("--window", default=None, help="intensity window: brain, soft_tissue, lung, bone, liver, auto, full")
    p.add_argument("--series", default=None)
    p.add_argument("--out", required=True, help="output: .nii.gz/.nii/.nrrd (input geometry), .png or .npy; "
                   "several targets are written as labels 1, 2, ... in query order")
    p.set_defaults(func=cmd_segment_text)


def cmd_segment_text(args) -> int:
    import numpy as np

    from integrations.errors import NothingFoundError
    from app.pipeline import SliceSession
    from integrations.loaders import load_volume
    from integrations.mask_io import write_mask
    from integrations.windowing import WINDOWS
    from models.registry import build_segmenter
    from models.zoom import refine_with_zoom
    from prompting.exemplars import ExemplarLibrary
    from prompting.query import QueryParser
    from prompting.template_localiser import TemplateLocaliser, load_template
    from prompting.text_prompt import TextPrompter, segment_text
    from prompting.vocabulary import load_vocabulary

    if args.window is not None and args.window not in WINDOWS:
        raise ClinsegInputError(f"unknown window '{args.window}'; choose one of {', '.join(WINDOWS)}")
    encoder = None
    if not args.no_embedding:
        from models.text_encoder import load_text_encoder

        encoder = load_text_encoder()
    parser = QueryParser(load_vocabulary(extra=args.vocabulary), encoder=encoder)
    query = parser.parse(args.query)
    if not query.found:
        raise NothingFoundError(f"the query names no known structure ({query.explain()}); "
                                "try an anatomical name such as 'left hippocampus' or 'brain', or extend the vocabulary")
    vol = load_volume(args.path, series_uid=args.series)
    segmenter = build_segmenter("litemedsam")
    prompter = TextPrompter(parser, TemplateLocaliser(load_template(args.template)),
                            ExemplarLibrary(args.exemplars) if args.exemplars else None, embedder=segmenter)
    z = args.slice if args.slice is not None else prompter.best_slice(args.query, vol)
    session = SliceSession.open(vol, z, args.window)
    result = prompter.prompts_for_slice(args.query, vol, session.slice_index, session.image01)
    if not result.found:
        raise NothingFoundError(f"nothing to segment on slice {session.slice_index}: {result.explanation}")
    segs = segment_text(segmenter, result, session.image01)
    # one-shot path: small targets also try a zoomed re-encode, kept when the decoder rates it better
    segs = [refine_with_zoom(segmenter, session.image01, p, s) for p, s in zip(result.prompts, segs)]
    labels = np.zeros(segs[0].mask.shape, np.uint8)
    for i, seg in enumerate(segs, start=1):
        labels[seg.mask & (labels == 0)] = i
    out = write_mask(args.out, vol, labels if len(segs) > 1 else segs[0].mask, slice_index=session.slice_index)
    print(json.dumps({
        "out": str(out), "slice": session.slice_index,
        "targets": [{"label": i, "name": s.label, "area_px": s.area_px, "predicted_iou": round(s.predicted_iou, 4),
                     "box": [round(v, 1) for v in (p.box.x0, p.box.y0, p.box.x1, p.box.y1)],
                     "confidence": round(p.box.confidence, 3), "explanation": p.notes[0]}
                    for i, (s, p) in enumerate(zip(segs, result.prompts), start=1)],
        "not_localised": result.failures,
    }))
    if all(s.is_empty for s in segs):
        raise NothingFoundError(f"the masks are empty on slice {session.slice_index} (file written)")
    return 0
