"""Export a loaded SAM-family model to ONNX (image encoder; prompt encoder + mask decoder), offline.

The export is made from the weights already loaded in memory (nothing is downloaded) and stored in
a cache folder keyed by a fingerprint of those weights + the clinseg version + the ONNX opset, so a
new checkpoint or a new clinseg release never picks up a stale graph. Next to the two graphs the
manifest keeps PyTorch's own outputs on a fixed probe image: loading an export later checks the
ONNX outputs against them (see models/runtime.py) without re-running the slow PyTorch encoder.

The decoder graph adapts `segment_anything.utils.onnx.SamOnnxModel` to clinseg's decode path: it
returns the low-resolution logits of all mask tokens and their IoU, and leaves selection (single vs
multimask) and upsampling to the slice grid to the same code as the PyTorch path.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from segment_anything.modeling import Sam

OPSET = 17
ONNX_DIR_ENV = "CLINSEG_ONNX_DIR"
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
PROBE_FILE = "probe_reference.npz"


def clinseg_version() -> str:
    try:
        from importlib.metadata import version

        return version("clinseg")
    except Exception:  # running from a source tree that was never installed
        return "0+source"


def default_export_root() -> Path:
    return Path(os.environ.get(ONNX_DIR_ENV, str(Path.home() / ".cache" / "clinseg" / "onnx"))).expanduser()


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the state dict actually loaded (names, shapes, bytes): the export's identity."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def export_folder(backend_version: str, fingerprint: str, root: str | os.PathLike | None = None) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in backend_version)
    base = Path(root).expanduser() if root else default_export_root()
    return base / f"{safe}-w{fingerprint[:16]}-clinseg{clinseg_version()}-opset{OPSET}"


def probe_image(size: int = 256) -> np.ndarray:
    """A fixed, image-like probe in [0, 1] (smooth background, a bright disc, an edge, texture):
    random noise would exercise the network far from where real slices put it."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    img = 0.2 + 0.3 * xx * yy
    img += 0.5 * (((xx - 0.45) ** 2 + (yy - 0.5) ** 2) < 0.04)
    img += 0.15 * (xx > 0.75)
    img += 0.05 * np.sin(40 * xx) * np.cos(33 * yy)
    return np.clip(img, 0, 1).astype(np.float32)


PROBE_BOX = (80.0, 90.0, 175.0, 170.0)  # encloses the probe's disc, in probe pixels


@dataclass(frozen=True)
class ExportManifest:
    backend: str  # SamSegmenter.version (weights + preprocessing)
    fingerprint: str
    clinseg: str
    torch: str
    onnx_opset: int
    encoder: str
    decoder: str
    input_size: int
    created_utc: str
    export_s: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def read(folder: Path) -> "ExportManifest":
        return ExportManifest(**json.loads((folder / MANIFEST).read_text()))


class DecoderOnnxModel(nn.Module):
    """Prompt encoder + mask decoder as one graph (after SamOnnxModel, minus its postprocessing).

    Inputs: image_embeddings (1, C, h, w); point_coords (B, N, 2) in the model frame (pixels of the
    S x S input); point_labels (B, N): 1 positive, 0 negative, 2/3 box corners, -1 padding;
    mask_input (B, 1, 4h, 4w) previous low-res logits; has_mask_input (1,) 0 or 1.
    Outputs: low_res_logits (B, T, 4h, 4w) for all T mask tokens, iou_predictions (B, T).
    Boxes arrive as two corner points with labels 2 and 3, appended after the clicks, exactly the
    order in which segment_anything's PromptEncoder concatenates them, so the graph is the same
    function as the PyTorch path.
    """

    def __init__(self, sam: Sam):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        h, w = self.prompt_encoder.input_image_size
        self.register_buffer("input_wh", torch.tensor([float(w), float(h)]), persistent=False)
        # The dense positional encoding depends only on the grid: a constant in the graph.
        self.register_buffer("dense_pe", self.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (coords + 0.5) / self.input_wh
        emb = pe.pe_layer._pe_encoding(coords)
        lab = labels.unsqueeze(-1).expand_as(emb)
        emb = emb * (lab != -1)
        emb = emb + pe.not_a_point_embed.weight * (lab == -1)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i)
        return emb

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe = self.prompt_encoder
        sparse = self._embed_points(point_coords, point_labels)
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks, iou


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python ints in TinyViT's shapes
        torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    os.replace(tmp, path)  # atomic: a concurrent loader never sees half a graph


def export_encoder(sam: Sam, path: Path, input_size: int) -> None:
    x = torch.from_numpy(np.repeat(probe_image(input_size)[None, None], 3, axis=1))
    _export(sam.image_encoder.eval(), (x,), path, ["image"], ["embedding"], None)


def export_decoder(sam: Sam, path: Path, embedding: torch.Tensor) -> None:
    model = DecoderOnnxModel(sam).eval()
    side = sam.prompt_encoder.mask_input_size
    coords = torch.tensor([[[30.0, 40.0], [80.0, 90.0], [175.0, 170.0]]] * 2)
    labels = torch.tensor([[1.0, 2.0, 3.0]] * 2)
    mask = torch.zeros(2, 1, *side)
    has = torch.tensor([1.0])
    _export(model, (embedding, coords, labels, mask, has), path,
            ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            ["low_res_logits", "iou_predictions"],
            {"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
             "mask_input": {0: "prompts"}, "low_res_logits": {0: "prompts"}, "iou_predictions": {0: "prompts"}})


def torch_probe_reference(segmenter) -> dict[str, np.ndarray]:
    """PyTorch's own outputs on the probe (embedding; box-decoder logits), kept with the export."""
    from .runtime import TorchRuntime, probe_decode_inputs

    rt = TorchRuntime(segmenter.sam)
    x = segmenter.model_input(probe_image(segmenter.preprocessing.input_size))
    emb = rt.encode(x)
    logits, iou = rt.decode_all(emb, *probe_decode_inputs(segmenter))
    return {"embedding": emb.numpy(), "logits": logits.numpy(), "iou": iou.numpy()}


def export_onnx(segmenter, root: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Export `segmenter` (a SamSegmenter with its weights loaded) and return the export folder.

    An existing complete export for the same weights and version is reused unless `force`."""
    fp = weights_fingerprint(segmenter.sam)
    folder = export_folder(segmenter.version, fp, root)
    if not force and all((folder / f).is_file() for f in (MANIFEST, ENCODER_FILE, DECODER_FILE, PROBE_FILE)):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    size = segmenter.preprocessing.input_size
    ref = torch_probe_reference(segmenter)
    export_encoder(segmenter.sam, folder / ENCODER_FILE, size)
    export_decoder(segmenter.sam, folder / DECODER_FILE, torch.from_numpy(ref["embedding"]))
    tmp = folder / f"{PROBE_FILE}.tmp{os.getpid()}.npz"
    np.savez(tmp, **ref)
    os.replace(tmp, folder / PROBE_FILE)
    manifest = ExportManifest(
        backend=segmenter.version, fingerprint=fp, clinseg=clinseg_version(), torch=torch.__version__,
        onnx_opset=OPSET, encoder=ENCODER_FILE, decoder=DECODER_FILE, input_size=size,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), export_s=round(time.perf_counter() - t0, 2),
    )
    (folder / MANIFEST).write_text(manifest.to_json())  # written last: its presence marks a complete export
    return folder
