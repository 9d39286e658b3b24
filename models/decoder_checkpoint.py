"""Checkpoints of fine-tuned twins of a backend's prompt encoder + mask decoder (the click decoder,
the propagation decoder): float16 state dicts, or int8 per-row changes to the backend's own weights,
tied to them by a fingerprint (a quarter of float32's size; the masks match float32's, tested)."""
from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import torch

from integrations.errors import ModelWeightsError


DELTA_FORMAT = "int8-delta-v1"


def _base_fingerprint(sam) -> str:
    from .onnx_export import weights_fingerprint  # lazy: onnx export pulls in more
    return weights_fingerprint(torch.nn.ModuleList([sam.prompt_encoder, sam.mask_decoder]))


def checkpoint_states(state: dict, sam) -> tuple[dict, dict]:
    """A checkpoint's float32 state dicts: float16 weights as they are, int8 deltas added to `sam`'s own."""
    if state.get("format") != DELTA_FORMAT:
        return ({k: v.float() for k, v in state["prompt_encoder"].items()},
                {k: v.float() for k, v in state["mask_decoder"].items()})
    if state["base"] != _base_fingerprint(sam):
        raise ValueError("it holds changes to other decoder weights than this backend's (base fingerprint differs)")
    out = []
    for part, module in (("prompt_encoder", sam.prompt_encoder), ("mask_decoder", sam.mask_decoder)):
        base = module.state_dict()
        if set(state[part]) != set(base):
            raise KeyError(f"{part}: checkpoint and backend name different tensors")
        out.append({k: base[k].float() + _dequantise(state[part][k]).reshape(base[k].shape) for k in base})
    return out[0], out[1]


def _quantise(delta: torch.Tensor) -> dict:
    """Symmetric int8 per output row (per tensor for vectors); rows of a fine-tune's change differ in size."""
    rows = delta.reshape(delta.shape[0], -1) if delta.dim() > 1 else delta.reshape(1, -1)
    scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    return {"q": torch.round(rows / scale).to(torch.int8), "scale": scale.float()}


def _dequantise(entry: dict) -> torch.Tensor:
    return entry["q"].float() * entry["scale"]


def save_checkpoint(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, path: str | os.PathLike,
                    base_sam=None) -> None:
    """float16 state dicts; with `base_sam`, int8 changes to its prompt encoder and mask decoder instead
    (a quarter of float32's size, tied to those base weights). Both give float32's masks
    (tests/test_click_decoder.py)."""
    if base_sam is None:
        torch.save({"prompt_encoder": {k: v.half() for k, v in prompt_encoder.state_dict().items()},
                    "mask_decoder": {k: v.half() for k, v in mask_decoder.state_dict().items()}}, path)
        return
    state = {"format": DELTA_FORMAT, "base": _base_fingerprint(base_sam)}
    for part, tuned, base in (("prompt_encoder", prompt_encoder, base_sam.prompt_encoder),
                              ("mask_decoder", mask_decoder, base_sam.mask_decoder)):
        b = base.state_dict()
        state[part] = {k: _quantise(v.float() - b[k].float()) for k, v in tuned.state_dict().items()}
    torch.save(state, path)


def load_twin(sam, path: str | os.PathLike, what: str, env: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Frozen copies of `sam`'s prompt encoder and mask decoder with a checkpoint's weights (strict).
    `what` names the twin and `env` the variable that configures it, for the error a user reads."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelWeightsError(f"{what} checkpoint not found: {path} (set ${env} to a file, or 'off').")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        pe, md = copy.deepcopy(sam.prompt_encoder), copy.deepcopy(sam.mask_decoder)
        pe_state, md_state = checkpoint_states(state, sam)
        pe.load_state_dict(pe_state)
        md.load_state_dict(md_state)
    except (RuntimeError, KeyError, EOFError, OSError, ValueError, TypeError, AttributeError, pickle.UnpicklingError) as e:
        raise ModelWeightsError(f"{what} checkpoint {path} does not fit this backend's decoder: {e}") from e
    pe.requires_grad_(False)
    md.requires_grad_(False)
    return pe.eval(), md.eval()


def configured_checkpoint(env: str, bundled: Path, backend: str) -> Path | None:
    """Where a backend's twin comes from: the file $env names, none for 'off' / 'none' / '0', and when
    unset the bundled file for LiteMedSAM (the weights it was fine-tuned from), none for other backends."""
    choice = os.environ.get(env, "").strip()
    if choice.lower() in ("off", "none", "0"):
        return None
    if choice:
        return Path(choice)
    return bundled if backend == "litemedsam" else None


class _TwinSam:
    """What the ONNX export reads of a Sam: its prompt encoder and mask decoder."""

    def __init__(self, prompt_encoder, mask_decoder):
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder


def compile_twin(prompt_encoder, mask_decoder, name: str, example: tuple, dynamic_axes: dict | None,
                 threads: int | None = None, export_root: str | os.PathLike | None = None, precision: str | None = None):
    """A twin as one OpenVINO graph (models.onnx_export.DecoderOnnxModel: image_embeddings, point_coords,
    point_labels, mask_input, has_mask_input -> low_res_logits, iou_predictions), exported once per
    weights into the export cache as `name`-w<fingerprint>...onnx; `precision` "f32", "bf16", or None for
    bf16 where the CPU has it natively (2x faster; masks at IoU >= 0.99 with PyTorch's, measured on the
    click decoder), else f32.
    Returns (graph, note). Raises on any export/compile failure: callers keep PyTorch then."""
    from .onnx_export import DecoderOnnxModel, OPSET, _export, clinseg_version, default_export_root, weights_fingerprint
    from .openvino_runtime import OpenVinoGraph, native_bf16

    root = Path(export_root).expanduser() if export_root else default_export_root()
    fp = weights_fingerprint(torch.nn.ModuleList([prompt_encoder, mask_decoder]))
    path = root / f"{name}-w{fp[:16]}-clinseg{clinseg_version()}-opset{OPSET}.onnx"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        model = DecoderOnnxModel(_TwinSam(prompt_encoder, mask_decoder)).eval()
        _export(model, example, path, ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
                ["low_res_logits", "iou_predictions"], dynamic_axes)
    precision = precision or ("bf16" if native_bf16() else "f32")
    graph = OpenVinoGraph(path, int(threads or torch.get_num_threads()), precision, fuse_snippets=False)
    return graph, f"OpenVINO {precision} ({path.name}), checked against PyTorch on its first decode"


class TwinDecoder:
    """Fine-tuned copies of a backend's prompt encoder + mask decoder (the image encoder is shared), run
    in PyTorch or, once compiled (`use_openvino`), in OpenVINO: the graph is on probation until its first
    call agrees with PyTorch's masks (`MIN_AGREEMENT`), and steps aside otherwise."""

    NAME = "twin decoder"  # in notes
    EXPORT_NAME = "twin_decoder"  # the exported graph's file name
    PRECISION: str | None = None  # compile_twin's: None = bf16 where native
    DYNAMIC_AXES: dict | None = None
    MIN_AGREEMENT = 0.97  # IoU of every mask with PyTorch's on the compiled graph's first call

    def __init__(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, source: str):
        self.prompt_encoder = prompt_encoder.eval()
        self.mask_decoder = mask_decoder.eval()
        self.source = source
        self._graph = None
        self._validated = False
        self.runtime = "torch"
        self.runtime_note = "PyTorch eager"

    def example_prompt(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(point_coords, point_labels, has_mask_input) of a typical call, to trace the export with."""
        raise NotImplementedError

    def use_openvino(self, threads: int | None = None, export_root: str | os.PathLike | None = None) -> str:
        """Compile the twin with OpenVINO; on any failure PyTorch stays, and the reason is returned."""
        try:
            h, w = self.prompt_encoder.image_embedding_size
            coords, labels, has_mask = self.example_prompt()
            example = (torch.zeros(1, self.prompt_encoder.embed_dim, h, w), coords, labels,
                       torch.zeros(1, 1, *self.prompt_encoder.mask_input_size), has_mask)
            self._graph, self.runtime_note = compile_twin(self.prompt_encoder, self.mask_decoder, self.EXPORT_NAME, example,
                                                          self.DYNAMIC_AXES, threads, export_root, self.PRECISION)
            self._validated = False
            self.runtime = "openvino"
        except Exception as e:  # noqa: BLE001 - any export/compile failure leaves the PyTorch twin in place
            self._graph = None
            self.runtime, self.runtime_note = "torch", f"PyTorch eager (OpenVINO {self.NAME} unavailable: {e})"
        return self.runtime_note

    def step_aside(self, agreement: float) -> None:
        """The compiled graph disagreed with PyTorch: drop it for good."""
        self._graph = None
        self.runtime, self.runtime_note = "torch", f"PyTorch eager (OpenVINO {self.NAME} disagreed: mask IoU {agreement:.3f})"


def mask_iou(a, b) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0

