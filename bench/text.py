"""Text prompts benchmark: typed query -> concept -> template box -> LiteMedSAM mask, on deformed Colin27.

    .venv/bin/python bench/text.py [--subjects 5] [--quick]

Data: `--subjects` deformed Colin27 "patients" (bench/deform.py: random affine +-10 deg / +-10 % /
+-10 mm, B-spline, bias field, noise; exact AAL labels and brain mask under the same warp).
Structures: 12 AAL regions x 2 sides (hippocampus, putamen, caudate, thalamus, amygdala, pallidum,
insula, precentral, postcentral, cuneus, lingual, superior temporal) + the brain mask = 25.
Phrasings, >= 5 per structure: plain name with side, AAL code, 'the <side> <synonym>', 'L/R <name>',
'segment the <name> on the <side>', and one free paraphrase NOT in the vocabulary (matched, if at
all, by MiniLM similarity). Unknown words: 30 non-targets (other body parts, objects, nonsense).

Measures:
  concept_top1  share of phrasings whose first parsed target is the right structure (and only it);
  hit_rate      share of (subject, structure) whose template box has IoU >= 0.5 with the truth's
                tight box, on the slice where the structure is largest (each base's slice is the
                one where left + right are largest together, so one encoding serves both sides);
  dice          LiteMedSAM Dice with the template box; oracle_dice: with the truth's tight box
                (same slice, same run) -- the ratio is the issue's ">= 0.85x" target; the warped
                atlas mask itself (no SAM) is printed as a second baseline;
  notfound      share of unknown-word queries that give no target (and so no prompt);
  query_ms      median time of one query once the study is registered (parse + localise + decode,
                the slice embedding cached); registration time per subject is printed separately.
Registration runs once per subject (3-D), and every query reuses it. Timings on a shared 2-core CPU
are noisy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.deform import deformed_subject  # noqa: E402
from integrations.metrics import box_iou, box_of, dice  # noqa: E402
from integrations.windowing import slice_image, volume_window  # noqa: E402
from prompting.promptset import PromptSet  # noqa: E402

BASES = {  # AAL base -> (plain name, free paraphrase not in the vocabulary)
    "Hippocampus": ("hippocampus", "hippocampal body"),
    "Putamen": ("putamen", "putamen nucleus"),
    "Caudate": ("caudate nucleus", "caudate nucleus head"),
    "Thalamus": ("thalamus", "thalamic nuclear mass"),
    "Amygdala": ("amygdala", "amygdaloid region"),
    "Pallidum": ("globus pallidus", "globus pallidus nucleus"),
    "Insula": ("insula", "insular region cortex"),
    "Precentral": ("precentral gyrus", "precentral motor gyrus"),
    "Postcentral": ("postcentral gyrus", "postcentral sensory gyrus"),
    "Cuneus": ("cuneus", "cuneus of the occipital lobe"),
    "Lingual": ("lingual gyrus", "lingual cortex gyrus"),
    "Temporal_Sup": ("superior temporal gyrus", "temporal lobe superior gyrus"),
}
BRAIN_PHRASES = ["brain", "whole brain", "the brain parenchyma", "segment the entire brain", "brain tissue mask",
                 "all of the brain"]
UNKNOWN = ["banana", "xylophone solo", "qwertyuiop", "the moon", "sky", "elbow", "knee", "nose", "toe", "shoulder",
           "coffee", "car engine", "weather", "laptop", "guitar", "mitochondria", "pizza", "wrist", "ankle",
           "fingernail", "tooth", "hair", "tongue", "lip", "ear", "forearm", "left banana", "right elbow",
           "segment the teapot", "zorblax"]
SIDE = {"L": "left", "R": "right"}


def phrasings(vocab) -> list[tuple[str, str]]:
    """(query, expected display) pairs."""
    out = []
    for base, (name, free) in BASES.items():
        syn = vocab.concepts[base].synonyms[0]
        for s, word in SIDE.items():
            exp = f"{base}_{s}"
            out += [(f"{word} {name}", exp), (exp, exp), (f"the {word} {syn}", exp), (f"{s} {name}", exp),
                    (f"segment the {name} on the {word}", exp), (f"{word} {free}", exp)]
    out += [(p, "brain") for p in BRAIN_PHRASES]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="text prompt benchmark")
    ap.add_argument("--subjects", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 subjects, 4 bases (smoke run)")
    args = ap.parse_args()
    bases = dict(list(BASES.items())[:4]) if args.quick else BASES
    n_subjects = 2 if args.quick else args.subjects

    from models.registry import build_segmenter
    from models.text_encoder import MiniLMEncoder
    from prompting.query import QueryParser
    from prompting.template_localiser import TemplateLocaliser, load_template
    from prompting.text_prompt import TextPrompter
    from prompting.vocabulary import load_vocabulary

    t0 = time.perf_counter()
    encoder = MiniLMEncoder()
    vocab = load_vocabulary(use_env=False)
    parser = QueryParser(vocab, encoder=encoder)
    print(f"text encoder loaded in {time.perf_counter() - t0:.1f} s")

    # ---- 1. concepts -------------------------------------------------------------------------
    pairs = [(q, e) for q, e in phrasings(vocab) if e == "brain" or e.rsplit("_", 1)[0] in bases]
    ok, wrong, parse_ms = 0, [], []
    free_ok = free_n = 0
    for q, exp in pairs:
        t = time.perf_counter()
        r = parser.parse(q)
        parse_ms.append(1000 * (time.perf_counter() - t))
        got = [x.display for x in r.targets]
        hit = got == [exp]
        ok += hit
        if not hit:
            wrong.append(f"{q!r} -> {got}")
        if any(q.endswith(free) for _, free in BASES.values()):
            free_n += 1
            free_ok += hit
    concept_top1 = ok / len(pairs)
    nf = [not parser.parse(u).found for u in UNKNOWN]
    notfound = float(np.mean(nf))
    print(f"\nconcepts: {ok}/{len(pairs)} phrasings right ({concept_top1:.3f}); free paraphrases {free_ok}/{free_n}; "
          f"parse median {np.median(parse_ms):.1f} ms")
    for w in wrong:
        print("  wrong:", w)
    print(f"unknown words: {sum(nf)}/{len(UNKNOWN)} not found" +
          "".join(f"\n  FOUND: {u!r} -> {parser.parse(u).explain()}" for u, f in zip(UNKNOWN, nf) if not f))

    # ---- 2. localisation and segmentation ----------------------------------------------------
    segmenter = build_segmenter("litemedsam")
    template = load_template()
    rows = []
    query_ms = []
    reg_s = []
    for seed in range(n_subjects):
        subj = deformed_subject(seed)
        localiser = TemplateLocaliser(template)  # fresh per subject: one registration each, reused by every query
        prompter = TextPrompter(parser, localiser)
        bounds = volume_window(subj.t1)
        t = time.perf_counter()
        reg = localiser.register_volume(subj.t1)
        reg_s.append(time.perf_counter() - t)
        print(f"\nsubject {seed}: registered in {reg_s[-1]:.1f} s (NCC {reg.quality:.3f}, confidence {reg.confidence:.2f})")
        jobs = [(f"{b}_{s}", f"{SIDE[s]} {bases[b][0]}", b) for b in bases for s in SIDE] + [("brain", "brain", "brain")]
        slice_of = {}
        for b in list(bases) + ["brain"]:
            m = subj.label_mask(f"{b}_L") | subj.label_mask(f"{b}_R") if b != "brain" else subj.label_mask("brain")
            slice_of[b] = int(np.argmax(m.reshape(m.shape[0], -1).sum(1)))
        for name, query, base in jobs:
            z = slice_of[base]
            truth = subj.label_mask(name)[z]
            if truth.sum() < 10:
                continue
            image01 = slice_image(subj.t1, z, bounds)
            emb = segmenter.embed(image01)  # cached per slice: query_ms measures the interactive part
            t = time.perf_counter()
            result = prompter.prompts_for_slice(query, subj.t1, z, image01)
            segs = segmenter.decode_batch(emb, result.prompts) if result.found else []
            query_ms.append(1000 * (time.perf_counter() - t))
            gt_box = box_of(truth)
            oracle = segmenter.decode(emb, PromptSet.from_box(*gt_box))
            if segs:
                b = result.prompts[0].box
                iou = box_iou(gt_box, (b.x0, b.y0, b.x1, b.y1))
                d = dice(segs[0].mask, truth)
                conf = b.confidence
            else:
                iou, d, conf = 0.0, 0.0, 0.0
            atlas = localiser.localise_volume(subj.t1, ("mask:brain",) if name == "brain" else (name,)).mask[z]
            rows.append(dict(subject=seed, name=name, z=z, iou=iou, dice=d, oracle=dice(oracle.mask, truth),
                             atlas=dice(atlas, truth), conf=conf))
        sub = [r for r in rows if r["subject"] == seed]
        print(f"  {len(sub)} structures: hit {np.mean([r['iou'] >= 0.5 for r in sub]):.2f}, "
              f"Dice {np.mean([r['dice'] for r in sub]):.3f}, oracle {np.mean([r['oracle'] for r in sub]):.3f}")

    # ---- 3. table ----------------------------------------------------------------------------
    names = list(dict.fromkeys(r["name"] for r in rows))
    print(f"\n{'structure':<16} {'n':>2} {'hit':>5} {'boxIoU':>6} {'Dice':>6} {'oracle':>6} {'ratio':>6} {'atlas':>6} {'conf':>5}")
    for n in names:
        rs = [r for r in rows if r["name"] == n]
        d, o = np.mean([r["dice"] for r in rs]), np.mean([r["oracle"] for r in rs])
        print(f"{n:<16} {len(rs):>2} {np.mean([r['iou'] >= 0.5 for r in rs]):>5.2f} {np.mean([r['iou'] for r in rs]):>6.3f} "
              f"{d:>6.3f} {o:>6.3f} {d / max(o, 1e-9):>6.2f} {np.mean([r['atlas'] for r in rs]):>6.3f} "
              f"{np.mean([r['conf'] for r in rs]):>5.2f}")
    hit_rate = float(np.mean([r["iou"] >= 0.5 for r in rows]))
    mean_dice = float(np.mean([r["dice"] for r in rows]))
    oracle_dice = float(np.mean([r["oracle"] for r in rows]))
    atlas_dice = float(np.mean([r["atlas"] for r in rows]))
    print(f"{'ALL':<16} {len(rows):>2} {hit_rate:>5.2f} {np.mean([r['iou'] for r in rows]):>6.3f} {mean_dice:>6.3f} "
          f"{oracle_dice:>6.3f} {mean_dice / oracle_dice:>6.2f} {atlas_dice:>6.3f}")
    print(f"\nDice / oracle Dice = {mean_dice / oracle_dice:.3f} (target >= 0.85); warped atlas alone {atlas_dice:.3f}; "
          f"registration {np.mean(reg_s):.1f} s per subject (once); query median {np.median(query_ms):.0f} ms")
    print(f"RESULT concept_top1={concept_top1:.4f} hit_rate={hit_rate:.4f} dice={mean_dice:.4f} "
          f"oracle_dice={oracle_dice:.4f} notfound={notfound:.4f} query_ms={np.median(query_ms):.1f}")


if __name__ == "__main__":
    main()
