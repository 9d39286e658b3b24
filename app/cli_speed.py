"""`clinseg export-onnx` (ONNX Runtime graphs from the loaded weights) and `clinseg precompute`
(embed a study's slices to the on-disk cache, current slice first, so the app opens it warm)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_EMBEDDING_DIR_ENV = "CLINSEG_EMBEDDING_DIR"


def default_embedding_dir() -> Path:
    return Path(os.environ.get(DEFAULT_EMBEDDING_DIR_ENV, str(Path.home() / ".cache" / "clinseg" / "embeddings"))).expanduser()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export the model to ONNX Runtime (faster encoder), validated against PyTorch")
    p.add_argument("--backend", default="litemedsam", help="litemedsam (bundled), sam_vit_b|l|h, medsam_vit_b")
    p.add_argument("--checkpoint", default=None, help="checkpoint path for non-bundled backends")
    p.add_argument("--out", default=None, help="export root folder (default: $CLINSEG_ONNX_DIR or ~/.cache/clinseg/onnx)")
    p.add_argument("--force", action="store_true", help="re-export even if a complete export exists")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("precompute", help="embed every slice of a study into the on-disk cache (current slice first)")
    p.add_argument("path")
    p.add_argument("--series", default=None)
    p.add_argument("--window", default=None, help="the window the app will show (embeddings are per window)")
    p.add_argument("--slice", type=int, default=None, help="slice to start from (default: middle)")
    p.add_argument("--cache-dir", default=None, help=f"embedding folder (default: ${DEFAULT_EMBEDDING_DIR_ENV} or ~/.cache/clinseg/embeddings)")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx", "openvino"))
    p.add_argument("--backend", default="litemedsam")
    p.add_argument("--checkpoint", default=None)
    p.set_defaults(func=cmd_precompute)


def cmd_export_onnx(args) -> int:
    from models import onnx_export as ox
    from models.registry import build_segmenter
    from models.runtime import attach_runtime

    seg = build_segmenter(args.backend, checkpoint=args.checkpoint, runtime="torch")
    folder = ox.export_onnx(seg, args.out, force=args.force)
    report = attach_runtime(seg, "onnx", export_root=args.out)  # validates the files just written
    out = {"export_dir": str(folder), "runtime": report.active, "reason": report.reason,
           "encoder_max_abs": report.encoder_max_abs, "decoder_max_abs": report.decoder_max_abs}
    if report.active != "onnx":
        print(json.dumps(out))
        print(f"error: the export does not reproduce PyTorch: {report.reason}", file=sys.stderr)
        return 1
    # what `auto` will use from now on: OpenVINO's encoder on the same graph, when it validates
    fast = attach_runtime(seg, "auto", export_root=args.out)
    out.update(default_runtime=fast.active, default_reason=fast.reason, encoder_precision=fast.precision,
               decoder_runtime=fast.decoder_runtime, decoder_precision=fast.decoder_precision)
    if seg.click_decoder is not None and fast.decoder_runtime == "openvino":  # exported now, not on the first click
        out["click_decoder"] = seg.click_decoder.use_openvino(export_root=args.out)
    print(json.dumps(out))
    return 0


def cmd_precompute(args) -> int:
    from integrations.loaders import load_volume
    from integrations.windowing import WINDOWS
    from integrations.errors import ClinsegInputError
    from models.cache import EmbeddingCache
    from models.precompute import VolumePrecomputer
    from models.registry import build_segmenter

    if args.window is not None and args.window not in WINDOWS:
        raise ClinsegInputError(f"unknown window '{args.window}'; choose one of {', '.join(WINDOWS)}")
    vol = load_volume(args.path, series_uid=args.series)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_embedding_dir()
    # A small memory tier: every embedding goes to disk, the process needs none of them afterwards.
    cache = EmbeddingCache(max_bytes=64 * 1024 * 1024, disk_dir=cache_dir)
    seg = build_segmenter(args.backend, checkpoint=args.checkpoint, cache=cache, runtime=args.runtime)
    print(f"runtime: {seg.runtime_report.active} ({seg.runtime_report.reason})", file=sys.stderr)

    def show(p) -> None:
        print(f"\r{p.done + len(p.failed)}/{p.total} slices ({p.computed} encoded, {p.reused} cached)", end="", file=sys.stderr)

    pre = VolumePrecomputer.for_volume(seg, vol, args.window, args.slice, cache, on_progress=show).start()
    pre.join()
    prog = pre.progress()
    print(file=sys.stderr)
    print(json.dumps({"slices": prog.total, "encoded": prog.computed, "reused": prog.reused, "failed": len(prog.failed),
                      "seconds": prog.elapsed_s, "cache_dir": str(cache_dir), "runtime": seg.runtime_report.active}))
    return 0 if not prog.failed else 2
