"""ONNX Runtime export: same outputs as PyTorch on a real slice, same masks for every prompt layout,
and a reported fallback to PyTorch when the export is corrupt or does not match the weights."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from models import onnx_export as ox
from models.runtime import attach_runtime
from models.sam_backend import SamSegmenter
from prompting.promptset import Point, PromptSet, PromptSource


def _twin(seg: SamSegmenter) -> SamSegmenter:
    """A second segmenter on the same loaded weights (no reload), with its own cache."""
    return SamSegmenter(seg.name, seg.sam, seg.preprocessing, version=seg.version)


@pytest.fixture(scope="session")
def export_root(tmp_path_factory, segmenter):
    root = tmp_path_factory.mktemp("onnx")
    ox.export_onnx(segmenter, root)  # once per session: ~15 s
    return root


def _on(segmenter, runtime: str, export_root=None) -> SamSegmenter:
    """A twin of `segmenter` on `runtime`, which must be the one that becomes active."""
    seg = _twin(segmenter)
    rep = attach_runtime(seg, runtime, export_root=export_root)
    assert rep.active == runtime, rep.reason
    return seg


@pytest.fixture(scope="session")
def torch_seg(segmenter):
    return _on(segmenter, "torch")


@pytest.fixture(scope="session")
def onnx_seg(segmenter, export_root):
    return _on(segmenter, "onnx", export_root)


@pytest.fixture(scope="session")
def openvino_seg(segmenter, export_root):
    """OpenVINO's encoder at the precision `auto` picks on this CPU (bf16 where it is native)."""
    return _on(segmenter, "openvino", export_root)


@pytest.fixture(scope="session")
def real_slice(colin27):
    from integrations.windowing import slice_image, volume_window

    t1, aal = colin27
    z = 80
    return slice_image(t1, z, volume_window(t1, None)), np.rint(aal.voxels[z]).astype(np.int64)


def test_export_round_trip_on_real_slice(onnx_seg, torch_seg, real_slice, export_root):
    img, _ = real_slice
    rep = onnx_seg.runtime_report
    assert rep.encoder_max_abs < 1e-3 and rep.decoder_max_abs < 1e-2 and "validated" in rep.reason
    manifest = ox.ExportManifest.read(next(export_root.iterdir()))
    assert manifest.fingerprint == ox.weights_fingerprint(torch_seg.sam) and manifest.backend == torch_seg.version
    a = onnx_seg.embed(img).features
    b = torch_seg.embed(img).features
    assert a.shape == b.shape == (1, 256, 64, 64)
    assert float((a - b).abs().max()) < 1e-3


def test_decoder_prompts_give_the_same_masks(onnx_seg, torch_seg, real_slice):
    img, labels = real_slice
    emb = torch_seg.embed(img)  # one embedding: this isolates the decoder graph
    ys, xs = np.nonzero(labels == np.bincount(labels[labels > 0].ravel()).argmax())
    box = PromptSet.from_box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    inside = Point(float(np.median(xs)), float(np.median(ys)), True, PromptSource.CLICK, 1.0)
    outside = Point(float(xs.min()) - 3, float(ys.min()) - 3, False, PromptSource.CLICK, 1.0)
    first = torch_seg.decode(emb, box)
    prompts = [
        box,
        box.with_points(inside, outside),
        PromptSet(points=(inside, outside)),  # clicks only: the padding point path
        box.with_mask_input(first.low_res_logits),
    ]
    for multimask in (False, True):
        for p in prompts:
            want = torch_seg.decode(emb, p, multimask=multimask)
            got = onnx_seg.decode(emb, p, multimask=multimask)
            assert np.mean(want.mask != got.mask) < 1e-3, p
            assert np.abs(want.low_res_logits - got.low_res_logits).max() < 1e-2
            assert abs(want.predicted_iou - got.predicted_iou) < 1e-3
    # a batch of two boxes (one with a previous mask) decodes as in PyTorch
    batch = [box, PromptSet.from_box(10, 10, 60, 50).with_mask_input(first.low_res_logits)]
    for w, g in zip(torch_seg.decode_batch(emb, batch), onnx_seg.decode_batch(emb, batch)):
        assert np.mean(w.mask != g.mask) < 1e-3
    assert not first.is_empty


def _copy_export(export_root, tmp_path):
    src = next(export_root.iterdir())
    dst_root = tmp_path / "exports"
    shutil.copytree(src, dst_root / src.name)
    return dst_root, dst_root / src.name


def test_corrupt_export_falls_back_to_torch_and_says_so(segmenter, export_root, tmp_path, caplog, disc_image):
    root, folder = _copy_export(export_root, tmp_path)
    (folder / ox.ENCODER_FILE).write_bytes(b"\x08\x07 not a protobuf" * 100)
    seg = _twin(segmenter)
    with caplog.at_level(logging.WARNING, logger="clinseg.runtime"):
        rep = attach_runtime(seg, "onnx", export_root=root)
    assert rep.active == "torch" and rep.fell_back and seg.runtime is None
    assert "failed validation" in rep.reason and "does not load" in rep.reason
    assert any("PyTorch" in r.getMessage() for r in caplog.records)
    img, mask = disc_image
    seg_mask = seg.decode(seg.embed(img), PromptSet.from_box(75, 55, 165, 145)).mask
    assert (seg_mask & mask).sum() / (seg_mask | mask).sum() > 0.8  # still segments, on PyTorch


def test_mismatched_export_fails_validation(segmenter, export_root, tmp_path):
    root, folder = _copy_export(export_root, tmp_path)
    model = onnx.load(str(folder / ox.ENCODER_FILE))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    init = max(floats, key=lambda t: int(np.prod(t.dims)))  # the largest weight
    w = numpy_helper.to_array(init)
    # "other weights" under the same name (noise, not a scale: a LayerNorm would undo a scale)
    arr = w + np.random.default_rng(0).normal(0, float(w.std()), w.shape)
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(model, str(folder / ox.ENCODER_FILE))
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "auto", export_root=root)
    assert rep.active == "torch" and seg.runtime is None
    assert "encoder differs from PyTorch" in rep.reason


def test_manifest_for_other_weights_is_refused(segmenter, export_root, tmp_path):
    root, folder = _copy_export(export_root, tmp_path)
    text = (folder / ox.MANIFEST).read_text()
    fp = ox.ExportManifest.read(folder).fingerprint
    (folder / ox.MANIFEST).write_text(text.replace(fp, "0" * len(fp)))
    rep = attach_runtime(_twin(segmenter), "auto", export_root=root)
    assert rep.active == "torch" and "other weights" in rep.reason


def test_auto_without_export_uses_torch_with_reason(segmenter, tmp_path):
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "auto", export_root=tmp_path / "empty")
    assert rep.active == "torch" and "export-onnx" in rep.reason and not rep.fell_back
    with pytest.raises(ValueError):
        attach_runtime(seg, "tensorrt")


@pytest.mark.parametrize("runtime_seg", ["onnx_seg", "openvino_seg"])
def test_precompute_interrupts_the_slice_in_flight_when_the_user_jumps(runtime_seg, request):
    import time

    onnx_seg = request.getfixturevalue(runtime_seg)

    from models.cache import EmbeddingCache
    from models.precompute import VolumePrecomputer

    yy, xx = np.mgrid[:48, :48]
    imgs = [np.clip(0.2 + 0.6 * (((yy - 24) ** 2 + (xx - 10 - 7 * i) ** 2) < 81), 0, 1).astype(np.float32) for i in range(4)]
    pre = VolumePrecomputer(onnx_seg, imgs.__getitem__, 4, focus=0, cache=EmbeddingCache()).start()
    deadline = time.monotonic() + 60
    while pre.progress().current != 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    emb3 = pre.embedding(3, timeout=120)  # the user jumped to slice 3 while slice 0 was encoding
    assert pre.join(timeout=120)
    assert pre.interrupted == 1
    assert pre.computed_order == [3, 2, 1, 0]  # without the interrupt: [0, 3, 2, 1]
    assert emb3.features.shape == (1, 256, 64, 64)


def test_image_only_decoder_part_is_computed_once_per_embedding(onnx_seg, torch_seg, real_slice):
    img, _ = real_slice
    emb = torch_seg.embed(img)
    rt = onnx_seg.runtime
    first = rt.prepared(emb.features)
    assert rt.prepared(emb.features) is first  # the second prompt on this slice reuses it
    # an equal-valued but distinct tensor is another embedding: never served from the cache
    other = emb.features.clone()
    assert rt.prepared(other) is not first
    boxes = [PromptSet.from_box(40, 50, 120, 140), PromptSet.from_box(60, 60, 100, 110)]
    for p in boxes:  # the cached path gives PyTorch's masks, prompt after prompt
        want, got = torch_seg.decode(emb, p), onnx_seg.decode(emb, p)
        assert np.mean(want.mask != got.mask) < 1e-3
        assert np.abs(want.low_res_logits - got.low_res_logits).max() < 1e-2
    # batches on the split graphs (the per-slice part broadcast over prompts), boxes with clicks
    click = Point(80.0, 90.0, True, PromptSource.CLICK, 1.0)
    batch = [boxes[0], boxes[1].with_points(click), PromptSet.from_box(20, 30, 160, 170)]
    for multimask in (False, True):
        for w, g in zip(torch_seg.decode_batch(emb, batch, multimask), onnx_seg.decode_batch(emb, batch, multimask)):
            assert np.mean(w.mask != g.mask) < 1e-3
            assert abs(w.predicted_iou - g.predicted_iou) < 1e-3


def test_export_folder_names_the_export_format(segmenter, tmp_path):
    folder = ox.export_folder(segmenter.version, ox.weights_fingerprint(segmenter.sam), tmp_path)
    assert folder.name.endswith(f"-fmt{ox.EXPORT_FORMAT}")  # older formats live elsewhere: never loaded


@pytest.mark.parametrize("shape", [(217, 181), (48, 48), (512, 300), (3, 700), (256, 256)])
@pytest.mark.parametrize("policy", ["longest", "stretch"])
def test_numpy_upsampling_matches_torch(shape, policy):
    import torch

    from models.transforms import SliceTransform

    t = SliceTransform(shape, 256, policy)
    logits = torch.from_numpy(np.random.default_rng(0).normal(0, 8, (2, 3, 256, 256)).astype(np.float32))
    ref = t.logits_to_image(logits.clone().requires_grad_(True)).detach().numpy()  # the torch path
    got = t.logits_to_image_np(logits.numpy())
    assert got.shape == ref.shape == (2, 3, *shape)
    assert np.abs(got - ref).max() < 2e-3  # logits of magnitude ~30: float rounding only
    assert np.mean((got > 0) != (ref > 0)) < 1e-4


# -- OpenVINO encoder (models/openvino_runtime.py) ---------------------------------------------------

def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_openvino_f32_encoder_equals_pytorch(segmenter, export_root, torch_seg, real_slice):
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "openvino", export_root=export_root, precision="f32")
    assert rep.active == "openvino" and rep.precision == "f32", rep.reason
    img, _ = real_slice
    a, b = seg.embed(img).features, torch_seg.embed(img).features
    assert a.shape == b.shape == (1, 256, 64, 64)
    assert float((a - b).abs().max()) < 1e-3
    assert seg.embedding_key(img) == torch_seg.embedding_key(img)  # fp32 embeddings share cache entries


def test_openvino_auto_precision_follows_the_cpu_and_keeps_the_masks(openvino_seg, torch_seg, real_slice):
    from models.openvino_runtime import native_bf16

    rep = openvino_seg.runtime_report
    assert rep.precision == ("bf16" if native_bf16() else "f32")
    assert f"OpenVINO encoder ({rep.precision})" in rep.reason
    img, labels = real_slice
    a, b = openvino_seg.embed(img).features, torch_seg.embed(img).features
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    assert cos > 0.995, cos
    # the five largest AAL regions of the slice, tight boxes: the same masks to within a few pixels
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    for lab in ids[np.argsort(-counts)[:5]]:
        ys, xs = np.nonzero(labels == lab)
        p = PromptSet.from_box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        want, got = torch_seg.decode(torch_seg.embed(img), p).mask, openvino_seg.decode(openvino_seg.embed(img), p).mask
        assert _dice(want, got) > 0.95, lab
    if rep.precision == "bf16":  # bf16 embeddings never share a cache entry with fp32 ones
        assert openvino_seg.embedding_key(img) != torch_seg.embedding_key(img)


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    from models import openvino_runtime as ovr

    monkeypatch.setattr(ovr, "native_bf16", lambda: False)
    assert ovr.resolve_precision("auto") == "f32"
    with pytest.raises(ValueError, match="no native bfloat16"):
        ovr.resolve_precision("bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        ovr.resolve_precision("fp8")


def test_openvino_unavailable_falls_back_to_onnx_runtime_and_says_why(segmenter, export_root, monkeypatch, caplog):
    from models import openvino_runtime as ovr

    monkeypatch.setattr(ovr, "openvino_available", lambda: False)
    seg = _twin(segmenter)
    with caplog.at_level(logging.WARNING, logger="clinseg.runtime"):
        rep = attach_runtime(seg, "openvino", export_root=export_root)
    assert rep.active == "onnx" and rep.fell_back and "OpenVINO is not installed" in rep.reason
    assert any("OpenVINO is not installed" in r.getMessage() for r in caplog.records)
    auto = attach_runtime(_twin(segmenter), "auto", export_root=export_root)
    assert auto.active == "onnx" and not auto.fell_back


def test_openvino_rejects_a_perturbed_encoder_in_either_precision(segmenter, export_root, tmp_path):
    root, folder = _copy_export(export_root, tmp_path)
    model = onnx.load(str(folder / ox.ENCODER_FILE))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    init = max(floats, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w + np.random.default_rng(1).normal(0, float(w.std()), w.shape)).astype(np.float32), init.name))
    onnx.save(model, str(folder / ox.ENCODER_FILE))
    for precision in ("f32", "auto"):
        rep = attach_runtime(_twin(segmenter), "openvino", export_root=root, precision=precision)
        assert rep.active == "torch" and rep.fell_back, rep.reason
        assert "OpenVINO encoder not used" in rep.reason


# -- OpenVINO decoders -----------------------------------------------------------------------------

def _layout_prompts(torch_seg, emb, labels):
    """A box, a box with clicks, clicks alone and a box with a previous mask, around the slice's
    largest AAL region."""
    ys, xs = np.nonzero(labels == np.bincount(labels[labels > 0].ravel()).argmax())
    box = PromptSet.from_box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    inside = Point(float(np.median(xs)), float(np.median(ys)), True, PromptSource.CLICK, 1.0)
    outside = Point(float(xs.min()) - 3, float(ys.min()) - 3, False, PromptSource.CLICK, 1.0)
    first = torch_seg.decode(emb, box)
    return [box, box.with_points(inside, outside), PromptSet(points=(inside, outside)),
            box.with_mask_input(first.low_res_logits)]


def test_openvino_decoders_are_mixed_where_bf16_is_native_else_fp32(openvino_seg, monkeypatch):
    from models import openvino_runtime as ovr

    rep = openvino_seg.runtime_report
    want = "mixed" if ovr.native_bf16() else "f32"
    assert rep.decoder_runtime == "openvino" and rep.decoder_precision == want, rep.reason
    assert f"OpenVINO decoder ({want}" in rep.reason
    monkeypatch.setattr(ovr, "native_bf16", lambda: False)
    assert ovr.resolve_decoder_precision("auto") == "f32"
    for reduced in ("mixed", "bf16"):
        with pytest.raises(ValueError, match="no native bfloat16"):
            ovr.resolve_decoder_precision(reduced)
    with pytest.raises(ValueError, match="unknown decoder precision"):
        ovr.resolve_decoder_precision("fp16")


@pytest.mark.parametrize("decoder_precision", ["f32", "mixed", "bf16"])
def test_openvino_decoders_give_pytorchs_masks_for_every_prompt_layout(decoder_precision, segmenter, export_root, torch_seg, real_slice):
    from models.openvino_runtime import native_bf16

    if decoder_precision != "f32" and not native_bf16():
        pytest.skip("this CPU has no native bf16")
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "openvino", export_root=export_root, decoder_precision=decoder_precision)
    assert rep.active == "openvino" and rep.decoder_runtime == "openvino", rep.reason
    assert rep.decoder_precision == decoder_precision and f"OpenVINO decoder ({decoder_precision}" in rep.reason
    img, labels = real_slice
    emb = torch_seg.embed(img)  # one fp32 embedding: this isolates the decoder graphs
    exact = rep.decoder_precision == "f32"
    for multimask in (False, True):
        for p in _layout_prompts(torch_seg, emb, labels):
            want, got = torch_seg.decode(emb, p, multimask=multimask), seg.decode(emb, p, multimask=multimask)
            diff = np.abs(want.low_res_logits - got.low_res_logits)
            if exact:
                assert np.mean(want.mask != got.mask) < 1e-3 and diff.max() < 1e-2, p
                assert abs(want.predicted_iou - got.predicted_iou) < 1e-3
            else:  # bf16 / mixed: logits move by ~0.1 on average (of |logits| up to ~30), masks by a few edge pixels
                assert _dice(want.mask, got.mask) > 0.98 and diff.mean() < 0.25, (p, _dice(want.mask, got.mask), diff.mean())
                assert abs(want.predicted_iou - got.predicted_iou) < 0.02
    batch = _layout_prompts(torch_seg, emb, labels)[:2]  # the split graphs, broadcast over prompts
    for w, g in zip(torch_seg.decode_batch(emb, batch), seg.decode_batch(emb, batch)):
        assert _dice(w.mask, g.mask) > (0.999 if exact else 0.98)


def test_one_box_runs_on_the_copy_compiled_for_its_layout_with_the_dynamic_graphs_logits(openvino_seg, real_slice):
    """OpenVINO keeps a static-shape copy of the prompt decoder for the interactive loop's prompt
    (one box); batches and other layouts run on the dynamic graph; both give the same logits."""
    from models.openvino_runtime import BOX_PROMPT

    rt = openvino_seg.runtime
    img, _ = real_slice
    emb = openvino_seg.embed(img)
    used = []
    for name in ("ov_box", "ov_nomask"):
        graph = getattr(rt, name)
        real = graph.run
        graph.run = lambda feeds, _real=real, _name=name: used.append(_name) or _real(feeds)
    try:
        one = openvino_seg.decode(emb, PromptSet.from_box(40, 50, 120, 140))
        two = openvino_seg.decode_batch(emb, [PromptSet.from_box(40, 50, 120, 140), PromptSet.from_box(44, 50, 124, 140)])
        with_click = openvino_seg.decode(emb, PromptSet.from_box(40, 50, 120, 140).with_points(Point(80, 95)))
    finally:
        for name in ("ov_box", "ov_nomask"):
            del getattr(rt, name).run  # back to the class's method
    assert used == ["ov_box", "ov_nomask", "ov_nomask"], used
    assert [list(v) for v in rt.box_shapes.values()] == list(BOX_PROMPT.values())
    assert np.abs(one.low_res_logits - two[0].low_res_logits).max() < 1e-3
    assert abs(one.predicted_iou - two[0].predicted_iou) < 1e-4 and with_click.mask.any()


def test_openvino_decoders_failing_validation_leave_onnx_runtimes_decoders(segmenter, export_root, monkeypatch, torch_seg, real_slice):
    from models import openvino_runtime as ovr

    real_run = ovr.OpenVinoGraph.run

    def wrong_logits(self, feeds, **kw):  # a broken decoder: every mask logit far below zero
        return [o - 50.0 if o.ndim == 4 else o for o in real_run(self, feeds, **kw)]

    monkeypatch.setattr(ovr.OpenVinoGraph, "run", wrong_logits)
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "auto", export_root=export_root)
    assert rep.active == "openvino" and rep.decoder_runtime == "onnx" and rep.decoder_precision == "f32", rep.reason
    assert "OpenVINO (f32 decoder) not used" in rep.reason and "ONNX Runtime decoder" in rep.reason
    img, labels = real_slice
    emb = torch_seg.embed(img)
    box = _layout_prompts(torch_seg, emb, labels)[0]
    assert np.mean(torch_seg.decode(emb, box).mask != seg.decode(emb, box).mask) < 1e-3


def test_a_failing_mixed_decoder_leaves_openvinos_fp32_decoders(segmenter, export_root, monkeypatch, torch_seg, real_slice):
    from models import openvino_runtime as ovr

    if not ovr.native_bf16():
        pytest.skip("this CPU has no native bf16")
    real_run = ovr.MixedPrecisionDecoder.run

    def wrong_logits(self, feeds):  # the bf16 half broken: every mask logit far below zero
        return [o - 50.0 if o.ndim == 4 else o for o in real_run(self, feeds)]

    monkeypatch.setattr(ovr.MixedPrecisionDecoder, "run", wrong_logits)
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "auto", export_root=export_root)
    assert rep.active == "openvino" and rep.decoder_runtime == "openvino" and rep.decoder_precision == "f32", rep.reason
    assert "OpenVINO (auto decoder) not used" in rep.reason and "probe mask IoU" in rep.reason
    assert "OpenVINO decoder (f32)" in rep.reason
    img, labels = real_slice
    emb = torch_seg.embed(img)
    box = _layout_prompts(torch_seg, emb, labels)[0]
    assert np.mean(torch_seg.decode(emb, box).mask != seg.decode(emb, box).mask) < 1e-3


def test_openvino_decodes_from_two_threads_at_once(openvino_seg, real_slice):
    from concurrent.futures import ThreadPoolExecutor

    img, _ = real_slice
    emb = openvino_seg.embed(img)
    prompts = [PromptSet.from_box(40 + 4 * i, 50, 120 + 4 * i, 140) for i in range(6)]
    want = [openvino_seg.decode(emb, p).mask for p in prompts]
    with ThreadPoolExecutor(2) as pool:  # the UI thread and a worker: each has its own infer request
        got = list(pool.map(lambda p: openvino_seg.decode(emb, p).mask, prompts * 3))
    assert all(np.array_equal(g, want[i % len(prompts)]) for i, g in enumerate(got))


def test_large_batches_are_decoded_in_chunks_with_the_same_masks(onnx_seg, torch_seg, real_slice, monkeypatch):
    from models import runtime

    img, _ = real_slice
    emb = torch_seg.embed(img)
    boxes = [PromptSet.from_box(30 + 5 * i, 40, 110 + 5 * i, 130) for i in range(5)]
    refine = [p.with_mask_input(torch_seg.decode(emb, p).low_res_logits) for p in boxes]
    whole = [onnx_seg.decode_batch(emb, boxes), onnx_seg.decode_batch(emb, refine)]
    rt = onnx_seg.runtime
    calls = []

    def counted(run):
        def call(*args):
            calls.append(next(len(a["point_coords"]) for a in args if isinstance(a, dict) and "point_coords" in a))
            return run(*args)
        return call

    monkeypatch.setattr(runtime, "DECODE_CHUNK", 2)
    monkeypatch.setattr(rt, "_run_nomask", counted(rt._run_nomask))
    monkeypatch.setattr(rt, "_run_mask", counted(rt._run_mask))
    chunked = [onnx_seg.decode_batch(emb, boxes), onnx_seg.decode_batch(emb, refine)]
    assert calls == [2, 2, 1, 2, 2, 1]
    for w_set, c_set in zip(whole, chunked):
        for w, c in zip(w_set, c_set):
            assert np.array_equal(w.mask, c.mask) and abs(w.predicted_iou - c.predicted_iou) < 1e-6


# -- bf16 screening decoder for click proposals -------------------------------------------------------

def _needs_bf16():
    from models.openvino_runtime import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16")


def test_click_proposals_are_ranked_by_the_bf16_twin_and_the_chosen_box_decoded_by_the_main_decoder(openvino_seg, torch_seg, real_slice):
    _needs_bf16()
    from prompting import clicks

    rep, rt = openvino_seg.runtime_report, openvino_seg.runtime
    assert rep.screening == "bf16" and rt.can_screen and "click proposals ranked by a bf16 decoder" in rep.reason
    img, labels = real_slice
    emb = torch_seg.embed(img)
    box = _layout_prompts(torch_seg, emb, labels)[0]
    exact, fast = openvino_seg.decode_logits(emb, [box]), openvino_seg.decode_logits(emb, [box], screening=True)
    want = torch_seg.decode_logits(emb, [box])
    # the default decode: fp32 layers, bf16 output (mixed); the twin all bf16: both close, not equal
    assert rep.decoder_precision == "mixed"
    assert float((exact[0] - want[0]).abs().mean()) < 0.25
    assert 0 < float((fast[0] - want[0]).abs().max()) < 2.0
    for got in (exact, fast):
        assert _dice(got[0][0, 0].numpy() > 0, want[0][0, 0].numpy() > 0) > 0.98
    assert not torch.equal(exact[0], fast[0])  # two different graphs ran
    # a prompt with a previous mask never takes the screening path (no bf16 twin of that graph)
    refine = box.with_mask_input(torch_seg.decode(emb, box).low_res_logits)
    a, b = openvino_seg.decode_logits(emb, [refine], screening=True), torch_seg.decode_logits(emb, [refine])
    assert float((a[0] - b[0]).abs().max()) < 1e-2

    calls = []
    real = rt.decode_all

    def spy(features, points, boxes, masks, screening=False):
        calls.append((0 if boxes is None else int(boxes.shape[0]), screening))
        return real(features, points, boxes, masks, screening=screening)

    rt.decode_all = spy
    try:
        ys, xs = np.nonzero(labels == np.bincount(labels[labels > 0].ravel()).argmax())
        click = Point(float(np.median(xs)), float(np.median(ys)), True, PromptSource.CLICK, 1.0)
        prompt = clicks.propose_from_points(openvino_seg, emb, img, (click,))
        calls_proposals = list(calls)
        openvino_seg.decode(emb, prompt)
    finally:
        del rt.decode_all
    assert calls_proposals and all(screening for _, screening in calls_proposals)
    assert sum(n for n, _ in calls_proposals) > 20  # the scale grid and its refinements
    assert calls[-1] == (1, False)  # what the user sees: the chosen box, decoded by the main decoder


def test_a_failing_screening_decoder_is_dropped_and_the_runtime_kept(segmenter, export_root, monkeypatch):
    _needs_bf16()
    from models import openvino_runtime as ovr

    real_run = ovr.OpenVinoGraph.run

    def broken_twin(self, feeds, **kw):  # the all-bf16 screening graphs only (not the mixed decoder's bf16 half)
        out = real_run(self, feeds, **kw)
        twin = self.precision == "bf16" and "point_coords" in feeds
        return [o - 50.0 if o.ndim == 4 and twin else o for o in out]

    monkeypatch.setattr(ovr.OpenVinoGraph, "run", broken_twin)
    seg = _twin(segmenter)
    rep = attach_runtime(seg, "auto", export_root=export_root)
    assert rep.active == "openvino" and rep.decoder_runtime == "openvino" and rep.decoder_precision == "mixed", rep.reason
    assert rep.screening == "" and not seg.runtime.can_screen
    assert "bf16 screening decoder not used" in rep.reason
