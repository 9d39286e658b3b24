"""Inference runtimes for a SAM-family segmenter: PyTorch eager (the reference), ONNX Runtime, or
OpenVINO (the same exported graphs).

ONNX Runtime runs the LiteMedSAM encoder ~2x faster than PyTorch eager on a laptop CPU with the
same outputs (max abs diff ~1e-6); OpenVINO ~5x in bf16 where the CPU has it natively, and its
fp32 decoder ~1.3x faster than ONNX Runtime's (bf16: ~2x, opt-in). An export is used only after it
has been validated against PyTorch for the weights actually loaded; otherwise the next runtime
down is used and `segmenter.runtime_report` says why (the app and `clinseg` show it), never
silently.

Every runtime takes prompts in segment_anything's PromptEncoder form (points=(coords, labels),
boxes (B, 4), masks (B, 1, 256, 256), all in the model frame) and returns the logits and IoU of
ALL mask tokens, so token selection stays in SamSegmenter and is shared.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

from . import onnx_export as ox

log = logging.getLogger("clinseg.runtime")

RUNTIMES = ("auto", "torch", "onnx", "openvino")
RUNTIME_NAMES = {"torch": "PyTorch", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}
# fp32 ONNX vs PyTorch differ by ~3e-6 on the embedding (|values| < 1) and ~1e-4 on logits; the
# tolerances leave room for other CPUs' kernels yet catch a wrong graph (a perturbed export is ~1e-1).
ENCODER_TOL = 1e-3
DECODER_TOL = 1e-2
# A bf16 encoder (OpenVinoRuntime on CPUs with native bf16) cannot meet ENCODER_TOL (max abs ~0.03);
# it is checked by what its embedding does. Measured on the probe: cosine 0.992 and box-mask IoU
# 0.93 (0.998 on a real Colin27 slice; dev-set Dice within 0.003 of fp32, bench/latency.py); a
# wrong or perturbed graph falls far below both.
REDUCED_MIN_COSINE = 0.98
REDUCED_MIN_MASK_IOU = 0.85
# A bf16 decoder (OpenVinoRuntime) on the fp32 probe embedding: every mask token's probe mask IoU
# 0.992-0.998 with PyTorch's, predicted IoU within 0.003 (measured); a perturbed graph falls far below.
REDUCED_DECODER_MIN_MASK_IOU = 0.97
REDUCED_DECODER_MAX_IOU_DIFF = 0.02
# decoder_prep outputs kept (OnnxRuntime.prepared), ~10 MB each: the last 4 slices decoded, each
# possibly twice (the fp32 decoder's and the bf16 screening twin's, after a click on that slice)
PREP_CACHE_SIZE = 8
DECODE_CHUNK = 16  # prompts per decoder call (OnnxRuntime.decode_all)


class OnnxValidationError(RuntimeError):
    """The ONNX export cannot be used for these weights (missing, corrupt or not equal to PyTorch)."""


@dataclass
class RuntimeReport:
    requested: str  # auto | torch | onnx | openvino
    active: str  # torch | onnx | openvino (of the encoder)
    reason: str  # one line a clinician-facing UI can show
    export_dir: str | None = None
    encoder_max_abs: float | None = None
    decoder_max_abs: float | None = None
    load_s: float = 0.0
    precision: str = "f32"  # of the encoder: f32, or bf16 (OpenVINO on a CPU with native bf16)
    decoder_runtime: str = "torch"  # torch | onnx | openvino: OpenVINO's encoder may run with ONNX Runtime's decoders
    decoder_precision: str = "f32"
    screening: str = ""  # bf16: a click's box proposals are ranked by a bf16 twin of the decoder

    @property
    def fell_back(self) -> bool:
        return self.requested not in ("auto", "torch") and self.active != self.requested

    def as_dict(self) -> dict:
        return asdict(self)


class TorchRuntime:
    """PyTorch eager: the reference the ONNX graphs are validated against."""

    name = "torch"
    encoder_tag = ""

    def __init__(self, sam: Sam):
        self.sam = sam

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor, run_options=None) -> torch.Tensor:
        return self.sam.image_encoder(batch)

    def new_run_options(self):
        return None  # PyTorch cannot stop a forward pass midway: the slice in flight finishes

    @torch.inference_mode()
    def decode_all(self, features: torch.Tensor, points, boxes, masks, screening: bool = False):
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.sam.mask_decoder.predict_masks(
            image_embeddings=features, image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # intra-op = the cores we were given; inter-op parallelism only oversubscribes a laptop CPU.
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class OnnxRuntime:
    """ONNX Runtime sessions for the encoder and the prompt encoder + mask decoder graphs."""

    name = "onnx"

    def __init__(self, folder: Path, sam: Sam, threads: int | None = None, load_encoder: bool = True,
                 load_decoders: bool = True):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = ox.ExportManifest.read(self.folder)
        so = session_options(threads)
        m = self.manifest
        self.encoder = self.decoder = self.decoder_prep = self.decoder_nomask = None  # None: another runtime runs it
        try:
            def session(name):
                return ort.InferenceSession(str(self.folder / name), so, providers=["CPUExecutionProvider"])

            if load_encoder:
                self.encoder = session(m.encoder)
            if load_decoders:
                self.decoder = session(m.decoder)  # prompts with a previous mask
                self.decoder_prep = session(m.decoder_prep)  # image-only part, once per embedding
                self.decoder_nomask = session(m.decoder_nomask)  # every other prompt
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise OnnxValidationError(f"ONNX graph in {self.folder} does not load ({type(e).__name__}: {str(e)[:200]})") from e
        self.fallback = TorchRuntime(sam)  # for the one prompt layout the graph cannot express
        self.mask_side = tuple(sam.prompt_encoder.mask_input_size)
        # decoder_prep outputs of the last few embeddings decoded (~10 MB each): the user decodes
        # many prompts on one slice, then moves on; a lock because precompute runs in a thread.
        self._prep: OrderedDict[int, tuple] = OrderedDict()
        self._prep_lock = threading.Lock()

    # A faster, less exact decoder for prompts that are only compared, never shown (a click's box
    # proposals): OpenVinoRuntime's bf16 graphs; none here.
    can_screen = False
    screen_check = ""

    # The three decoder graphs; OpenVinoRuntime runs the same graphs on OpenVINO.
    def _run_prep(self, x: np.ndarray, screening: bool = False) -> list[np.ndarray]:
        return self.decoder_prep.run(None, {"image_embeddings": x})

    def _run_nomask(self, prep: dict, prompts: dict, screening: bool = False) -> list[np.ndarray]:
        """prep: the slice's decoder_prep outputs by name (the same dict object for every prompt on
        that slice); prompts: point_coords, point_labels."""
        return self.decoder_nomask.run(None, {**prep, **prompts})

    def _run_mask(self, feeds: dict) -> list[np.ndarray]:
        return self.decoder.run(None, feeds)

    def prepared(self, features: torch.Tensor, screening: bool = False) -> dict[str, np.ndarray]:
        """decoder_prep outputs by name for this embedding, computed on its first prompt and then reused.
        Keyed by the tensor object (checked through a weak reference, so a freed tensor whose id
        is recycled never hits), not by content: an embedding is never modified in place."""
        k = (id(features), screening)
        with self._prep_lock:
            hit = self._prep.get(k)
            if hit is not None and hit[0]() is features:
                self._prep.move_to_end(k)
                return hit[1]
        x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
        outs = {name: np.ascontiguousarray(o, dtype=np.float32) for name, o in zip(ox.PREP_OUTPUTS, self._run_prep(x, screening))}
        with self._prep_lock:
            self._prep[k] = (weakref.ref(features), outs)
            while len(self._prep) > PREP_CACHE_SIZE:
                self._prep.popitem(last=False)
        return outs

    # Embeddings are computed in fp32: the cache key needs no precision tag (see OpenVinoRuntime).
    encoder_tag = ""
    encoder_check = ""  # validate_onnx's finding on a reduced-precision encoder, for the report
    decoder_check = ""  # the same for a reduced-precision decoder
    decoder_precision = "f32"

    def new_run_options(self):
        """A token `encode` honours: setting `.terminate` abandons the slice in flight."""
        import onnxruntime as ort

        return ort.RunOptions()

    def encode(self, batch: torch.Tensor, run_options=None) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        # The graph is exported for one slice: a batch runs slice by slice (no gain from batching
        # on 2 threads, measured in bench/latency.py).
        outs = [self.encoder.run(None, {"image": x[i : i + 1]}, run_options)[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])

    def decode_all(self, features: torch.Tensor, points, boxes, masks, screening: bool = False):
        """screening: the prompts' masks are only compared with each other (a click's proposals), so
        the screening decoder may run them when the runtime has one (prompts without a mask input)."""
        screening = screening and self.can_screen and masks is None
        if points is None and boxes is None:
            return self.fallback.decode_all(features, points, boxes, masks)
        b = int(boxes.shape[0]) if boxes is not None else int(points[0].shape[0])
        parts_c, parts_l = [], []
        if points is not None:
            parts_c.append(points[0].numpy().astype(np.float32))
            parts_l.append(points[1].numpy().astype(np.float32))
        if boxes is not None:  # corners after the clicks, labels 2 / 3: PromptEncoder's own order
            parts_c.append(boxes.numpy().astype(np.float32).reshape(b, 2, 2))
            parts_l.append(np.tile(np.array([[2.0, 3.0]], np.float32), (b, 1)))
        else:  # PromptEncoder pads click-only prompts with one "not a point"
            parts_c.append(np.zeros((b, 1, 2), np.float32))
            parts_l.append(-np.ones((b, 1), np.float32))
        coords = np.ascontiguousarray(np.concatenate(parts_c, axis=1))
        labels = np.ascontiguousarray(np.concatenate(parts_l, axis=1))
        # Batches run DECODE_CHUNK prompts at a time: every prompt carries its own copies of the
        # image tokens (4 MB) and upscaled features (8 MB) through the graph, so an unbounded batch
        # (a click's ~60 proposals) would hold ~1 GB; per-prompt time is flat beyond ~8 prompts.
        chunks = range(0, b, DECODE_CHUNK)
        if masks is None:
            prep = self.prepared(features, screening)
            outs = [self._run_nomask(prep, {"point_coords": coords[i : i + DECODE_CHUNK],
                                            "point_labels": labels[i : i + DECODE_CHUNK]}, screening) for i in chunks]
        else:
            emb = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
            mask_in = np.ascontiguousarray(masks.numpy(), dtype=np.float32)
            outs = [self._run_mask({"image_embeddings": emb, "point_coords": coords[i : i + DECODE_CHUNK],
                                    "point_labels": labels[i : i + DECODE_CHUNK],
                                    "mask_input": mask_in[i : i + DECODE_CHUNK]}) for i in chunks]
        if len(outs) == 1:
            return torch.from_numpy(outs[0][0]), torch.from_numpy(outs[0][1])
        return (torch.from_numpy(np.concatenate([o[0] for o in outs])),
                torch.from_numpy(np.concatenate([o[1] for o in outs])))


class OpenVinoRuntime(OnnxRuntime):
    """The export's graphs compiled by OpenVINO: the encoder in `precision` (auto: bf16 where the
    CPU has it natively), the decoders in `decoder_precision` (auto: "mixed", the two-way layers
    fp32 and the rest bf16, where the CPU has native bf16, else f32; all-bf16 is opt-in: it moved
    the brain set's Dice by 0.0055, over the 0.005 allowed; models/openvino_runtime.py).
    decoders="onnx": the decoders on ONNX Runtime fp32 instead (what attach_runtime falls back
    to when OpenVINO's decoders fail validation)."""

    name = "openvino"

    def __init__(self, folder: Path, sam: Sam, threads: int | None = None, precision: str = "auto",
                 decoders: str = "openvino", decoder_precision: str = "auto"):
        from . import openvino_runtime as ovr

        if decoders not in ("openvino", "onnx"):
            raise ValueError(f"decoders must be 'openvino' or 'onnx', not {decoders!r}")
        super().__init__(folder, sam, threads, load_encoder=False, load_decoders=decoders == "onnx")
        self.precision = ovr.resolve_precision(precision)
        self.decoder_runtime = decoders
        self.decoder_precision = ovr.resolve_decoder_precision(decoder_precision) if decoders == "openvino" else "f32"
        self.box_shapes = {k: tuple(v) for k, v in ovr.BOX_PROMPT.items()}  # the layout self.ov_box is compiled for
        # bf16 embeddings differ from fp32 ones (cosine ~0.999): their cache entries must not mix
        self.encoder_tag = "" if self.precision == "f32" else self.precision
        n = int(threads or torch.get_num_threads())
        m = self.manifest
        path = self.folder / m.encoder
        try:
            self.ov_encoder = ovr.OpenVinoEncoder(path, n, self.precision)
            if decoders == "openvino":
                # mixed: decoder_prep and the refinement decoder (a previous mask) stay fp32
                mixed = self.decoder_precision == "mixed"
                whole = "f32" if mixed else self.decoder_precision
                graphs = []
                for name in (m.decoder_prep, m.decoder) if mixed else (m.decoder_prep, m.decoder_nomask, m.decoder):
                    path = self.folder / name
                    graphs.append(ovr.OpenVinoGraph(path, n, whole, fuse_snippets=False))
                if mixed:
                    path = self.folder / m.decoder_output
                    self.ov_prep, self.ov_mask = graphs
                    self.ov_nomask = ovr.MixedPrecisionDecoder(self.folder / m.decoder_layers, path, n)
                    self.ov_box = ovr.MixedPrecisionDecoder(self.folder / m.decoder_layers, path, n, shapes=ovr.BOX_PROMPT)
                else:
                    self.ov_prep, self.ov_nomask, self.ov_mask = graphs
                    path = self.folder / m.decoder_nomask
                    self.ov_box = ovr.OpenVinoGraph(path, n, whole, fuse_snippets=False, shapes=ovr.BOX_PROMPT)
        except Exception as e:  # OpenVINO raises its own RuntimeError subclasses for unreadable graphs
            raise OnnxValidationError(f"OpenVINO cannot compile {path} ({type(e).__name__}: {str(e)[:200]})") from e
        # fp32 / mixed decoders on a bf16 CPU: all-bf16 twins of the prompt graphs rank a click's
        # ~60 box proposals ~1.7x faster; the chosen box is then decoded by the main decoder
        # (validate_onnx checks the twins)
        self.screen_prep = self.screen_nomask = None
        if decoders == "openvino" and self.decoder_precision in ("f32", "mixed") and ovr.native_bf16():
            try:
                self.screen_prep, self.screen_nomask = (
                    ovr.OpenVinoGraph(self.folder / name, n, "bf16", fuse_snippets=False)
                    for name in (m.decoder_prep, m.decoder_nomask))
            except Exception as e:  # the fp32 decoders compiled: proposals are decoded by them instead
                self.disable_screening(f"bf16 screening decoder does not compile ({type(e).__name__}: {str(e)[:120]})")
        self.can_screen = self.screen_nomask is not None

    def disable_screening(self, why: str) -> None:
        self.screen_prep = self.screen_nomask = None
        self.can_screen = False
        self.screen_check = why
        log.warning("runtime: %s", why)

    @property
    def description(self) -> str:
        prec = "mixed: fp32 layers, bf16 output" if self.decoder_precision == "mixed" else self.decoder_precision
        dec = f"OpenVINO decoder ({prec})" if self.decoder_runtime == "openvino" else "ONNX Runtime decoder"
        return f"OpenVINO encoder ({self.precision}) + {dec}"

    def new_run_options(self):
        from .openvino_runtime import CancelToken

        return CancelToken()

    def encode(self, batch: torch.Tensor, run_options=None) -> torch.Tensor:
        from .openvino_runtime import encode_batch

        return encode_batch(self.ov_encoder, batch, run_options)

    def _run_prep(self, x: np.ndarray, screening: bool = False) -> list[np.ndarray]:
        if self.decoder_runtime == "onnx":
            return super()._run_prep(x)
        return (self.screen_prep if screening else self.ov_prep).run({"image_embeddings": x})

    def _run_nomask(self, prep: dict, prompts: dict, screening: bool = False) -> list[np.ndarray]:
        if self.decoder_runtime == "onnx":
            return super()._run_nomask(prep, prompts)
        if screening:
            return self.screen_nomask.run({**prep, **prompts})
        box_layout = all(prompts[k].shape == v for k, v in self.box_shapes.items())
        return (self.ov_box if box_layout else self.ov_nomask).run({**prep, **prompts})

    def _run_mask(self, feeds: dict) -> list[np.ndarray]:
        if self.decoder_runtime == "onnx":
            return super()._run_mask(feeds)
        return self.ov_mask.run(feeds)


def _max_diff(a, b) -> float:
    return float(max(np.abs(x.numpy() - y.numpy()).max() for x, y in zip(a, b)))


def probe_decode_inputs(segmenter):
    """(points, boxes, masks) of the probe's box prompt, in the model frame."""
    t = segmenter.transform_for((segmenter.preprocessing.input_size,) * 2)
    boxes = torch.from_numpy(t.box_to_model(np.array(ox.PROBE_BOX, np.float32)))
    return None, boxes, None


def validate_onnx(rt: OnnxRuntime, segmenter) -> tuple[float, float]:
    """Max abs differences (encoder, decoder) of the ONNX graphs vs PyTorch for the LOADED weights.

    Encoder: vs PyTorch's embedding of the probe stored at export time, after checking that the
    export was made from exactly these weights (fingerprint); re-running the PyTorch encoder here
    would add ~1.4 s to every start. Decoder: vs the live PyTorch decoder (milliseconds)."""
    m = rt.manifest
    fp = ox.weights_fingerprint(segmenter.sam)
    if m.fingerprint != fp:
        raise OnnxValidationError(f"export was made from other weights (fingerprint {m.fingerprint[:12]} != {fp[:12]})")
    if m.backend != segmenter.version:
        raise OnnxValidationError(f"export is for {m.backend}, segmenter is {segmenter.version}")
    ref = np.load(rt.folder / ox.PROBE_FILE)
    x = segmenter.model_input(ox.probe_image(segmenter.preprocessing.input_size))
    emb = rt.encode(x)
    if tuple(emb.shape) != tuple(ref["embedding"].shape):
        raise OnnxValidationError(f"encoder output shape {tuple(emb.shape)} != PyTorch {ref['embedding'].shape}")
    enc_diff = float(np.abs(emb.numpy() - ref["embedding"]).max())
    points, boxes, _ = probe_decode_inputs(segmenter)
    torch_rt = TorchRuntime(segmenter.sam)
    if getattr(rt, "encoder_tag", ""):
        cos, iou = _check_reduced_precision(emb, ref, torch_rt, points, boxes)
        rt.encoder_check = f"{rt.encoder_tag} encoder: embedding cosine {cos:.4f}, probe mask IoU {iou:.3f}"
    elif not np.isfinite(enc_diff) or enc_diff > ENCODER_TOL:
        raise OnnxValidationError(f"encoder differs from PyTorch by {enc_diff:.3g} (> {ENCODER_TOL:g})")
    features = torch.from_numpy(ref["embedding"])
    want = torch_rt.decode_all(features, points, boxes, None)
    # the prep + no-mask graphs, for one box (OpenVINO: the copy compiled for that layout) and for a
    # batch (the dynamic graph); then the full graph, with a previous mask (PyTorch's probe logits)
    mask = want[0][:, :1].contiguous()
    pair = boxes.repeat(2, 1)
    pairs = [(rt.decode_all(features, points, boxes, None), want),
             (rt.decode_all(features, points, pair, None), tuple(w.repeat(2, *[1] * (w.dim() - 1)) for w in want)),
             (rt.decode_all(features, points, boxes, mask), torch_rt.decode_all(features, points, boxes, mask))]
    dec_diff = max(_max_diff(got, w) for got, w in pairs)
    if getattr(rt, "decoder_precision", "f32") != "f32":
        iou = min(_check_reduced_decoder(got, w) for got, w in pairs)
        rt.decoder_check = f"{rt.decoder_precision} decoder: probe mask IoU {iou:.3f}"
    elif not np.isfinite(dec_diff) or dec_diff > DECODER_TOL:
        raise OnnxValidationError(f"decoder differs from PyTorch by {dec_diff:.3g} (> {DECODER_TOL:g})")
    if rt.can_screen:  # optional: a failing screening decoder only costs speed
        try:
            iou = _check_reduced_decoder(rt.decode_all(features, points, boxes, None, screening=True), want)
        except OnnxValidationError as e:
            rt.disable_screening(f"bf16 screening decoder not used: {e}")
        else:
            rt.screen_check = f"click proposals ranked by a bf16 decoder (probe mask IoU {iou:.3f})"
    return enc_diff, dec_diff


def _check_reduced_decoder(got, want) -> float:
    """A bf16 decoder moves logits by ~0.3 (of |logits| up to ~30), so it cannot meet DECODER_TOL;
    what must hold is every mask token's mask and the predicted IoU the candidates are ranked by.
    Returns the smallest mask IoU over the tokens."""
    a, b = got[0].numpy() > 0, want[0].numpy() > 0
    inter = (a & b).sum(axis=(-2, -1))
    union = np.maximum((a | b).sum(axis=(-2, -1)), 1)
    iou = float((inter / union).min())
    iou_diff = float(np.abs(got[1].numpy() - want[1].numpy()).max())
    if not np.isfinite(iou_diff) or iou < REDUCED_DECODER_MIN_MASK_IOU:
        raise OnnxValidationError(f"reduced-precision decoder: probe mask IoU {iou:.3f} with PyTorch's (< {REDUCED_DECODER_MIN_MASK_IOU})")
    if iou_diff > REDUCED_DECODER_MAX_IOU_DIFF:
        raise OnnxValidationError(f"reduced-precision decoder: predicted IoU differs from PyTorch's by {iou_diff:.3g} "
                                  f"(> {REDUCED_DECODER_MAX_IOU_DIFF})")
    return iou


def _check_reduced_precision(emb: torch.Tensor, ref, torch_rt: TorchRuntime, points, boxes) -> tuple[float, float]:
    """A bf16 encoder cannot match fp32 to ENCODER_TOL; what must hold is the embedding's direction
    and the probe's mask through the (fp32) decoder. Returns (cosine, mask IoU)."""
    a, b = emb.numpy().ravel().astype(np.float64), ref["embedding"].ravel().astype(np.float64)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    if not np.isfinite(cos) or cos < REDUCED_MIN_COSINE:
        raise OnnxValidationError(f"reduced-precision encoder: embedding cosine {cos:.4f} to PyTorch's (< {REDUCED_MIN_COSINE})")
    got = torch_rt.decode_all(emb, points, boxes, None)[0][:, 0].numpy() > 0
    want = ref["logits"][:, 0] > 0
    iou = float((got & want).sum() / max((got | want).sum(), 1))
    if iou < REDUCED_MIN_MASK_IOU:
        raise OnnxValidationError(f"reduced-precision encoder: probe mask IoU {iou:.3f} with PyTorch's (< {REDUCED_MIN_MASK_IOU})")
    return cos, iou


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def attach_runtime(segmenter, requested: str = "auto", export_root=None, threads: int | None = None,
                   precision: str = "auto", decoder_precision: str = "auto") -> RuntimeReport:
    """Choose the segmenter's runtime and record the choice in `segmenter.runtime_report`.

    torch: PyTorch eager. onnx: ONNX Runtime, exporting first if no export exists for these
    weights. openvino: the export's graphs compiled by OpenVINO (encoder `precision` auto: bf16
    where the CPU computes it natively, else f32; decoders in `decoder_precision`, auto: mixed
    (fp32 layers, bf16 output) where the CPU has native bf16, else f32; a reduced-precision
    decoder that fails validation is replaced by OpenVINO's fp32 decoders), or its encoder with
    ONNX Runtime's decoders when OpenVINO's fail validation; exports first if needed.
    auto (default): OpenVINO, else ONNX Runtime, when a validated export exists; else PyTorch.
    Whenever a faster runtime was wanted but cannot be used, the next one down is used and the
    report (and a log line) says why."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; choose one of {', '.join(RUNTIMES)}")
    t0 = time.perf_counter()
    segmenter.runtime = None

    def done(active: str, reason: str, **kw) -> RuntimeReport:
        kw.setdefault("decoder_runtime", active)
        rep = RuntimeReport(requested, active, reason, load_s=round(time.perf_counter() - t0, 3), **kw)
        segmenter.runtime_report = rep
        if active != requested and requested != "auto":
            log.warning("runtime: %s (%s)", RUNTIME_NAMES[active], reason)
        elif active == "torch" and requested != "torch":
            log.info("runtime: PyTorch (%s)", reason)
        return rep

    if requested == "torch":
        return done("torch", "PyTorch requested")
    if not onnxruntime_available():
        return done("torch", "onnxruntime is not installed")
    folder = ox.export_folder(segmenter.version, ox.weights_fingerprint(segmenter.sam), export_root)
    if not (folder / ox.MANIFEST).is_file():
        if requested == "auto":
            return done("torch", "no ONNX export for these weights yet; run `clinseg export-onnx` for ~2-4x faster encoding")
        try:
            folder = ox.export_onnx(segmenter, export_root)
        except Exception as e:  # the exporter fails in many library-specific ways; all mean "use PyTorch"
            return done("torch", f"ONNX export failed ({type(e).__name__}: {str(e)[:160]})")
    why_not_openvino = ""
    if requested in ("auto", "openvino"):
        from .openvino_runtime import openvino_available

        if not openvino_available():
            why_not_openvino = "OpenVINO is not installed"
        else:
            failures = []
            # OpenVINO's decoders first (a reduced-precision decoder, then fp32); if they fail
            # validation, its encoder with ONNX Runtime's decoders
            from .openvino_runtime import native_bf16

            attempts = [("openvino", decoder_precision)]
            if decoder_precision in ("mixed", "bf16") or (decoder_precision == "auto" and native_bf16()):
                attempts.append(("openvino", "f32"))
            attempts.append(("onnx", "f32"))
            for decoders, dec_precision in attempts:
                try:
                    rt = OpenVinoRuntime(folder, segmenter.sam, threads, precision, decoders=decoders,
                                         decoder_precision=dec_precision)
                    enc_diff, dec_diff = validate_onnx(rt, segmenter)
                except Exception as e:  # OpenVINO/ONNX errors of every kind mean "use the next runtime down"
                    what = f"OpenVINO ({dec_precision} decoder)" if decoders == "openvino" else "OpenVINO encoder"
                    failures.append(f"{what} not used: {e}")
                    continue
                segmenter.runtime = rt
                enc = rt.encoder_check or f"max abs diff encoder {enc_diff:.1e}"
                dec = rt.decoder_check or f"decoder max abs diff {dec_diff:.1e}"
                return done("openvino", "; ".join(failures + [f"{rt.description}, validated against PyTorch ({enc}; {dec})"]
                                                  + ([rt.screen_check] if rt.screen_check else [])),
                            export_dir=str(folder), encoder_max_abs=enc_diff, decoder_max_abs=dec_diff,
                            precision=rt.precision, decoder_runtime=rt.decoder_runtime,
                            decoder_precision=rt.decoder_precision, screening="bf16" if rt.can_screen else "")
            why_not_openvino = "; ".join(failures)
    try:
        rt = OnnxRuntime(folder, segmenter.sam, threads)
        enc_diff, dec_diff = validate_onnx(rt, segmenter)
    except Exception as e:  # corrupt files surface as zip/protobuf/pybind errors: every one means "use PyTorch"
        return done("torch", "; ".join(filter(None, [why_not_openvino, f"ONNX export in {folder} failed validation: {e}"])),
                    export_dir=str(folder))
    segmenter.runtime = rt
    return done("onnx", "; ".join(filter(None, [why_not_openvino, f"ONNX Runtime, validated against PyTorch (max abs diff "
                                                f"encoder {enc_diff:.1e}, decoder {dec_diff:.1e})"])),
                export_dir=str(folder), encoder_max_abs=enc_diff, decoder_max_abs=dec_diff)
