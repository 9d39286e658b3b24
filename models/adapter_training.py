"""Train the multi-sequence adapter on a BraTS-style folder, with the image encoder and mask decoder frozen.

Layout: DATA_DIR/<case>/<sequence>.nii.gz for each sequence, plus a label map seg.nii.gz (BraTS's
own names, <case>_t1.nii.gz ... <case>_seg.nii.gz, work too). Every label > 0 is the target unless
`labels` picks some. Sequences of a case must be co-registered (same grid), which is checked.

Embeddings are computed once per slice and sequence through the segmenter's content-keyed cache
(with a disk tier under DATA_DIR/.clinseg-embeddings by default), so a second epoch, a resumed run
or a second training on the same data never runs the encoder again. Training feeds the fused
embedding and the label's box (jittered a little) to the frozen SAM mask decoder and back-propagates
BCE + Dice through it into the adapter only. Validation Dice (tight boxes, full-resolution masks) is
measured after every epoch; the best adapter is saved to `out`, the last state (with the optimiser)
to `out` + ".last" so `resume=True` continues where a run stopped.
"""
from __future__ import annotations

import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from integrations.errors import ClinsegInputError, InconsistentGeometryError
from integrations.volume import Volume
from integrations.windowing import apply_window, volume_window

from .adapter import AdapterConfig, CrossSequenceAdapter, load_adapter, save_adapter
from .cache import EmbeddingCache
from .segmentation import ImageEmbedding
from .transforms import SliceTransform

log = logging.getLogger(__name__)

LABEL_NAMES = ("seg", "label", "labels", "mask")
# BraTS order first; other names follow alphabetically.
PREFERRED_ORDER = ("t1", "t1ce", "t1gd", "t2", "flair")
NIFTI = (".nii.gz", ".nii")


class DatasetError(ClinsegInputError):
    """A training folder that does not have the expected layout."""


@dataclass
class CaseFiles:
    name: str
    sequences: dict[str, Path]
    label: Path


def _stem(path: Path) -> str:
    n = path.name
    for ext in NIFTI:
        if n.lower().endswith(ext):
            return n[: -len(ext)]
    return path.stem


def _sequence_name(stem: str, case: str) -> str:
    s = stem
    if s.lower().startswith(case.lower()):  # BraTS: <case>_t1
        s = s[len(case):]
    s = re.sub(r"^[_\-.]+", "", s)
    return s.lower()


def scan_dataset(root: str | Path) -> list[CaseFiles]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder. Expected one folder per case holding one NIfTI per sequence and seg.nii.gz.")
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [f for f in d.iterdir() if f.is_file() and f.name.lower().endswith(NIFTI)]
        seqs, label = {}, None
        for f in files:
            name = _sequence_name(_stem(f), d.name)
            if name in LABEL_NAMES:
                label = f
            else:
                seqs[name] = f
        if label is None or len(seqs) < 1:
            log.warning("skipping %s: needs a label map (seg.nii.gz) and sequences", d.name)
            continue
        cases.append(CaseFiles(d.name, seqs, label))
    if not cases:
        raise DatasetError(f"{root}: no case folders with sequences and a seg.nii.gz label map were found.")
    return cases


def common_sequences(cases: Sequence[CaseFiles]) -> tuple[str, ...]:
    common = set(cases[0].sequences)
    for c in cases[1:]:
        common &= set(c.sequences)
    if len(common) < 2:
        raise DatasetError(f"the cases share fewer than two sequences ({sorted(common)}); the adapter fuses at least two.")
    return tuple(sorted(common, key=lambda s: (PREFERRED_ORDER.index(s) if s in PREFERRED_ORDER else len(PREFERRED_ORDER), s)))


def load_case_volumes(case: CaseFiles, sequences: Sequence[str]) -> tuple[dict[str, Volume], Volume]:
    from integrations.loaders import load_volume

    vols = {s: load_volume(case.sequences[s]) for s in sequences}
    label = load_volume(case.label)
    for s, v in vols.items():
        if v.shape != label.shape or not np.allclose(v.affine, label.affine, atol=1e-3):
            raise InconsistentGeometryError(
                f"case {case.name}: sequence {s} ({v.shape}) is not on the label map's grid ({label.shape}); "
                "co-register (resample) the sequences to one grid first.")
    return vols, label


@dataclass
class Sample:
    case: str
    slice_index: int
    images: dict[str, np.ndarray]  # sequence -> windowed (H, W) [0, 1]
    mask: np.ndarray  # (H, W) bool
    box: tuple[int, int, int, int]  # tight (x0, y0, x1, y1)


def case_samples(case: CaseFiles, sequences: Sequence[str], labels: Sequence[int] | None = None,
                 slices_per_case: int = 3, min_area_px: int = 20) -> list[Sample]:
    """Up to `slices_per_case` slices spread over the label's extent (the largest cross-section first)."""
    vols, lab = load_case_volumes(case, sequences)
    lab_vox = np.rint(lab.voxels).astype(np.int32)
    target = np.isin(lab_vox, list(labels)) if labels else lab_vox > 0
    areas = target.reshape(target.shape[0], -1).sum(1)
    zs = np.nonzero(areas >= min_area_px)[0]
    if len(zs) == 0:
        return []
    if len(zs) > slices_per_case:
        picks = {int(zs[np.argmax(areas[zs])])}
        for q in np.linspace(0, len(zs) - 1, slices_per_case + 2)[1:-1]:
            if len(picks) >= slices_per_case:
                break
            picks.add(int(zs[int(round(q))]))
        zs = np.array(sorted(picks))
    bounds = {s: volume_window(v, "auto") for s, v in vols.items()}  # each sequence its own window
    out = []
    for z in zs:
        m = target[z]
        ys, xs = np.nonzero(m)
        out.append(Sample(case.name, int(z), {s: apply_window(vols[s].voxels[z], bounds[s]) for s in sequences}, m,
                          (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return out


@dataclass
class EmbeddedSample:
    sample: Sample
    features: torch.Tensor  # (S, C, h, w) float16 (memory), per-sequence embeddings
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def cached_embed(segmenter, image01: np.ndarray, cache: EmbeddingCache | None) -> ImageEmbedding:
    """segmenter.embed, with `cache` (e.g. a disk tier for the training set) consulted first."""
    if cache is None:
        return segmenter.embed(image01)
    key = segmenter.embedding_key(np.asarray(image01, np.float32))
    hit = cache.get(key)
    if hit is not None:
        return hit
    emb = segmenter.embed(image01)
    cache.put(key, emb)
    return emb


def embed_samples(segmenter, samples: Sequence[Sample], sequences: Sequence[str],
                  progress: Callable[[int, int], None] | None = None,
                  cache: EmbeddingCache | None = None) -> list[EmbeddedSample]:
    out = []
    for i, s in enumerate(samples):
        embs = [cached_embed(segmenter, s.images[q], cache) for q in sequences]
        out.append(EmbeddedSample(s, torch.cat([e.features for e in embs]).to(torch.float16), embs[0].original_size,
                                  embs[0].input_size))
        if progress is not None:
            progress(i + 1, len(samples))
    return out


# -- decoder with gradients ----------------------------------------------------------------------
def decoder_logits(sam, fused: torch.Tensor, box_model: np.ndarray) -> torch.Tensor:
    """(1, C, h, w) fused embedding + one box in the model frame -> (1, 1, s, s) low-res logits.
    SamSegmenter.decode runs under inference_mode; training needs the same call with autograd."""
    boxes = torch.as_tensor(np.asarray(box_model, np.float32).reshape(1, 4))
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    low, _ = sam.mask_decoder(image_embeddings=fused, image_pe=sam.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    return low


def _target_lowres(mask: np.ndarray, transform: SliceTransform, side: int) -> torch.Tensor:
    t = transform.image_to_model(mask.astype(np.float32))[:, :1]  # (1, 1, S, S), zero padded
    return (F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False) > 0.5).float()


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


def jitter_box(box, shape, rng: random.Random, fraction: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    j = lambda size: rng.uniform(-fraction, fraction) * size  # noqa: E731
    H, W = shape
    nx0, nx1 = min(max(0.0, x0 + j(w)), W - 1.0), min(max(0.0, x1 + j(w)), W - 1.0)
    ny0, ny1 = min(max(0.0, y0 + j(h)), H - 1.0), min(max(0.0, y1 + j(h)), H - 1.0)
    if nx1 - nx0 < 1 or ny1 - ny0 < 1:
        return float(x0), float(y0), float(x1), float(y1)
    return nx0, ny0, nx1, ny1


def _model_box(segmenter, e: EmbeddedSample, box) -> np.ndarray:
    t = segmenter.transform_for(e.original_size)
    return t.box_to_model(np.asarray(box, np.float32))[0]


def predict_mask(segmenter, adapter: CrossSequenceAdapter | None, e: EmbeddedSample, primary_index: int = 0) -> np.ndarray:
    """Full-resolution mask from the fused (or, without adapter, one sequence's) embedding and the tight box."""
    feats = e.features.to(torch.float32)
    with torch.no_grad():
        fused = adapter(feats[None]) if adapter is not None else feats[primary_index : primary_index + 1]
        low = decoder_logits(segmenter.sam, fused, _model_box(segmenter, e, e.sample.box))
        full = segmenter.transform_for(e.original_size).logits_to_image(low)
    return (full[0, 0] > 0).numpy()


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def evaluate(segmenter, adapter, data: Sequence[EmbeddedSample], primary_index: int = 0) -> float:
    if not data:
        return float("nan")
    return float(np.mean([dice_score(predict_mask(segmenter, adapter, e, primary_index), e.sample.mask) for e in data]))


@dataclass
class TrainConfig:
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 4  # samples per optimiser step (decoded one at a time, gradients summed)
    box_jitter: float = 0.05  # each box edge moves by up to this fraction of the box size
    val_fraction: float = 0.25
    slices_per_case: int = 3
    labels: tuple[int, ...] | None = None
    primary: str | None = None  # default: the last sequence (FLAIR in BraTS order)
    sequences: tuple[str, ...] | None = None
    seed: int = 0
    max_seconds: float | None = None  # stop after the epoch that crosses this wall time


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, val_dice, seconds
    best_dice: float = float("nan")
    baseline_dice: float = float("nan")  # the primary sequence alone (untrained adapter = identity)
    sequences: tuple[str, ...] = ()
    primary: str = ""
    train_samples: int = 0
    val_samples: int = 0
    resumed_from_epoch: int = 0


def split_cases(cases: Sequence[CaseFiles], val_fraction: float) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """Deterministic: every k-th case (by name) validates, so reruns and resumes see the same split."""
    if len(cases) < 2:
        raise DatasetError("training needs at least two cases (one to train on, one to validate).")
    n_val = max(1, int(round(len(cases) * val_fraction)))
    step = len(cases) / n_val
    val_idx = {int(i * step + step / 2) for i in range(n_val)}
    return [c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx]


def prepare(segmenter, data_dir, config: TrainConfig, log_fn: Callable[[str], None] = print,
            cache: EmbeddingCache | None = None):
    cases = scan_dataset(data_dir)
    sequences = tuple(config.sequences) if config.sequences else common_sequences(cases)
    for c in cases:
        missing = [s for s in sequences if s not in c.sequences]
        if missing:
            raise DatasetError(f"case {c.name} lacks sequence(s) {missing}")
    train_cases, val_cases = split_cases(cases, config.val_fraction)
    train = [s for c in train_cases for s in case_samples(c, sequences, config.labels, config.slices_per_case)]
    val = [s for c in val_cases for s in case_samples(c, sequences, config.labels, config.slices_per_case)]
    if not train or not val:
        raise DatasetError("no labelled slices found for training or validation; check the label maps (and --labels).")
    log_fn(f"{len(cases)} cases, sequences {', '.join(sequences)}: {len(train)} training and {len(val)} validation slices")
    t0 = time.perf_counter()
    report = lambda i, n: log_fn(f"  embedded {i}/{n} slices ({time.perf_counter() - t0:.0f} s)") if i % 10 == 0 or i == n else None  # noqa: E731
    etrain = embed_samples(segmenter, train, sequences, report, cache)
    eval_ = embed_samples(segmenter, val, sequences, report, cache)
    return sequences, etrain, eval_


def train_adapter(segmenter, data_dir, out, config: TrainConfig | None = None, resume: bool = False,
                  cache_dir: str | Path | None = None, log_fn: Callable[[str], None] = print) -> TrainResult:
    config = config or TrainConfig()
    data_dir = Path(data_dir)
    out = Path(out)
    scan_dataset(data_dir)  # a wrong folder fails here, before anything is created in it
    if cache_dir is None:
        cache_dir = data_dir / ".clinseg-embeddings"
    # Small memory tier: the samples keep their own float16 copies; the disk tier is the point.
    cache = EmbeddingCache(max_bytes=16 << 20, disk_dir=cache_dir) if cache_dir else None
    for p in segmenter.sam.parameters():  # encoder and decoder stay frozen
        p.requires_grad_(False)

    last_path = out.with_name(out.name + ".last")
    state = None
    if resume:
        if not last_path.is_file():
            raise DatasetError(f"--resume: no previous run at {last_path}; start without --resume.")
        adapter, state = load_adapter(last_path, backend=segmenter.version)
        sequences_ck = tuple(adapter.config.sequences)
        if config.sequences and tuple(config.sequences) != sequences_ck:
            raise DatasetError(f"--resume: the checkpoint fuses {list(sequences_ck)}, not {list(config.sequences)}")
        config = TrainConfig(**{**config.__dict__, "sequences": sequences_ck, "primary": adapter.config.primary})

    sequences, train, val = prepare(segmenter, data_dir, config, log_fn, cache)
    primary = config.primary or sequences[-1]
    if primary not in sequences:
        raise DatasetError(f"primary sequence {primary!r} is not one of the fused sequences {list(sequences)}")
    if state is None:
        torch.manual_seed(config.seed)
        adapter = CrossSequenceAdapter(AdapterConfig(sequences=sequences, primary=primary))
    adapter.train()
    opt = torch.optim.AdamW([p for p in adapter.parameters()], lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict] = []
    best = float("-inf")
    start_epoch = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        history = list(state.get("history", []))
        best = float(state.get("best_dice", best))
        start_epoch = int(state.get("epoch", 0))
        log_fn(f"resumed after epoch {start_epoch} (best validation Dice {best:.3f})")

    pidx = sequences.index(primary)
    baseline = evaluate(segmenter, None, val, pidx)
    log_fn(f"validation Dice of {primary} alone (the untrained adapter): {baseline:.3f}")
    side = segmenter.sam.prompt_encoder.mask_input_size[0]
    targets = [_target_lowres(e.sample.mask, segmenter.transform_for(e.original_size), side) for e in train]
    rng = random.Random(config.seed + start_epoch)
    t_start = time.perf_counter()
    result = TrainResult(out, history, best, baseline, sequences, primary, len(train), len(val), start_epoch)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        adapter.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        for b in range(0, len(order), config.batch_size):
            opt.zero_grad()
            batch = order[b : b + config.batch_size]
            total = 0.0
            for i in batch:
                e = train[i]
                box = jitter_box(e.sample.box, e.original_size, rng, config.box_jitter)
                fused = adapter(e.features.to(torch.float32)[None])
                loss = seg_loss(decoder_logits(segmenter.sam, fused, _model_box(segmenter, e, box)), targets[i]) / len(batch)
                loss.backward()
                total += float(loss.detach())
            opt.step()
            losses.append(total)
        adapter.eval()
        vd = evaluate(segmenter, adapter, val)
        rec = {"epoch": epoch, "loss": round(float(np.mean(losses)), 5), "val_dice": round(vd, 5),
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        log_fn(f"epoch {epoch}/{config.epochs}: loss {rec['loss']:.4f}  validation Dice {vd:.3f}  ({rec['seconds']:.1f} s)")
        meta = {"epoch": epoch, "history": history, "train_config": _jsonable(config.__dict__)}
        if vd > best or not out.exists():
            best = max(best, vd)
            save_adapter(out, adapter, segmenter.version, {**meta, "best_dice": best, "baseline_dice": baseline})
        save_adapter(last_path, adapter, segmenter.version,
                     {**meta, "best_dice": best, "baseline_dice": baseline, "optimizer": opt.state_dict()})
        if config.max_seconds is not None and time.perf_counter() - t_start > config.max_seconds:
            log_fn(f"stopping after epoch {epoch}: time budget of {config.max_seconds:.0f} s used")
            break
    result.history = history
    result.best_dice = best
    return result


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out
