"""OpenVINO for the exported graphs: the same ONNX files, compiled by OpenVINO for this CPU.

Why: the encoder is the one slow step. On this project's 2-core machine ONNX Runtime runs it at
~0.5 s (its matrix products already near the fp32 limit); OpenVINO's CPU plugin compiles the same
`encoder.onnx` with fused kernels (f32: ~1.6x ONNX Runtime), and on CPUs with native bfloat16
(AVX512-BF16 / AMX) it can run the matrix products in bf16 with fp32 accumulation, ~2x again.
bf16 changes the embedding (cosine ~0.999 to fp32), so it is used only where the CPU has it, only
after the probe check below, and its Dice on the dev sets is measured by bench/latency.py.

The prompt encoder + mask decoder graphs run on OpenVINO too. Where the CPU has native bf16 the
default is a mixed-precision decoder (MixedPrecisionDecoder: the two-way layers fp32, the rest
bf16), ~0.8x the time of the all-fp32 one (13-19 ms vs 16-22 ms a box prompt on 2 cores, by the
host's hour; `decoder_precision="f32"`, the default elsewhere, logits equal to PyTorch's to ~3e-5)
and ~0.65x ONNX Runtime's. All in bf16 (opt-in: `decoder_precision="bf16"` or
CLINSEG_DECODER_PRECISION=bf16) they take ~0.65x the fp32 time, but masks move: with the bf16
encoder, the brain dev set's mean Dice moved by 0.0055 vs PyTorch (fp32 decoder: 0.0022), over the
0.005 a reduced precision may cost, so bf16 is not the default. Three things
make the OpenVINO decoder fast (each measured, docs/speed.md): the image->token softmax laid out
with the 4096 image tokens as its inner axis (onnx_export._HeadAttention), OpenVINO's "snippets"
fusion switched off for these graphs (in bf16 it ran the attention's softmax + product in AVX-512
code instead of the AMX matrix kernels: 2.1 ms instead of 0.4 ms per product), and the per-slice
inputs passed without a copy (`share_inputs`: ~10 MB per prompt otherwise).

Nothing here reaches the network: `Core.read_model` / `compile_model` read the local export.
(OpenVINO's telemetry lives in its model-conversion tools, `openvino.tools.ovc`, never imported.)
"""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("auto", "f32", "bf16")
# The decoders may also run "mixed": the two-way layers fp32, the rest bf16 (MixedPrecisionDecoder)
DECODER_PRECISIONS = ("auto", "f32", "mixed", "bf16")
# The interactive loop's prompt: one box, no clicks (two corner points). The prompt graphs are
# exported with dynamic prompt counts; OpenVINO runs a copy compiled for this one layout ~12 %
# faster (15.0 vs 17.4 ms a box, mixed decoder, 2 cores: no per-call shape inference or buffer
# allocation), so that copy serves it and the dynamic graph every other layout (batches of
# proposals, clicks). Measured for batches of 8 proposals: no gain, so no copy for them.
BOX_PROMPT = {"point_coords": [1, 2, 2], "point_labels": [1, 2]}


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports native bfloat16 (AVX512-BF16 or AMX) on this CPU
    (asked once per process: the CPU does not change)."""
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # an OpenVINO build without the CPU plugin: no bf16
        return False


def resolve_precision(requested: str) -> str:
    """auto -> bf16 where the CPU computes it natively, else f32; f32/bf16 as asked (bf16 on a CPU
    without it is refused: OpenVINO would emulate it, slower than f32)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if native_bf16() else "f32"
    if requested == "bf16" and not native_bf16():
        raise ValueError("this CPU has no native bfloat16 (AVX512-BF16/AMX); use precision f32")
    return requested


def resolve_decoder_precision(requested: str) -> str:
    """auto -> mixed where the CPU computes bf16 natively, else f32; mixed and bf16 need native bf16."""
    if requested not in DECODER_PRECISIONS:
        raise ValueError(f"unknown decoder precision {requested!r}; choose one of {', '.join(DECODER_PRECISIONS)}")
    if requested == "auto":
        return "mixed" if native_bf16() else "f32"
    if requested == "mixed":
        if not native_bf16():
            raise ValueError("this CPU has no native bfloat16 (AVX512-BF16/AMX); use decoder precision f32")
        return "mixed"
    return resolve_precision(requested)


class CancelToken:
    """What `VolumePrecomputer` sets to abandon the slice in flight (ONNX Runtime's RunOptions has
    the same `terminate` attribute)."""

    def __init__(self):
        self.terminate = False


class EncoderInterrupted(RuntimeError):
    """The encode was cancelled through its CancelToken."""


class OpenVinoGraph:
    """One exported graph compiled by OpenVINO for one latency-bound stream on `threads` cores."""

    def __init__(self, onnx_path: Path, threads: int, precision: str, fuse_snippets: bool = True,
                 shapes: dict[str, list[int]] | None = None):
        """shapes: input name -> static shape, for a variant compiled for one prompt layout (see
        BOX_PROMPT); the other inputs keep the graph's own shapes."""
        import openvino as ov

        self.precision = precision
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if not fuse_snippets:
            config["SNIPPETS_MODE"] = "DISABLE"
        model = core.read_model(str(onnx_path))
        if shapes:
            model.reshape(shapes)
        self.compiled = core.compile_model(model, "CPU", config)
        self.outputs = list(self.compiled.outputs)
        # one request per calling thread: the UI thread, the precompute worker and a batch job
        # may run the same graph at once, and an infer request serves one call at a time
        self._local = threading.local()

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def run(self, feeds: dict, share_outputs: bool = False) -> list[np.ndarray]:
        """Outputs in graph order, copied out of the request. The inputs (C-contiguous float32)
        are read in place, not copied (a slice's decoder_prep outputs are ~10 MB): the caller
        must not modify them during the call. share_outputs: the outputs are views of the
        request's own buffers, valid only until this thread's next call of this graph."""
        out = self._request().infer(feeds, share_inputs=True, share_outputs=share_outputs)
        return [out[o] for o in self.outputs]


class MixedPrecisionDecoder:
    """decoder_nomask as its two exported halves: the two-way layers in fp32, then the final
    attention, the heads and the upscaling in bf16 (`decoder_layers.onnx`, `decoder_output.onnx`,
    onnx_export.DecoderLayersModel / DecoderOutputModel).

    Why this cut (dev-set Dice, docs/speed.md): the whole decoder in bf16 moved the brain set's
    mean Dice by 0.0034 more than the fp32 decoder (0.0055 in all with the bf16 encoder, over the
    0.005 a reduced precision may cost); bf16 after the layers moved no set by more than 0.0003,
    and runs the upscaling's two large products (~0.4 GMAC, a third of the fp32 decoder's time)
    on the bf16 matrix units. One layer earlier (the last image->token attention in bf16 too)
    already moved the brain set by 0.0012. Why two graphs: with explicit bf16 Casts around those
    products in one fp32 graph, OpenVINO ran the Casts and the then unfused bias additions as
    separate passes (measured slower than the fp32 decoder). Same `run(feeds)` as OpenVinoGraph."""

    def __init__(self, layers_path: Path, output_path: Path, threads: int, shapes: dict[str, list[int]] | None = None):
        self.layers = OpenVinoGraph(layers_path, threads, "f32", fuse_snippets=False, shapes=shapes)
        self.names = [o.get_any_name() for o in self.layers.outputs]
        # a static first half (shapes given) has static outputs: the second half is fixed to them
        mid = {n: list(o.get_shape()) for n, o in zip(self.names, self.layers.outputs)} if shapes else None
        self.output = OpenVinoGraph(output_path, threads, "bf16", fuse_snippets=False, shapes=mid)

    def run(self, feeds: dict) -> list[np.ndarray]:
        # the layers' outputs (4 MB of image tokens a prompt) go to the second half without a copy
        mid = self.layers.run(feeds, share_outputs=True)
        return self.output.run(dict(zip(self.names, mid)))


class OpenVinoEncoder(OpenVinoGraph):
    """`encoder.onnx` on OpenVINO, cancellable mid-slice."""

    POLL_S = 0.02  # how often a running encode checks its cancel token

    def __init__(self, onnx_path: Path, threads: int, precision: str):
        super().__init__(onnx_path, threads, precision)
        self._output = self.outputs[0]

    def __call__(self, x: np.ndarray, cancel: CancelToken | None = None) -> np.ndarray:
        req = self._request()
        if cancel is None:
            return np.array(req.infer({0: x})[self._output], copy=True)
        req.start_async({0: x})
        while not req.wait_for(int(self.POLL_S * 1000)):
            if cancel.terminate:
                req.cancel()
                try:
                    req.wait()  # let the cancelled job leave the CPU plugin before the request is dropped
                except RuntimeError:  # "Infer Request was canceled": the expected outcome
                    pass
                self._local.request = None  # a cancelled request cannot run again
                raise EncoderInterrupted("encode cancelled")
        return np.array(req.get_tensor(self._output).data, copy=True)


def encode_batch(encoder: OpenVinoEncoder, batch: torch.Tensor, cancel=None) -> torch.Tensor:
    """The graph takes one slice: a batch runs slice by slice."""
    x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
    outs = [encoder(x[i : i + 1], cancel) for i in range(x.shape[0])]
    return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])
