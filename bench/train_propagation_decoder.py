"""Fine-tune a twin of LiteMedSAM's prompt encoder + mask decoder for the step of 3-D propagation: the
product's propagation decoder (models/propagation_decoder.py, docs/volume.md "The propagation decoder").

    .venv/bin/python bench/train_propagation_decoder.py build [--subjects deformed1,deformed2,deformed3]
    .venv/bin/python bench/train_propagation_decoder.py train --steps 400 --max-roll 0 --lr 1e-4 --out /tmp/pd1.pt
    .venv/bin/python bench/train_propagation_decoder.py train --init /tmp/pd1.pt --steps 300 --max-roll 6 --lr 5e-5 --out /tmp/pd2.pt
    .venv/bin/python bench/train_propagation_decoder.py eval /tmp/pd2.pt
    .venv/bin/python bench/train_propagation_decoder.py bundle /tmp/pd2.pt [--out models/propagation_decoder.pt]

Data (never bench/volume.py's): deformed subjects 1-3 (bench/deform.py; the volume bench uses Colin27
and deformed0) and every AAL region except the bench's structures and their other-side twins, plus
the brain mask (bench/train_stop.py's training set). `build` encodes each axial slice that holds one
(disk cache under .bench-data/embeddings/deformedK, shared with bench/train_stop.py) and keeps, per
region and slice, the label and LiteMedSAM's mask for a tight box.

A training example is one propagation step: slice z's features; the prior = a mask on the
neighbouring slice z -+ 1 (LiteMedSAM's tight-box mask or the label, half each, eroded by 1-2 px or
dilated by 1-2 px or left as it is), the box around it (+5 % + 2 px, propagation's box); target = the
label on z (empty where the structure has ended). Propagation feeds the decoder its own masks, and a
decoder trained on one step alone drifts over many (it learned to grow under-drawn priors: on the
putamina it then grew 2-3x too large); `--max-roll R` therefore rolls the twin forward from the
prior for 0..R slices without gradients (70 % of the steps) and trains on the slice after, with its
own mask as the prior. Loss: 5 x BCE + soft Dice on the single-mask output, + the IoU head's squared
error. Held out from training: 1/7 of the region names (fixed seed); `eval` (and the end of `train`)
propagates each held-out region from LiteMedSAM's tight-box mask on its middle slice through the
label's slice range (a stop that knows the ends) with the twin and with boxes alone, and prints the
3-D Dice of both in the model frame.

On 2 CPU cores a step of 8 structures takes ~1.4 s, + ~0.3 s per rolled slice.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import os
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the segmenters built here are LiteMedSAM itself: the twin under training is this script's own
os.environ["CLINSEG_PROPAGATION_DECODER"] = "off"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DATA = "/tmp/clinseg-propdec-{subject}.pkl.gz"
HELD_OUT_SHARE = 7  # 1 region name in 7 is held out for `eval`


# -- data -----------------------------------------------------------------------------------------

def build(a) -> None:
    from bench.train_stop import CACHE, structure_list, subject
    from bench.volume import tight_box
    from integrations.windowing import apply_window, volume_window
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter

    for sname in a.subjects.split(","):
        volume, names, mask_of = subject(sname)
        seg = build_segmenter("litemedsam", cache=EmbeddingCache(max_bytes=1 << 30, disk_dir=CACHE / sname))
        bounds = volume_window(volume, None)
        truths = {s: t for s in structure_list("train", names) + ["brain"]
                  if (t := mask_of(s)).reshape(t.shape[0], -1).sum(1).max() >= 10}
        zs = sorted({int(z) for t in truths.values() for z in np.nonzero(t.reshape(t.shape[0], -1).sum(1) >= 4)[0]})
        feats, boxmask, t0 = {}, {}, time.perf_counter()
        for z in zs:
            emb = seg.embed(apply_window(volume.voxels[z], bounds))
            feats[z] = emb.features.detach().to(torch.float16).clone()
            for s, t in truths.items():
                if t[z].sum() >= 4:
                    boxmask[(s, z)] = np.packbits(seg.decode(emb, tight_box(t[z])).mask)
        packed = {s: {int(z): np.packbits(t[z]) for z in np.nonzero(t.reshape(t.shape[0], -1).any(1))[0]}
                  for s, t in truths.items()}
        with gzip.open(DATA.format(subject=sname), "wb", compresslevel=1) as f:
            pickle.dump({"feats": feats, "truth": packed, "boxmask": boxmask, "shape": tuple(volume.voxels.shape[1:])}, f)
        print(f"{sname}: {len(feats)} slices, {len(truths)} structures ({time.perf_counter() - t0:.0f} s)", flush=True)


class Subject:
    """One subject's training data: features per slice, labels and LiteMedSAM's masks (slice grid)."""

    def __init__(self, path: str, transform):
        with gzip.open(path) as f:
            d = pickle.load(f)
        self.feats, self.truth, self.boxmask, self.shape = d["feats"], d["truth"], d["boxmask"], tuple(d["shape"])
        self.transform = transform
        self.area = {s: {z: int(np.unpackbits(p).sum()) for z, p in zmap.items()} for s, zmap in self.truth.items()}

    def unpack(self, packed) -> np.ndarray:
        h, w = self.shape
        return np.unpackbits(packed)[: h * w].reshape(h, w).astype(bool)

    def label(self, s: str, z: int) -> np.ndarray:
        p = self.truth[s].get(z)
        return self.unpack(p) if p is not None else np.zeros(self.shape, bool)

    def target(self, s: str, z: int) -> np.ndarray:
        """The label on slice z in the decoder's low-res frame."""
        from models.propagation_decoder import prior_in_model_frame

        return prior_in_model_frame(self.label(s, z), self.transform, 256) > 0


def held_out_names(subjects: list[Subject]) -> set[str]:
    names = sorted({n for d in subjects for n in d.truth if n != "brain"})
    return set(np.random.default_rng(0).choice(names, size=(len(names) + 1) // HELD_OUT_SHARE, replace=False))


_K3 = np.ones((3, 3), np.uint8)


def perturbed(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The prior a propagation may hold: as it is (35 %), eroded by 1 px (25 %) or 2 px (15 %), dilated by 1 px (15 %) or 2 (10 %)."""
    import cv2

    u = rng.random()
    if u < 0.35:
        return mask
    k = 1 if u < 0.60 else 2 if u < 0.75 else -1 if u < 0.90 else -2
    if k > 0:
        e = cv2.erode(mask.astype(np.uint8), _K3, iterations=k) > 0
        return e if e.sum() >= 4 else mask
    return cv2.dilate(mask.astype(np.uint8), _K3, iterations=-k) > 0


# -- the step ----------------------------------------------------------------------------------------

def step_inputs(priors: list[np.ndarray], transform, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice-grid priors -> the decoder's boxes (propagation's: mask box + 5 % + 2 px) and mask inputs."""
    from models.propagation import PropagationConfig, _mask_box, enlarge_box
    from models.propagation_decoder import prior_in_model_frame

    c = PropagationConfig()
    boxes = [transform.box_to_model(enlarge_box(_mask_box(p), shape, c.box_margin, c.box_margin_px).as_array())[0] for p in priors]
    frames = [prior_in_model_frame(p, transform, 256) for p in priors]
    return torch.from_numpy(np.stack(boxes)).float(), torch.from_numpy(np.stack(frames))[:, None]


def decode(pe, md, features: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor | None):
    sparse, dense = pe(points=None, boxes=boxes, masks=masks)
    low, iou = md(image_embeddings=features, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                  dense_prompt_embeddings=dense, multimask_output=False)
    return low[:, 0], iou[:, 0]


def to_slice(low: torch.Tensor, transform) -> list[np.ndarray]:
    return [m > 0 for m in transform.logits_to_image_np(low.detach().numpy()[:, None])[:, 0]]


def step_loss(low: torch.Tensor, iou: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    bce = F.binary_cross_entropy_with_logits(low, target, reduction="none").mean((1, 2))
    p = torch.sigmoid(low)
    soft_dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    with torch.no_grad():
        hard = (low > 0).float()
        iou_true = (hard * target).sum((1, 2)) / ((hard + target) > 0).float().sum((1, 2)).clamp(min=1)
    seg = (5 * bce + soft_dice).mean()
    return seg + F.mse_loss(iou, iou_true), float(seg.detach())


# -- commands -------------------------------------------------------------------------------------------

def load(a):
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter

    seg = build_segmenter("litemedsam", cache=EmbeddingCache(), runtime="torch")
    subjects = [Subject(DATA.format(subject=s), None) for s in a.subjects.split(",")]
    for d in subjects:
        d.transform = seg.transform_for(d.shape)
    return seg, subjects


def twin(seg, checkpoint: str | None):
    pe, md = copy.deepcopy(seg.sam.prompt_encoder), copy.deepcopy(seg.sam.mask_decoder)
    if checkpoint:
        from models.decoder_checkpoint import checkpoint_states

        pe_state, md_state = checkpoint_states(torch.load(checkpoint, weights_only=True, map_location="cpu"), seg.sam)
        pe.load_state_dict(pe_state)
        md.load_state_dict(md_state)
    return pe, md


@torch.no_grad()
def chain_eval(seg, pe, md, subjects: list[Subject]) -> tuple[float, float, int]:
    """Held-out regions: from LiteMedSAM's tight-box mask on the middle slice, propagate through the label's
    slice range with the twin and with boxes alone; mean 3-D Dice (model frame) of each, and the count."""
    pe.eval()
    md.eval()
    held = held_out_names(subjects)
    scores = {"twin": [], "box": []}
    for d in subjects:
        for s in sorted(held & set(d.truth)):
            big = [z for z in sorted(d.truth[s]) if d.area[s][z] >= 10 and z in d.feats]
            if not big:
                continue
            z0 = big[len(big) // 2]
            anchor = d.unpack(d.boxmask[(s, z0)])
            for kind in scores:
                t0, a0 = d.target(s, z0), to_model_frame(anchor, d)
                inter, tot = int((a0 & t0).sum()), int(a0.sum() + t0.sum())
                for step in (-1, 1):
                    prev, z = anchor, z0 + step
                    while z in d.truth[s] and z in d.feats:
                        t = d.target(s, z)
                        if prev.sum() >= 4:
                            boxes, masks = step_inputs([prev], d.transform, d.shape)
                            low, _ = decode(pe, md, d.feats[z].float(), boxes, masks) if kind == "twin" else \
                                decode(seg.sam.prompt_encoder, seg.sam.mask_decoder, d.feats[z].float(), boxes, None)
                            p = (low[0] > 0).numpy()
                            inter += int((p & t).sum())
                            tot += int(p.sum())
                            prev = to_slice(low, d.transform)[0]
                        tot += int(t.sum())
                        z += step
                scores[kind].append(2 * inter / max(tot, 1))
    return float(np.mean(scores["twin"])), float(np.mean(scores["box"])), len(scores["twin"])


def to_model_frame(mask: np.ndarray, d: Subject) -> np.ndarray:
    from models.propagation_decoder import prior_in_model_frame

    return prior_in_model_frame(mask, d.transform, 256) > 0


def train(a) -> None:
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    seg, subjects = load(a)
    held = held_out_names(subjects)
    starts = [(d, z, regs) for d in subjects for z in sorted(d.feats)
              if (regs := [s for s in d.truth if s not in held and d.area[s].get(z, 0) >= 4])]
    pe, md = twin(seg, a.init)
    params = list(pe.parameters()) + list(md.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    rng = np.random.default_rng(a.seed)
    history, t0 = [], time.perf_counter()
    print(f"{len(starts)} training slices, {len(held)} region names held out; rolls up to {a.max_roll} slices", flush=True)
    for step in range(a.steps):
        d, z0, regs = starts[rng.integers(len(starts))]
        direction = 1 if rng.random() < 0.5 else -1
        roll = int(rng.integers(0, a.max_roll + 1)) if a.max_roll and rng.random() < 0.7 else 0
        while roll > 0 and z0 + (roll + 1) * direction not in d.feats:
            roll -= 1
        zt = z0 + (roll + 1) * direction
        if zt not in d.feats:
            continue
        chosen = [regs[i] for i in rng.choice(len(regs), size=min(a.batch, len(regs)), replace=False)]
        priors = []
        for s in chosen:
            own = (s, z0) in d.boxmask and rng.random() < 0.5
            priors.append(perturbed(d.unpack(d.boxmask[(s, z0)]) if own else d.label(s, z0), rng))
        pe.eval()
        md.eval()
        with torch.no_grad():
            for k in range(1, roll + 1):
                boxes, masks = step_inputs(priors, d.transform, d.shape)
                nxt = to_slice(decode(pe, md, d.feats[z0 + k * direction].float(), boxes, masks)[0], d.transform)
                keep = [i for i, m in enumerate(nxt) if m.sum() >= 4]  # propagation stops where a mask vanishes
                chosen, priors = [chosen[i] for i in keep], [nxt[i] for i in keep]
                if not chosen:
                    break
        if not chosen:
            continue
        pe.train()
        md.train()
        boxes, masks = step_inputs(priors, d.transform, d.shape)
        target = torch.from_numpy(np.stack([d.target(s, zt) for s in chosen]).astype(np.float32))
        low, iou = decode(pe, md, d.feats[zt].float(), boxes, masks)
        loss, seg_loss = step_loss(low, iou, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(seg_loss)
        if step % 25 == 0 or step == a.steps - 1:
            print(f"step {step}: loss {np.mean(history[-25:]):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    from models.decoder_checkpoint import save_checkpoint

    pe.eval()
    md.eval()
    save_checkpoint(pe, md, a.out)
    print(f"wrote {a.out}")
    if not a.no_eval:
        print("held-out regions, 3-D Dice through the label's slices: twin %.4f, boxes alone %.4f (%d structures)"
              % chain_eval(seg, pe, md, subjects), flush=True)


def evaluate(a) -> None:
    seg, subjects = load(a)
    for ckpt in a.checkpoints:
        pe, md = twin(seg, ckpt)
        print(f"{ckpt}: held-out regions, 3-D Dice through the label's slices: twin %.4f, boxes alone %.4f (%d structures)"
              % chain_eval(seg, pe, md, subjects), flush=True)


def bundle(a) -> None:
    from models.decoder_checkpoint import save_checkpoint
    from models.registry import build_segmenter

    seg = build_segmenter("litemedsam", runtime="torch")
    pe, md = twin(seg, a.checkpoint)
    save_checkpoint(pe, md, a.out, base_sam=seg.sam)
    print(f"{a.checkpoint} -> {a.out} (int8 changes to LiteMedSAM's prompt encoder and mask decoder)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--subjects", default="deformed1,deformed2,deformed3")
    t = sub.add_parser("train")
    t.add_argument("--subjects", default="deformed1,deformed2,deformed3")
    t.add_argument("--init", default=None, help="continue from this checkpoint (default: LiteMedSAM's decoder)")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch", type=int, default=8, help="structures of one slice per step")
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--max-roll", type=int, default=6, help="roll the twin forward up to this many slices (0: one step)")
    t.add_argument("--out", default="/tmp/clinseg-propagation-decoder.pt")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-eval", action="store_true")
    e = sub.add_parser("eval")
    e.add_argument("checkpoints", nargs="+")
    e.add_argument("--subjects", default="deformed1,deformed2,deformed3")
    u = sub.add_parser("bundle", help="write a checkpoint as the product's propagation decoder (int8 delta)")
    u.add_argument("checkpoint")
    u.add_argument("--out", default=str(ROOT / "models" / "propagation_decoder.pt"))
    a = ap.parse_args()
    {"build": build, "train": train, "eval": evaluate, "bundle": bundle}[a.cmd](a)


if __name__ == "__main__":
    main()
