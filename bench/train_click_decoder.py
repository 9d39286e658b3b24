"""Fine-tune a twin of LiteMedSAM's prompt encoder + mask decoder on CLICKS: the product's click
decoder (models/click_decoder.py, docs/prompting.md "A click decoder" and "The click decoder answers").

LiteMedSAM was trained on boxes: one click decodes to an empty mask (DESIGN.md). The product turns a
click into ~65 box proposals and a learned choice (prompting/clicks.py, ~0.9 s), or, for a structure
this decoder reads well, lets it answer in one decode (`prompting.clicks.read_answer`). This script
trains one over the frozen image encoder's embeddings and measures it on the bench's click cases
against the click path without it, in the same run; `bundle` writes a checkpoint as the product's file
(int8 changes to LiteMedSAM's decoder weights, under 5 MB):

    .venv/bin/python bench/train_click_decoder.py build [--out /tmp/clinseg-clickdec-data.pt] [--images-only]
    .venv/bin/python bench/train_click_decoder.py train [--data ...] [--steps 800] [--device cpu|cuda] [--init ckpt]
                                                        [--synthetic N --p-synthetic P] [--out ckpt.pt]
    .venv/bin/python bench/train_click_decoder.py eval ckpt.pt [ckpt2.pt ...] [--offsets 0,0.5]
    .venv/bin/python bench/train_click_decoder.py bundle ckpt.pt [--out models/click_decoder.pt]

The bundled one (2026-12-04): `build --images-only` (the model inputs as uint8 and the masks, 10 MB, so
the encoder runs where the training does), `train --device cuda --steps 5000` on one H200 (7 min, three
runs sharing it), then on 2 CPU cores `train --init THAT --synthetic 150 --p-synthetic 0.5 --steps 400
--lr 5e-5` (11 min, + 6 min encoding): trained on brain MRI and nuclei alone for 5,000 steps the twin
had forgotten outlines (a synthetic disc read at Dice 0.35), the synthetic shapes bring them back.

Training images (never the bench's): Colin27 axial slices 8-12 mm from every slice bench/prompts.py uses
(every AAL region of >= 150 px and the brain mask), deformed subjects 1-6 (bench/deform.py; the volume
bench uses 0) every 8 mm, the nuclei of stardist's images that no bench subset uses
(bench/train_ranker.nuclei_training), and with `--synthetic` generated shapes (`synthetic_cases`). Each
step takes one image and up to `--batch` of its structures; the first click is the simulated user's
(deepest point + noise) or, 40 % of the time, a random deep interior point; with `--max-clicks` > 1
half of the steps add correction clicks at the deepest point of the current answer's larger error.
Loss: SAM's, per structure the best of the three multimask outputs (5 x BCE + Dice) plus the IoU
head's squared error against each output's true IoU.

On 2 CPU cores a step of 8 structures takes ~2 s (decoder forward + backward at 256 x 256); on an
H200 ~85 ms with three trainings sharing it (the correction clicks' numpy work dominates).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LOW_RES = 256  # LiteMedSAM's low-res logits side (= its input side): targets live in that frame
BENCH_SLICE_GAP = (8, 10, 12)  # Colin27 training slices: this many mm past a bench slice (bench: first + 5 + 20 k)


# -- training data -------------------------------------------------------------------------------

def training_cases(deformed_seeds=(1, 2, 3, 4, 5, 6), step_mm: int = 8) -> list:
    import SimpleITK as sitk

    from bench.deform import deformed_subject
    from bench.devdata import MRICRON, Case, aal_names
    from bench.train_ranker import _aal_slice_cases, nuclei_training

    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "ch2.nii.gz"))).astype(np.float32)
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "aal.nii.gz")))
    bet = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "ch2bet.nii.gz")))
    zs = np.nonzero(aal.reshape(aal.shape[0], -1).any(1))[0]
    cases = []

    def add(t, lab, brain, z, group, names):
        cases.extend(_aal_slice_cases(t, lab, z, group, names, 1000))
        if (brain[z] > 0).sum() > 500:
            cases.append(Case(t[z], brain[z] > 0, f"brain@{group}", group))

    for z in range(int(zs.min()), int(zs.max())):
        if (z - (int(zs.min()) + 5)) % 20 in BENCH_SLICE_GAP:
            add(t1, aal, bet, z, f"colin27-z{z}", aal_names())
    for seed in deformed_seeds:
        s = deformed_subject(seed)
        zz = np.nonzero(s.aal.voxels.reshape(s.aal.voxels.shape[0], -1).any(1))[0]
        for z in range(int(zz.min()) + 3 + seed, int(zz.max()) - 3, step_mm):
            add(s.t1.voxels.astype(np.float32), s.aal.voxels, s.brain.voxels, z, f"deformed{seed}-z{z}", s.names)
    return cases + nuclei_training(1000)


def synthetic_cases(n: int, seed: int = 0) -> list:
    """`n` images of shapes a click should find anywhere: ellipses, rotated rectangles and wobbly blobs,
    brighter or darker than a smooth, noisy background, with sharp or soft edges, later shapes
    hiding parts of earlier ones. Trained on brain MRI and nuclei alone for 5,000 steps, the twin read a
    synthetic disc at Dice 0.48 (docs/prompting.md): these keep it reading outlines."""
    from scipy import ndimage as ndi

    from bench.devdata import Case

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(160, 320)), int(rng.integers(160, 320))
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        field = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(8, 40))
        base = rng.uniform(0.15, 0.7)
        img = base + rng.uniform(0, 0.12) * field / (field.std() + 1e-6)
        label = np.zeros((h, w), np.int32)
        for k in range(1, int(rng.integers(1, 5)) + 1):
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            a, b = rng.uniform(0.03, 0.3, 2) * min(h, w)
            th = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
            v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
            kind = int(rng.integers(3))
            if kind == 0:
                m = (u / a) ** 2 + (v / b) ** 2 < 1
            elif kind == 1:
                m = (np.abs(u) < a) & (np.abs(v) < b)
            else:
                wobble = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), max(2.0, min(a, b) / 2))
                m = np.sqrt((u / a) ** 2 + (v / b) ** 2) + 0.3 * wobble / (wobble.std() + 1e-6) < 1
            label[m] = k
        for k in range(1, label.max() + 1):
            value = np.clip(base + rng.choice([-1, 1]) * rng.uniform(0.12, 0.6), 0.02, 0.98)
            texture = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(1, 6))
            img = np.where(label == k, value + rng.uniform(0, 0.06) * texture / (texture.std() + 1e-6), img)
        img = ndi.gaussian_filter(img, rng.uniform(0, 1.5)) + rng.normal(0, rng.uniform(0.005, 0.05), (h, w))
        img = np.clip(img, 0, 1).astype(np.float32)
        for k in range(1, label.max() + 1):
            if (label == k).sum() >= 30:
                out.append(Case(img, label == k, f"shape{k}", f"synthetic{i}"))
    return out


def model_frame_mask(mask: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """A slice-grid mask in the decoder's low-res frame: resized to the embedding's `input_size` (the
    whole 256 x 256 for LiteMedSAM, which stretches), zero padding bottom/right for "longest" backends."""
    import cv2

    ih, iw = input_size
    small = cv2.resize(mask.astype(np.float32), (iw, ih), interpolation=cv2.INTER_AREA) > 0.5
    out = np.zeros((LOW_RES, LOW_RES), np.uint8)
    out[:ih, :iw] = small
    return out


def _zipped(a: np.ndarray) -> dict:
    return {"shape": a.shape, "dtype": str(a.dtype), "bytes": zlib.compress(np.ascontiguousarray(a).tobytes(), 6)}


def _unzipped(z: dict) -> np.ndarray:
    return np.frombuffer(zlib.decompress(z["bytes"]), dtype=z["dtype"]).reshape(z["shape"])


def windowed_groups(cases: list):
    """(group, its cases, the windowed image they share), one per image."""
    from integrations.windowing import apply_window, default_window, window_bounds

    groups: dict[str, list] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    for g, cs in groups.items():
        yield g, cs, apply_window(cs[0].image, window_bounds(default_window(cs[0].modality), cs[0].image)).astype(np.float32)


def pack_cases(seg, cases: list) -> list[dict]:
    """Like embed_cases without the encoder: each image's model input (uint8) and its masks, compressed,
    a few MB in all, so that the encoder runs where the training does (`train --device cuda`)."""
    out = []
    for g, cs, img in windowed_groups(cases):
        x = seg.model_input(img)[0].numpy()
        x = x[0] if np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2]) else x
        masks = np.stack([model_frame_mask(c.mask, seg.transform_for(img.shape[:2]).input_size) for c in cs])
        out.append({"group": g, "input": _zipped(np.round(x * 255).clip(0, 255).astype(np.uint8)),
                    "masks_packed": _zipped(np.packbits(masks, axis=-1)), "names": [c.name for c in cs]})
    return out


@torch.inference_mode()
def embed_packed(seg, data: list[dict], device: str) -> None:
    """In place: packed entries (pack_cases) get their masks and the encoder's features, computed on `device`."""
    todo = [d for d in data if "features" not in d]
    if not todo:
        return
    encoder = copy.deepcopy(seg.sam.image_encoder).eval().to(device)
    if device.startswith("cuda"):  # the product encodes in full fp32: no TF32 shortcuts here either
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    for d in todo:
        x = torch.from_numpy(_unzipped(d.pop("input")).astype(np.float32) / 255.0)
        x = (x.expand(3, *x.shape) if x.ndim == 2 else x)[None].to(device)
        d["features"] = encoder(x).to(torch.float16).cpu()
        d["masks"] = np.unpackbits(_unzipped(d.pop("masks_packed")), axis=-1)[..., :LOW_RES].astype(np.uint8)
    print(f"embedded {len(todo)} images on {device}", flush=True)


def embed_cases(seg, cases: list) -> list[dict]:
    out = []
    for g, cs, img in windowed_groups(cases):
        emb = seg.embed(img)
        out.append({"group": g, "features": emb.features.detach().to(torch.float16).clone(),
                    "masks": np.stack([model_frame_mask(c.mask, emb.input_size) for c in cs]),
                    "names": [c.name for c in cs]})
    return out


# -- clicks in the model frame ---------------------------------------------------------------------

def depth(mask: np.ndarray) -> np.ndarray:
    """Distance to the border, the image edge counting as border: the simulated user's measure."""
    from bench.simulated_users import _inner_distance

    return _inner_distance(mask)


def first_click(dt: np.ndarray, rng: np.random.Generator, p_deepest: float = 0.6, sigma: float = 2.4) -> tuple[float, float]:
    """(x, y) in the model frame: the simulated user's deepest point + noise, or a random deep interior point."""
    if rng.random() < p_deepest:
        y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
        return float(x + 0.5 + rng.normal(0, sigma)), float(y + 0.5 + rng.normal(0, sigma))
    ys, xs = np.nonzero(dt >= max(1.0, 0.3 * dt.max()))
    k = rng.integers(len(xs))
    return float(xs[k] + rng.random()), float(ys[k] + rng.random())


def correction_click(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float] | None:
    """(x, y, label): the deepest point of the larger error (missed -> positive, extra -> negative)."""
    missed, extra = truth & ~predicted, predicted & ~truth
    err, label = (missed, 1.0) if missed.sum() >= extra.sum() else (extra, 0.0)
    if not err.any():
        return None
    y, x = np.unravel_index(int(np.argmax(depth(err))), err.shape)
    return float(x) + 0.5, float(y) + 0.5, label


# -- model and loss --------------------------------------------------------------------------------

def click_modules(segmenter, checkpoint: str | None = None):
    """Copies of the segmenter's prompt encoder and mask decoder, optionally with fine-tuned weights."""
    pe, md = copy.deepcopy(segmenter.sam.prompt_encoder), copy.deepcopy(segmenter.sam.mask_decoder)
    # the twin is trained whatever the segmenter's own modules were set to (others freeze them)
    pe.requires_grad_(True)
    md.requires_grad_(True)
    if checkpoint:
        from models.click_decoder import checkpoint_states

        pe_state, md_state = checkpoint_states(torch.load(checkpoint, weights_only=True, map_location="cpu"), segmenter.sam)
        pe.load_state_dict(pe_state)  # float16 and int8-delta bundles too
        md.load_state_dict(md_state)
    return pe, md


def decode_clicks(pe, md, features: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor):
    """(B, N, 2) model-frame clicks, (B, N) labels on one image -> logits (B, 3, 256, 256), IoU (B, 3)."""
    sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
    return md(image_embeddings=features, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
              dense_prompt_embeddings=dense, multimask_output=True)


def click_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
               iou_weight: float = 1.0) -> tuple[torch.Tensor, float]:
    """SAM's multimask loss: per target the best output's 5 x BCE + Dice, weighted; + IoU head MSE."""
    t = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((2, 3))
    p = torch.sigmoid(logits)
    soft_dice = 1 - (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    best = (5 * bce + soft_dice).min(1).values
    seg_loss = (best * weight).sum() / weight.sum()
    with torch.no_grad():
        hard = (logits > 0).float()
        iou_true = (hard * t).sum((2, 3)) / ((hard + t) > 0).float().sum((2, 3)).clamp(min=1)
    return seg_loss + iou_weight * F.mse_loss(iou_pred, iou_true), float(seg_loss.detach())


# -- commands --------------------------------------------------------------------------------------

def build(args) -> None:
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter

    seg = build_segmenter("litemedsam", cache=EmbeddingCache(disk_dir=args.cache_dir or None))
    t0 = time.perf_counter()
    cases = training_cases(tuple(int(s) for s in args.deformed_seeds.split(",")), args.step_mm)
    data = pack_cases(seg, cases) if args.images_only else embed_cases(seg, cases)
    torch.save(data, args.out)
    print(f"{len(cases)} structures on {len(data)} images -> {args.out} ({time.perf_counter() - t0:.0f} s)")


def train_steps(pe, md, data: list[dict], steps: int, lr: float, rng: np.random.Generator, batch: int = 8,
                max_clicks: int = 3, p_nuclei: float = 0.35, brain_weight: float = 3.0, iou_weight: float = 1.0,
                device: str = "cpu", log_every: int = 50, p_synthetic: float = 0.0) -> list[float]:
    """Fine-tune `pe`, `md` in place; returns the per-step segmentation loss."""
    pe.train().to(device)
    md.train().to(device)
    params = [p for p in list(pe.parameters()) + list(md.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=min(0.5, max(0.05, 3 / steps)))
    for d in data:
        d.setdefault("depth", [depth(m) for m in d["masks"]])
        d.setdefault("brain", [j for j, n in enumerate(d["names"]) if n.startswith("brain@")])
    shapes = [d for d in data if d["group"].startswith("synthetic")]
    nuclei = [d for d in data if d["group"].startswith("stardist")]
    others = [d for d in data if not d["group"].startswith(("stardist", "synthetic"))] or nuclei or shapes
    nuclei = nuclei or others
    shapes = shapes or others
    history, t0 = [], time.perf_counter()
    for step in range(steps):
        u = rng.random()
        pool_of = shapes if u < p_synthetic else nuclei if u < p_synthetic + p_nuclei else others
        d = pool_of[rng.integers(len(pool_of))]
        pool = [j for j in range(len(d["masks"])) if j not in d["brain"]] or list(range(len(d["masks"])))
        idx = list(rng.choice(pool, size=min(batch, len(pool)), replace=False))
        if d["brain"] and rng.random() < 0.5:  # whole organs are few: put one in half of the batches
            idx[0] = d["brain"][0]
        idx = np.array(idx, dtype=int)
        weight = torch.tensor([brain_weight if i in d["brain"] else 1.0 for i in idx], device=device)
        features = d["features"].float().to(device)
        target = torch.from_numpy(d["masks"][idx].astype(np.float32)).to(device)
        clicks = [[(*first_click(d["depth"][i], rng), 1.0)] for i in idx]
        n_clicks = 1 if max_clicks == 1 or rng.random() < 0.5 else int(rng.integers(2, max_clicks + 1))
        for _ in range(1, n_clicks):
            with torch.no_grad():
                lo, io = decode_clicks(pe, md, features, *_click_tensors(clicks, device))
                answer = (lo[torch.arange(len(idx)), io.argmax(1)] > 0).cpu().numpy()
            for j, i in enumerate(idx):
                c = correction_click(d["masks"][i].astype(bool), answer[j])
                clicks[j].append(c if c is not None else clicks[j][-1])
        logits, iou = decode_clicks(pe, md, features, *_click_tensors(clicks, device))
        loss, seg_loss = click_loss(logits, iou, target, weight, iou_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(seg_loss)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step}: loss {np.mean(history[-log_every:]):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    pe.eval().cpu()
    md.eval().cpu()
    return history


def _click_tensors(clicks: list[list[tuple[float, float, float]]], device: str):
    coords = torch.tensor([[c[:2] for c in cs] for cs in clicks], dtype=torch.float32, device=device)
    labels = torch.tensor([[c[2] for c in cs] for cs in clicks], dtype=torch.float32, device=device)
    return coords, labels


def bundle(args) -> None:
    from models.click_decoder import save_checkpoint
    from models.registry import build_segmenter

    segmenter = build_segmenter("litemedsam", runtime="torch")
    pe, md = click_modules(segmenter, args.checkpoint)
    save_checkpoint(pe, md, args.out, base_sam=segmenter.sam)
    print(f"{args.checkpoint} -> {args.out} (int8 changes to LiteMedSAM's prompt encoder and mask decoder)")


def train(args) -> None:
    from models.registry import build_segmenter

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = build_segmenter("litemedsam", runtime="torch")
    pe, md = click_modules(seg, args.init)
    data = torch.load(args.data, weights_only=False)
    if args.synthetic:
        data += pack_cases(seg, synthetic_cases(args.synthetic, args.seed))
    embed_packed(seg, data, args.device)
    train_steps(pe, md, data, args.steps, args.lr, np.random.default_rng(args.seed), args.batch, args.max_clicks,
                args.p_nuclei, args.brain_weight, args.iou_weight, args.device, p_synthetic=args.p_synthetic)
    torch.save({"prompt_encoder": pe.state_dict(), "mask_decoder": md.state_dict()}, args.out)
    print(f"saved {args.out}")


@torch.inference_mode()
def click_answer(segmenter, pe, md, emb, clicks) -> tuple[np.ndarray, float]:
    """The decoder's answer to `clicks` (slice-grid Points): the output its IoU head rates best."""
    tr = segmenter.transform_for(emb.original_size)  # LiteMedSAM stretches the slice to 256 x 256
    xy = tr.coords_to_model(np.array([[p.x + 0.5, p.y + 0.5] for p in clicks], np.float32))
    coords = torch.from_numpy(xy[None])
    labels = torch.tensor([[1.0 if p.positive else 0.0 for p in clicks]])
    lo, io = decode_clicks(pe, md, emb.features.float(), coords, labels)
    k = int(io[0].argmax())
    return tr.logits_to_image(lo[:, k:k + 1])[0, 0].numpy() > 0, float(io[0, k])


def evaluate(args) -> None:
    import bench.simulated_users as su
    from bench.prompts import SETS, one_shot, one_shot_clicks, subsample
    from integrations.metrics import dice
    from integrations.windowing import apply_window, default_window, window_bounds
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter
    from models.zoom import ZoomPolicy
    from prompting.clicks import correct_with_click, propose_from_points
    from prompting.promptset import PromptSet

    seg = build_segmenter("litemedsam", cache=EmbeddingCache(disk_dir=args.cache_dir or None))
    zoom = ZoomPolicy()
    models = {Path(p).stem: click_modules(seg, p) for p in args.checkpoints}
    rows: dict[tuple[float, str], list[dict]] = {}
    for off in (float(o) for o in args.offsets.split(",")):
        for set_name in ("aal", "brain", "nuclei"):
            rng = np.random.default_rng(args.seed)
            for c in subsample(SETS[set_name](), 10, off):
                img = apply_window(c.image, window_bounds(default_window(c.modality), c.image)).astype(np.float32)
                emb = seg.embed(img)
                click = su.click(c.mask, rng)
                r = {"box": dice(one_shot(seg, img, PromptSet.from_box(*su.tight_box(c.mask)), zoom).mask, c.mask)}
                ps = propose_from_points(seg, emb, img, [click])
                r["click1"] = dice(one_shot_clicks(seg, img, [click], ps, zoom).mask, c.mask)
                answer, corr_rng = one_shot(seg, img, ps, zoom), np.random.default_rng(zlib.crc32(c.name.encode()))
                for _ in range(2):
                    cc = su.correction_click(c.mask, answer.mask, corr_rng)
                    if cc is None:
                        break
                    ps = correct_with_click(seg, emb, ps, None, cc, previous_mask=answer.mask)
                    answer = one_shot(seg, img, ps, zoom)
                r["click3"] = dice(answer.mask, c.mask)
                for name, (pe, md) in models.items():
                    clicks = [click]
                    mask, _ = click_answer(seg, pe, md, emb, clicks)
                    r[f"{name}_click1"] = dice(mask, c.mask)
                    corr_rng = np.random.default_rng(zlib.crc32(c.name.encode()))  # the same user as above
                    for _ in range(2):
                        cc = su.correction_click(c.mask, mask, corr_rng)
                        if cc is None:
                            break
                        clicks.append(cc)
                        mask, _ = click_answer(seg, pe, md, emb, clicks)
                    r[f"{name}_click3"] = dice(mask, c.mask)
                rows.setdefault((off, set_name), []).append(r)
    keys = list(next(iter(rows.values()))[0])
    print(f"{'subset / set':<16}" + "".join(f"{k:>16}" for k in keys))
    for (off, s), rs in rows.items():
        print(f"{f'{off} {s}':<16}" + "".join(f"{np.mean([r[k] for r in rs]):>16.3f}" for k in keys))
    every = [r for rs in rows.values() for r in rs]
    means = {k: float(np.mean([r[k] for r in every])) for k in keys}
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in means.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default="/tmp/clinseg-clickdec-data.pt")
    b.add_argument("--deformed-seeds", default="1,2,3,4,5,6")
    b.add_argument("--cache-dir", default=os.environ.get("CLINSEG_BENCH_CACHE", "/tmp/clinseg-emb-A"))
    b.add_argument("--step-mm", type=int, default=8, help="deformed subjects: one slice every this many mm")
    b.add_argument("--images-only", action="store_true",
                   help="store model inputs, not embeddings (a few MB): `train` encodes them on its --device")
    t = sub.add_parser("train")
    t.add_argument("--data", default="/tmp/clinseg-clickdec-data.pt")
    t.add_argument("--out", default="/tmp/clinseg-click-decoder.pt")
    t.add_argument("--init", default=None, help="continue from this checkpoint (default: LiteMedSAM's decoder)")
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--batch", type=int, default=8, help="structures of one image per step")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--max-clicks", type=int, default=3)
    t.add_argument("--p-nuclei", type=float, default=0.35, help="share of steps on a nuclei image")
    t.add_argument("--brain-weight", type=float, default=3.0, help="loss weight of a whole-brain target")
    t.add_argument("--iou-weight", type=float, default=1.0)
    t.add_argument("--synthetic", type=int, default=0, help="add this many synthetic shape images (synthetic_cases)")
    t.add_argument("--p-synthetic", type=float, default=0.0, help="share of steps on a synthetic image")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval")
    e.add_argument("checkpoints", nargs="+")
    e.add_argument("--offsets", default="0,0.5", help="bench/prompts.py subsets (--offset)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--cache-dir", default=os.environ.get("CLINSEG_BENCH_CACHE", "/tmp/clinseg-emb-prompts"))
    u = sub.add_parser("bundle", help="write a checkpoint as the product's click decoder (int8 delta)")
    u.add_argument("checkpoint")
    u.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "models" / "click_decoder.pt"))
    args = ap.parse_args()
    {"build": build, "train": train, "eval": evaluate, "bundle": bundle}[args.cmd](args)


if __name__ == "__main__":
    main()
