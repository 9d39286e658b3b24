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
import math
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
# Bumped whenever the set or the signature of the exported graphs changes: part of the export
# folder's name, so an older export is never loaded by newer code (it is re-made and re-validated).
# 2: + decoder_prep.onnx / decoder_nomask.onnx (the image-only part of the decoder, once per slice).
# 3: decoder.onnx only for prompts with a previous mask (no has_mask_input), same layout as nomask.
# 4: the image->token softmax over the tokens axis of (B, heads, T, N) (see _HeadAttention).
# 5: + decoder_layers.onnx / decoder_output.onnx (decoder_nomask in two, for the mixed-precision
#    decoder); the upscaling's LayerNorm folded into its product, the final attention's key PE as a constant.
EXPORT_FORMAT = 5
ONNX_DIR_ENV = "CLINSEG_ONNX_DIR"
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DECODER_PREP_FILE = "decoder_prep.onnx"
DECODER_NOMASK_FILE = "decoder_nomask.onnx"
DECODER_LAYERS_FILE = "decoder_layers.onnx"
DECODER_OUTPUT_FILE = "decoder_output.onnx"
PROBE_FILE = "probe_reference.npz"
GRAPH_FILES = (ENCODER_FILE, DECODER_FILE, DECODER_PREP_FILE, DECODER_NOMASK_FILE, DECODER_LAYERS_FILE, DECODER_OUTPUT_FILE)
PREP_OUTPUTS = ("keys0", "t2i_k", "t2i_v", "i2t_q")  # decoder_prep's outputs = decoder_nomask's first inputs
LAYERS_OUTPUTS = ("queries", "keys", "tokens")  # decoder_layers' outputs = decoder_output's inputs


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
    return base / f"{safe}-w{fingerprint[:16]}-clinseg{clinseg_version()}-opset{OPSET}-fmt{EXPORT_FORMAT}"


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
    decoder_prep: str = DECODER_PREP_FILE
    decoder_nomask: str = DECODER_NOMASK_FILE
    decoder_layers: str = DECODER_LAYERS_FILE
    decoder_output: str = DECODER_OUTPUT_FILE
    export_format: int = EXPORT_FORMAT

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


def _lin(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """nn.Linear on the last axis as a 2-D product: ONNX Runtime fuses a 2-D MatMul + bias into one
    Gemm, while a 3-D nn.Linear exports as MatMul + a separate Add over the whole output."""
    shape = x.shape
    return torch.nn.functional.linear(x.reshape(-1, shape[-1]), lin.weight, lin.bias).reshape(*shape[:-1], -1)


class _HeadAttention:
    """segment_anything's Attention (scaled dot-product, heads on channel slices) between a few
    prompt tokens (T, ~7) and the image's N = h*w tokens (4096), computed on the prompt side.

    1. Heads without transposes: the prompt side is made block-diagonal, row (head, token)
       keeping only that head's channels, so one product with all C' channels of the image side
       gives every head's scores (other heads' channels meet zeros).
    2. Projections moved to the prompt side (matrix products re-associated): e.g. the scores
       q . (x Wk^T + bk) are (q Wk) . x + q . bk, and softmax(.) (x Wv^T + bv) is
       (softmax(.) x) Wv^T + bv since softmax rows sum to one. A projection of the N image tokens
       (N x C x C' multiply-adds) becomes one of the heads*T block rows (heads*T << C'), so the
       image side is only read by the score and weighted-sum products.
    The same function as segment_anything's Attention: results differ by float rounding only
    (decoder logits ~1e-5, checked at export load against PyTorch)."""

    def __init__(self, attn, mask: torch.Tensor):
        self.attn = attn
        self.mask = mask  # (heads, 1, C') one-hot over each head's channel slice
        self.heads = mask.shape[0]
        self.scale = 1.0 / math.sqrt(mask.shape[-1] // self.heads)

    def _block(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C') -> (B, heads*T, C')
        b, t, c = x.shape
        return (x.unsqueeze(1) * self.mask).reshape(b, self.heads * t, c)

    def _merge(self, o: torch.Tensor, t: int) -> torch.Tensor:  # (B, heads*T, C') -> (B, T, C'), each head's slice
        return (o.reshape(o.shape[0], self.heads, t, -1) * self.mask).sum(1)

    def tokens_to_image(self, q_in: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor, projected: bool = False,
                        k_pe: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt tokens attend to the image. k_img, v_img (B or 1, N, .): the attention's key and
        value inputs, or (projected=True) their projections, as decoder_prep provides them.
        k_pe (N, C): a positional encoding the keys are k_img + k_pe, taken in through its
        projection, a constant (C', N) matrix: one (heads*T x C' x N) product instead of a pass
        over the (B, N, C) sum (measured in decoder_output, bf16: an fp32 pass of 0.4 ms)."""
        a = self.attn
        q = _lin(q_in, a.q_proj)
        t = q.shape[1]
        qb = self._block(q) * self.scale  # (B, heads*T, C')
        if projected:
            s = qb @ k_img.transpose(1, 2)
        else:
            s = (qb @ a.k_proj.weight) @ k_img.transpose(1, 2) + (qb @ a.k_proj.bias).unsqueeze(-1)
        if k_pe is not None:
            s = s + qb @ (a.k_proj.weight @ k_pe.transpose(0, 1))
        w = torch.softmax(s, dim=-1)  # (B, heads*T, N)
        o = w @ v_img if projected else torch.nn.functional.linear(w @ v_img, a.v_proj.weight, a.v_proj.bias)
        return _lin(self._merge(o, t), a.out_proj)

    def image_to_tokens(self, q_img: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """The image attends to the prompt tokens. q_img (B or 1, N, .): the attention's query
        input, or (projected=True) its projection.

        Scores are laid out (B, heads*T, N), the softmax taken over each head's T rows: a softmax
        along the last axis would run over rows of T ~ 7 values, which ONNX Runtime and above all
        OpenVINO compute one short row at a time (OpenVINO bf16: 2.7 ms per layer, vs 0.1 ms
        with the N image tokens as the vectorised inner axis)."""
        a = self.attn
        kb = self._block(_lin(k_in, a.k_proj)) * self.scale  # (B, heads*T, C')
        # out_proj folded in; its bias too, split over the heads: each head's weights sum to one
        vo = torch.nn.functional.linear(self._block(_lin(v_in, a.v_proj)), a.out_proj.weight, a.out_proj.bias / self.heads)
        if projected:
            s = kb @ q_img.transpose(1, 2)
        else:
            s = (kb @ a.q_proj.weight) @ q_img.transpose(1, 2) + (kb @ a.q_proj.bias).unsqueeze(-1)
        b, n = s.shape[0], q_img.shape[1]
        w = torch.softmax(s.reshape(b, self.heads, -1, n), dim=2).reshape(b, -1, n)  # (B, heads*T, N)
        return w.transpose(1, 2) @ vo  # = heads concatenated, then out_proj


def _transposed_conv_as_matmul(ct: nn.ConvTranspose2d):
    """A 2x2 stride-2 ConvTranspose2d as one product per input pixel: weight (C_in, C_out, 2, 2)
    -> (C_in, 2*2*C_out), columns (a, b, c_out); bias repeated; C_out."""
    cin, cout = ct.weight.shape[:2]
    return ct.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout), ct.bias.repeat(4), cout


def _head_mask(attn) -> torch.Tensor:
    c, h = attn.internal_dim, attn.num_heads
    return torch.kron(torch.eye(h), torch.ones(1, c // h)).reshape(h, 1, c)


class DecoderPrepModel(nn.Module):
    """The part of the mask decoder that depends on the image only (no mask prompt): run once per
    embedding, its outputs are reused by every prompt on that slice (models/runtime.py).

    With no previous mask, the decoder's image tokens start as embedding + no_mask_embed, and its
    first two-way layer projects them (+ the positional encoding) three times before any prompt is
    involved: token->image keys and values, image->token queries, ~0.8 of ~3.5 GFLOP per prompt.
    Outputs: keys0 (1, HW, C); t2i_k, t2i_v, i2t_q (1, HW, C') projected, heads side by side."""

    def __init__(self, sam: Sam):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.layer0 = sam.mask_decoder.transformer.layers[0]
        pe = self.prompt_encoder.get_dense_pe().detach().clone()
        self.register_buffer("pe_tokens", pe.flatten(2).permute(0, 2, 1).contiguous(), persistent=False)

    def forward(self, image_embeddings):
        l0 = self.layer0
        src = image_embeddings + self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys0 = src.flatten(2).permute(0, 2, 1)
        kpe = keys0 + self.pe_tokens
        t2i_k = _lin(kpe, l0.cross_attn_token_to_image.k_proj)
        t2i_v = _lin(keys0, l0.cross_attn_token_to_image.v_proj)
        i2t_q = _lin(kpe, l0.cross_attn_image_to_token.q_proj)
        return keys0, t2i_k, t2i_v, i2t_q


class DecoderNoMaskModel(nn.Module):
    """Prompt encoder + mask decoder for prompts without a previous mask, on DecoderPrepModel's
    outputs: the same function as DecoderOnnxModel with has_mask_input = 0 (segment_anything's
    TwoWayTransformer and MaskDecoder.predict_masks, step by step; the first layer's image
    projections come precomputed; attention and upscaling laid out for ONNX Runtime, see
    _HeadAttention and _upscale_and_mask). Logits equal the PyTorch path's to ~1e-5.

    Inputs: keys0, t2i_k, t2i_v, i2t_q (batch 1, broadcast over prompts); point_coords (B, N, 2);
    point_labels (B, N). Outputs: low_res_logits (B, T, 4h, 4w), iou_predictions (B, T)."""

    def __init__(self, sam: Sam):
        super().__init__()
        self.points = DecoderOnnxModel(sam)  # its point embedding, identical by construction
        self.mask_decoder = sam.mask_decoder
        self.register_buffer("pe_tokens", self.points.dense_pe.flatten(2).permute(0, 2, 1).contiguous(), persistent=False)
        self.grid = tuple(sam.prompt_encoder.image_embedding_size)
        tr = sam.mask_decoder.transformer
        self.register_buffer("head_mask", _head_mask(tr.final_attn_token_to_image), persistent=False)
        # the upscaling's first product with its LayerNorm's mean subtraction folded in (_upscale_and_mask)
        with torch.no_grad():
            w1, b1, c1 = _transposed_conv_as_matmul(sam.mask_decoder.output_upscaling[0])
            centre = torch.eye(c1) - 1.0 / c1
            self.register_buffer("up_w1", (w1.reshape(-1, 4, c1) @ centre).reshape(-1, 4 * c1).contiguous(), persistent=False)
            self.register_buffer("up_b1", (b1.reshape(4, c1) @ centre).reshape(-1).contiguous(), persistent=False)
            self.register_buffer("up_average", torch.kron(torch.eye(4), torch.full((c1, 1), 1.0 / c1)), persistent=False)

    def _att(self, attn) -> _HeadAttention:
        return _HeadAttention(attn, self.head_mask)

    def forward(self, keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels):
        return self._decode(keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels, projected=True)

    def _decode(self, keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels, projected: bool):
        """projected: t2i_k, t2i_v, i2t_q are layer 0's projections (decoder_prep's outputs);
        else its raw inputs (keys0 + PE, keys0, keys0 + PE)."""
        return self._output(*self._layers(keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels, projected))

    def _layers(self, keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels, projected: bool):
        """The two-way layers: (queries, keys, tokens) for `_output`."""
        md = self.mask_decoder
        tr = md.transformer
        sparse = self.points._embed_points(point_coords, point_labels)
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
        key_pe = self.pe_tokens

        # layer 0 (skip_first_layer_pe): TwoWayAttentionBlock.forward, image projections given
        l0 = tr.layers[0]
        queries = l0.norm1(l0.self_attn(q=tokens, k=tokens, v=tokens))
        t2i = self._att(l0.cross_attn_token_to_image)
        queries = l0.norm2(queries + t2i.tokens_to_image(queries + tokens, t2i_k, t2i_v, projected=projected))
        queries = l0.norm3(queries + l0.mlp(queries))
        i2t = self._att(l0.cross_attn_image_to_token)
        keys = l0.norm4(keys0 + i2t.image_to_tokens(i2t_q, queries + tokens, queries, projected=projected))

        for layer in tr.layers[1:]:  # TwoWayAttentionBlock.forward with the query/key PE
            q = queries + tokens
            queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
            kpe = keys + key_pe
            queries = layer.norm2(queries + self._att(layer.cross_attn_token_to_image).tokens_to_image(queries + tokens, kpe, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + self._att(layer.cross_attn_image_to_token).image_to_tokens(kpe, queries + tokens, queries))
        return queries, keys, tokens

    def _output(self, queries, keys, tokens):
        """The final token->image attention, the IoU head, the hypernetworks and the upscaling:
        (low_res_logits, iou_predictions)."""
        md = self.mask_decoder
        tr = md.transformer
        attn_out = self._att(tr.final_attn_token_to_image).tokens_to_image(queries + tokens, keys, keys, k_pe=self.pe_tokens[0])
        hs = tr.norm_final_attn(queries + attn_out)

        hyper = torch.stack([md.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(md.num_mask_tokens)], dim=1)
        return self._upscale_and_mask(keys, hyper), md.iou_prediction_head(hs[:, 0, :])

    def _upscale_and_mask(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """output_upscaling + hypernetwork product, channels-last, as matrix products.

        A 2x2 stride-2 transposed convolution writes disjoint 2x2 blocks: it is one matmul to
        4 x C_out channels per input pixel ((a, b, c_out) column order), the blocks laid out
        later. ONNX Runtime runs ConvTranspose ~2x slower per FLOP than MatMul, and keeping the
        image tokens (B, HW, C) channels-last also saves the transpose back to (B, C, h, w);
        LayerNorm2d over channels becomes a plain LayerNorm over the last axis. The 4x4
        sub-pixel layout is undone once, on the T mask planes instead of 32 feature planes."""
        up = self.mask_decoder.output_upscaling
        ct1, ln, act1, ct2, act2 = up[0], up[1], up[2], up[3], up[4]
        b, hw, _ = keys.shape
        h, w = self.grid

        # LayerNorm2d over each sub-pixel's c1 channels without a normalisation pass over rows of
        # c1 = 64 values (slow in OpenVINO: ~1 ms for the 1M values here): its mean subtraction is
        # linear, so it is folded into the product's weights (see __init__: up_w1, up_b1), and the
        # variances of the 4 sub-pixels come from one small product with a block-averaging matrix.
        c1 = ct1.weight.shape[1]
        y = torch.addmm(self.up_b1, keys.reshape(b * hw, -1), self.up_w1)  # (b*hw, 4*c1), columns (a, b, c_out), centred
        scale = torch.rsqrt((y * y) @ self.up_average + ln.eps)  # (b*hw, 4)
        x = (y.reshape(b * hw, 4, c1) * scale.unsqueeze(-1)).reshape(b * hw * 4, c1)  # rows (i, j, a, b)
        x = act1(x * ln.weight + ln.bias)
        w2, b2, c2 = _transposed_conv_as_matmul(ct2)
        x = act2(torch.addmm(b2, x, w2).reshape(b, hw * 16, c2))  # rows (i, j, a, b, c, d)
        t = hyper.shape[1]
        m = (x @ hyper.transpose(1, 2)).reshape(b, h, w, 2, 2, 2, 2, t)  # [i, j, a, b, c, d, t]
        # pixel (4i + 2a + c, 4j + 2b + d)
        return m.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, t, 4 * h, 4 * w)


class DecoderLayersModel(DecoderNoMaskModel):
    """decoder_nomask in two graphs for the mixed-precision decoder (OpenVINO on CPUs with native
    bf16, models/openvino_runtime.py: MixedPrecisionDecoder): this one, the two-way layers, runs
    in fp32; DecoderOutputModel, the rest, in bf16.

    Inputs: decoder_nomask's. Outputs: queries (B, T, C), keys (B, HW, C), tokens (B, T, C)."""

    def forward(self, keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels):
        return self._layers(keys0, t2i_k, t2i_v, i2t_q, point_coords, point_labels, projected=True)


class DecoderOutputModel(DecoderNoMaskModel):
    """The second half of decoder_nomask (see DecoderLayersModel): final attention, IoU head,
    hypernetworks, upscaling. Inputs: queries, keys, tokens. Outputs: low_res_logits, iou_predictions."""

    def forward(self, queries, keys, tokens):
        return self._output(queries, keys, tokens)


class DecoderMaskModel(DecoderNoMaskModel):
    """Prompt encoder + mask decoder for prompts WITH a previous mask (refinement): the previous
    low-res logits go through the prompt encoder's mask_downscaling into the image tokens, so
    nothing is shared between prompts; otherwise DecoderNoMaskModel's layout.

    Inputs: image_embeddings (1, C, h, w); point_coords (B, N, 2); point_labels (B, N);
    mask_input (B, 1, 4h, 4w). Outputs: low_res_logits (B, T, 4h, 4w), iou_predictions (B, T)."""

    def __init__(self, sam: Sam):
        super().__init__(sam)
        self.prompt_encoder = sam.prompt_encoder

    def forward(self, image_embeddings, point_coords, point_labels, mask_input):
        src = image_embeddings + self.prompt_encoder.mask_downscaling(mask_input)  # (B, C, h, w)
        keys0 = src.flatten(2).permute(0, 2, 1)
        kpe = keys0 + self.pe_tokens
        return self._decode(keys0, kpe, keys0, kpe, point_coords, point_labels, projected=False)


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
    """decoder.onnx: prompts with a previous mask (DecoderMaskModel)."""
    model = DecoderMaskModel(sam).eval()
    side = sam.prompt_encoder.mask_input_size
    coords = torch.tensor([[[30.0, 40.0], [80.0, 90.0], [175.0, 170.0]]] * 2)
    labels = torch.tensor([[1.0, 2.0, 3.0]] * 2)
    mask = torch.zeros(2, 1, *side)
    _export(model, (embedding, coords, labels, mask), path,
            ["image_embeddings", "point_coords", "point_labels", "mask_input"],
            ["low_res_logits", "iou_predictions"],
            {"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
             "mask_input": {0: "prompts"}, "low_res_logits": {0: "prompts"}, "iou_predictions": {0: "prompts"}})


def export_decoder_split(sam: Sam, prep_path: Path, nomask_path: Path, embedding: torch.Tensor,
                         layers_path: Path | None = None, output_path: Path | None = None) -> None:
    """decoder_prep.onnx + decoder_nomask.onnx; with layers_path/output_path also decoder_nomask
    in two halves (decoder_layers.onnx, decoder_output.onnx)."""
    prep = DecoderPrepModel(sam).eval()
    _export(prep, (embedding,), prep_path, ["image_embeddings"], list(PREP_OUTPUTS), None)
    with torch.no_grad():
        pre = prep(embedding)
    coords = torch.tensor([[[30.0, 40.0], [80.0, 90.0], [175.0, 170.0]]] * 2)
    labels = torch.tensor([[1.0, 2.0, 3.0]] * 2)
    dyn = {"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
           "low_res_logits": {0: "prompts"}, "iou_predictions": {0: "prompts"}}
    _export(DecoderNoMaskModel(sam).eval(), (*pre, coords, labels), nomask_path,
            [*PREP_OUTPUTS, "point_coords", "point_labels"],
            ["low_res_logits", "iou_predictions"], dyn)
    if layers_path is None or output_path is None:
        return
    layers = DecoderLayersModel(sam).eval()
    mid_axes = {"queries": {0: "prompts", 1: "tokens"}, "keys": {0: "prompts"}, "tokens": {0: "prompts", 1: "tokens"}}
    _export(layers, (*pre, coords, labels), layers_path, [*PREP_OUTPUTS, "point_coords", "point_labels"],
            list(LAYERS_OUTPUTS), {**dyn, **mid_axes})
    with torch.no_grad():
        mid = layers(*pre, coords, labels)
    _export(DecoderOutputModel(sam).eval(), tuple(mid), output_path, list(LAYERS_OUTPUTS),
            ["low_res_logits", "iou_predictions"],
            {**mid_axes, "low_res_logits": {0: "prompts"}, "iou_predictions": {0: "prompts"}})


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
    if not force and all((folder / f).is_file() for f in (MANIFEST, PROBE_FILE, *GRAPH_FILES)):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    size = segmenter.preprocessing.input_size
    ref = torch_probe_reference(segmenter)
    export_encoder(segmenter.sam, folder / ENCODER_FILE, size)
    export_decoder(segmenter.sam, folder / DECODER_FILE, torch.from_numpy(ref["embedding"]))
    export_decoder_split(segmenter.sam, folder / DECODER_PREP_FILE, folder / DECODER_NOMASK_FILE,
                         torch.from_numpy(ref["embedding"]), folder / DECODER_LAYERS_FILE, folder / DECODER_OUTPUT_FILE)
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
