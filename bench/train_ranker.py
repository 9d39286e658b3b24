"""Fit the proposal rankers (prompting/proposal_ranker.py, prompting/gaze_ranking.py) on cases
DISJOINT from bench/prompts.py's and bench/gaze.py's.

    .venv/bin/python bench/train_ranker.py collect [--out /tmp/clinseg-ranker-A.npz] [--kinds click,stroke,gaze]
    .venv/bin/python bench/train_ranker.py fit [--data /tmp/clinseg-ranker-A.npz[,B.npz...]] [--kinds gaze] [--model M] [--write]

Training cases (never the benchmark's):
  colin27   AAL regions on Colin27 axial slices 10 mm away from every slice bench/prompts.py uses
            (the bench takes z = first + 5 + 20 k; these are z = first + 15 + 20 k);
  deformed  AAL regions of deformed Colin27 subjects (bench/deform.py, seeds 1, 2; `collect --deformed-seeds`);
  organ     whole-organ targets: the brain mask on Colin27 z = 50, 70, ..., 130 (the bench: 40, 60,
            ..., 140) and on every deformed slice above (`target_set`);
  nuclei    stardist's 2D image, the nuclei that neither benchmark subset (offset 0 / 0.5, 10 cases)
            uses, and stardist's OTHER image (img3d.tif, three z slices upsampled 4x) with its labels.
For every case the simulated users of DESIGN.md (bench/simulated_users.py) make one click and one
foreground stroke; every proposal the product decodes for them (prompting.clicks.click_candidates,
prompting.scribbles.stroke_candidates) is stored with its feature vector and its Dice against the
truth. For the gaze ranker (kind "gaze"), each case is read twice by DESIGN.md's simulated reader
(bench/simulated_gaze.py, 0.5 and 1.0 deg per-sample error, the app's display zoom; the nuclei
bench/gaze.py reads are left out) and the candidates prompting.gaze.propose_box offers the ranker
(each candidate box's own mask and the vote's result) are stored the same way; its baseline
("hand" below) is the vote. `fit` fits a linear listwise ranker (softmax over a case's proposals
against softmax(Dice / T)) and gradient-boosted regression trees on each proposal's Dice, reports the
Dice of the proposal each picks (and of their ensemble: both scores standardised per case, summed)
per set with leave-one-set-out and 6-fold (by image) cross-validation next to the hand score and the
oracle (`--balance P` weighs a case of a set of n cases n^-P in both fits, 1 = every set the
same; default per kind, BALANCE), and `--write` stores the model MODEL names for the kind, fitted on everything, into
prompting/proposal_ranker.json. `--data` takes several collections (e.g. `collect --seed 0..3`:
other clicks, strokes and readings of the same cases), kept in one fold per case.
The bundled stroke ranker comes from this collection (2026-12-03, seeds 0/1/2, since
bench/simulated_users.scribble runs the skeleton's longest path). The bundled click ranker reads the
click decoder's opinion (READ_FEATURES: each proposal's IoU with models/click_decoder.py's masks; the
segmenter collect builds has the bundled decoder): `collect --kinds click --seed S` and `collect --kinds
click --sets deformed --deformed-seeds 3,4,5 --first-case 50000 --seed S` for S = 0, 1, 2 (912 readings,
2026-12-03); "click_plain", used when no click decoder is loaded, is the one fitted before it (597
readings, `collect --seed 0/1/2`, without READ_FEATURES). The bundled gaze ranker comes from a
collection made before it, when only every other deformed slice gave a brain case and brain cases
were stored under their subject's set (the gaze readings of stop 20).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import simulated_users as su  # noqa: E402
from bench.devdata import MRICRON, Case, nuclei_cases  # noqa: E402
from integrations.metrics import dice  # noqa: E402
from prompting.gaze_ranking import GAZE_FEATURES  # noqa: E402
from prompting.proposal_ranker import CLICK_FEATURES, READ_FEATURES, STROKE_FEATURES, WEIGHTS_PATH  # noqa: E402

KINDS = {"click": CLICK_FEATURES + READ_FEATURES, "stroke": STROKE_FEATURES, "gaze": GAZE_FEATURES}
# softmax temperature of the Dice targets per kind (chosen by the cross-validation below: for gaze
# readings 0.05 / 0.1 / 0.2 / 0.4 gave 0.589 / 0.594 / 0.598 / 0.598, the vote 0.564)
TEMPERATURE = {"click": 0.05, "stroke": 0.05, "gaze": 0.2}
# which model each kind's bundled ranker is (the fit prints both in the same cross-validation)
MODEL = {"click": "ensemble", "stroke": "ensemble", "gaze": "ensemble"}
# set weighting per kind (set_balance): clicks weigh every set the same, chosen by the mean over sets of
# the cross-validated Dice (3 draws; 0 / 0.5 / 1: 0.565 / 0.573 / 0.589; docs/prompting.md)
BALANCE = {"click": 1.0, "stroke": 0.0, "gaze": 0.0}
MAX_OUTSIDE = 0.04  # the most unusual training case of any kind: 5 %; a synthetic disc's clicks: 9 %
TREE_PARAMS = {"max_depth": 4, "max_iter": 300, "learning_rate": 0.03, "min_samples_leaf": 40}
GAZE_SIGMAS = (0.5, 1.0)  # per-sample gaze error (deg) of the simulated readings, as bench/gaze.py


# -- training cases --------------------------------------------------------------------------------

def _spread(cases: list, n: int) -> list:
    if len(cases) <= n:
        return cases
    return [cases[i] for i in np.linspace(0, len(cases) - 1, n).round().astype(int)]


def _aal_slice_cases(t1: np.ndarray, aal: np.ndarray, z: int, group: str, names: dict, per_slice: int,
                     min_px: int = 150) -> list[Case]:
    labels, counts = np.unique(aal[z], return_counts=True)
    cases = [Case(t1[z], aal[z] == lab, f"{names.get(int(lab), lab)}@{group}", group)
             for lab, cnt in zip(labels, counts) if lab > 0 and cnt >= min_px]
    return _spread(cases, per_slice)


def colin27_training(per_slice: int) -> list[Case]:
    import SimpleITK as sitk

    from bench.devdata import aal_names

    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "ch2.nii.gz"))).astype(np.float32)
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "aal.nii.gz")))
    bet = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "ch2bet.nii.gz")))
    names = aal_names()
    zs = np.nonzero(aal.reshape(aal.shape[0], -1).any(1))[0]
    out = []
    # bench/devdata.aal_cases uses z = zs.min() + 5 + 20 k: these slices lie halfway between
    for z in range(int(zs.min()) + 15, int(zs.max()), 20):
        out += _aal_slice_cases(t1, aal, z, f"colin27-z{z}", names, per_slice)
    out += [Case(t1[z], bet[z] > 0, f"brain@z{z}", f"colin27-z{z}") for z in (50, 70, 90, 110, 130)]
    return out


def deformed_training(seeds: tuple[int, ...], per_slice: int) -> list[Case]:
    from bench.deform import deformed_subject

    out = []
    for seed in seeds:
        s = deformed_subject(seed)
        t1, aal, brain = s.t1.voxels.astype(np.float32), s.aal.voxels, s.brain.voxels
        zs = np.nonzero(aal.reshape(aal.shape[0], -1).any(1))[0]
        for z in range(int(zs.min()) + 10 + 5 * seed, int(zs.max()) - 5, 25):
            g = f"deformed{seed}-z{z}"
            out += _aal_slice_cases(t1, aal, z, g, s.names, per_slice)
            if (brain[z] > 0).sum() > 500:
                out.append(Case(t1[z], brain[z] > 0, f"brain@{g}", g))
    return out


def nuclei_training(n_2d: int, bench_max_cases: int = 10) -> list[Case]:
    """Nuclei of stardist's 2D image that no bench subset uses, plus its other (3D) image's slices."""
    import importlib.util

    import tifffile
    from scipy import ndimage as ndi

    from bench.prompts import subsample

    cases = nuclei_cases()
    used = {c.name for off in (0.0, 0.5) for c in subsample(cases, bench_max_cases, off)}
    free = [Case(c.image, c.mask, c.name, "stardist2d", "SM") for c in cases if c.name not in used]
    out = _spread(free, n_2d)
    folder = Path(importlib.util.find_spec("stardist").origin).parent / "data" / "images"
    img3 = tifffile.imread(folder / "img3d.tif").astype(np.float32)
    lab3 = tifffile.imread(folder / "mask3d.tif")
    for z in (8, 15, 22):
        img = ndi.zoom(img3[z], 4, order=1)
        lab = ndi.zoom(lab3[z], 4, order=0)
        ids, counts = np.unique(lab, return_counts=True)
        out += [Case(img, lab == i, f"nucleus3d{i}@z{z}", f"stardist3d-z{z}", "SM")
                for i, c in zip(ids, counts) if i > 0 and c >= 120]
    return out


TRAINING_SETS = ("colin27", "deformed", "nuclei")


def training_cases(per_slice: int = 6, n_2d: int = 40, sets: tuple[str, ...] = TRAINING_SETS,
                   deformed_seeds: tuple[int, ...] = (1, 2)) -> dict[str, list[Case]]:
    make = {"colin27": lambda: colin27_training(per_slice), "deformed": lambda: deformed_training(deformed_seeds, per_slice),
            "nuclei": lambda: nuclei_training(n_2d)}
    return {s: make[s]() for s in sets}


# -- collection ------------------------------------------------------------------------------------

def gaze_bench_case_names() -> set[str]:
    """Names of the cases bench/gaze.py reads (its nuclei subsample): gaze training leaves them out."""
    from bench.devdata import aal_cases
    from bench.gaze import subsample

    rng = np.random.default_rng(0)  # bench/gaze.py's draw: AAL first, then nuclei
    subsample(aal_cases(), 20, rng)
    return {c.name for c in subsample(nuclei_cases(), 20, rng)}


def gaze_reading(seg, emb, img, truth, sigma: float, seed: int):
    """One simulated reading of `truth` (bench/simulated_gaze.py, the app's display zoom) -> the
    candidates the gaze ranker chooses among: (feature table, GazeCandidates, their masks), or None
    when no fixation cluster forms."""
    from bench.simulated_gaze import app_geometry, simulate_gaze
    from integrations.errors import InvalidPromptError
    from prompting.gaze import (FixationConfig, GazePromptConfig, detect_fixations, dominant_clusters,
                                fixation_arrays, propose_box)
    from prompting.gaze_ranking import gaze_features

    geometry = app_geometry(truth.shape, 1.0)
    pcfg = GazePromptConfig(ranker=None)
    sim = simulate_gaze(truth, geometry, np.random.default_rng(seed), sigma_deg=sigma)
    try:
        fx = detect_fixations(sim.samples, geometry, FixationConfig())
        cluster = dominant_clusters(fx, truth.shape, geometry, (), pcfg)[0]
    except InvalidPromptError:
        return None
    prop = propose_box(seg, emb, truth.shape, cluster, (), pcfg, geometry, keep_choices=True)
    cands = list(prop.choices)
    return gaze_features(cands, img, *fixation_arrays(prop.cluster)), cands, [c.mask for c in cands]


def _training_sets(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in TRAINING_SETS]
    if unknown or not names:
        raise SystemExit(f"unknown training set(s) {unknown or text!r}; choose from {TRAINING_SETS}")
    return names


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"unknown ranker kind(s) {unknown}; choose from {sorted(KINDS)}")
    return kinds



def target_set(case: Case, source: str) -> str:
    """The set a case is stored under: whole-organ targets (the brain mask) form their own set,
    whichever subject they come from; a click inside the brain asks which of two nested structures
    is meant differently from one inside a parcel, and `fit --balance` can weigh each set the same
    however few organ cases there are."""
    return "organ" if case.name.startswith("brain@") else source


def collect(args) -> None:
    from integrations.windowing import apply_window, default_window, window_bounds
    from models.cache import EmbeddingCache
    from models.registry import build_segmenter
    from prompting.clicks import ClickConfig, click_candidates, click_features
    from prompting.scribbles import Scribble, ScribbleConfig, rasterize, stroke_candidates, stroke_features

    kinds = _kinds(args.kinds)
    names = _training_sets(args.sets)
    seg = build_segmenter("litemedsam", cache=EmbeddingCache(disk_dir=args.cache_dir or None), num_threads=args.threads)
    sets = training_cases(args.per_slice, args.nuclei, names, tuple(int(v) for v in args.deformed_seeds.split(",")))
    rows = {k: {"X": [], "dice": [], "hand": [], "case": [], "set": [], "pair": []} for k in kinds}
    t0, case_id, reading = time.perf_counter(), args.first_case, 0
    gaze_bench = gaze_bench_case_names()
    for set_name, cases in sets.items():
        rng = np.random.default_rng(args.seed)
        images: dict[str, np.ndarray] = {}
        for c in cases:
            if c.group not in images:
                images[c.group] = apply_window(c.image, window_bounds(default_window(c.modality), c.image)).astype(np.float32)
            img = images[c.group]
            emb = seg.embed(img)
            pts = [su.click(c.mask, rng)]  # drawn for every kind: the click/stroke draws stay reproducible
            label = target_set(c, set_name)
            if "click" in kinds:
                cands = click_candidates(seg, emb, img, pts, ClickConfig(ranker=None))
                _store(rows["click"], click_features(cands, img, pts), KINDS["click"], cands, c.mask, case_id, label)
            fg = rasterize([Scribble(su.scribble(c.mask, rng), 3.0, True)], c.mask.shape)
            if "stroke" in kinds:
                scands = stroke_candidates(seg, emb, fg, c.mask.shape, ScribbleConfig(ranker=None))
                _store(rows["stroke"], stroke_features(scands, img, fg), KINDS["stroke"], scands, c.mask, case_id, label)
            if "gaze" in kinds and c.name not in gaze_bench:
                for sigma in GAZE_SIGMAS:  # one reading each, its own case id (a listwise group)
                    got = gaze_reading(seg, emb, img, c.mask, sigma, args.seed * 100003 + 7000 + reading)
                    reading += 1
                    if got is not None:
                        table, gcands, masks = got
                        _store(rows["gaze"], table, GAZE_FEATURES, gcands, c.mask, 100000 + reading, label, masks)
            case_id += 1
        print(f"{set_name}: {len(cases)} cases, {len(images)} images, {time.perf_counter() - t0:.0f} s so far", flush=True)
    out = {}
    for kind, r in rows.items():
        out.update({f"{kind}_X": np.concatenate(r["X"]), f"{kind}_dice": np.concatenate(r["dice"]),
                    f"{kind}_hand": np.concatenate(r["hand"]), f"{kind}_case": np.concatenate(r["case"]),
                    f"{kind}_set": np.concatenate(r["set"]), f"{kind}_features": np.array(KINDS[kind])})
        if r["pair"]:
            width = max(p.shape[1] for p in r["pair"])
            out[f"{kind}_pair"] = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=np.nan)
                                                  for p in r["pair"]])
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v['X'])} cases" for k, v in rows.items()))


def _store(r, table, names, cands, truth, case_id, set_name, masks=None) -> None:
    r["X"].append(np.stack([table[f] for f in names], 1))
    r["dice"].append(np.array([dice(m, truth) for m in (masks if masks is not None else [s.mask for s in cands])]))
    # the baseline each ranker replaces: the hand score (clicks, strokes), the vote (gaze)
    r["hand"].append(np.array([float(getattr(s, "is_vote", False)) if masks is not None else s.score for s in cands]))
    r["case"].append(np.full(len(cands), case_id))
    r["set"].append(np.array([set_name] * len(cands)))
    if masks is not None:  # the candidates' Dice with each other: what a minimum-risk choice weighs
        r["pair"].append(np.array([[dice(a, b) for b in masks] for a in masks]))


# -- fitting ---------------------------------------------------------------------------------------

def fit_listwise(X: np.ndarray, d: np.ndarray, case: np.ndarray, temperature: float = 0.05, l2: float = 1.0,
                 weight: np.ndarray | None = None):
    """Linear weights w minimising the (weighted) mean over cases of cross-entropy(softmax(Dice / T),
    softmax(X w)) + l2 |w|^2 on standardised, clipped features; returns (mean, scale, w).
    weight: per proposal, its case's weight (constant within a case; None = all 1)."""
    from scipy.optimize import minimize

    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    Z = np.clip((X - mean) / scale, -6, 6)
    groups = [np.nonzero(case == c)[0] for c in np.unique(case)]
    cw = np.array([1.0 if weight is None else float(weight[g[0]]) for g in groups])
    cw = cw / cw.mean()
    targets = []
    for g in groups:
        t = np.exp((d[g] - d[g].max()) / temperature)
        targets.append(t / t.sum())

    def loss(w):
        total, grad = l2 * w @ w, 2 * l2 * w
        for g, t, c in zip(groups, targets, cw):
            s = Z[g] @ w
            s = s - s.max()
            q = np.exp(s)
            q /= q.sum()
            total -= c * float(t @ np.log(q + 1e-12))
            grad = grad + c * (Z[g].T @ (q - t))
        return total / len(groups), grad / len(groups)

    res = minimize(loss, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return mean, scale, res.x


def within_case_z(score: np.ndarray, case: np.ndarray) -> np.ndarray:
    """Scores standardised within each case's proposals (what EnsembleRanker does per call)."""
    out = np.zeros(len(score))
    for c in np.unique(case):
        m = case == c
        out[m] = (score[m] - score[m].mean()) / (score[m].std() + 1e-9)
    return out


def picked(score: np.ndarray, d: np.ndarray, case: np.ndarray) -> np.ndarray:
    """Dice of the top-scoring proposal of every case."""
    return np.array([d[g][np.argmax(score[g])] for g in (np.nonzero(case == c)[0] for c in np.unique(case))])


def fit_trees(X: np.ndarray, d: np.ndarray, seed: int = 0, weight: np.ndarray | None = None):
    """Gradient-boosted regression trees predicting each proposal's Dice (sklearn, training only;
    prompting.proposal_ranker.TreeRanker evaluates them with numpy)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(**TREE_PARAMS, random_state=seed).fit(X, d, sample_weight=weight)


def set_balance(sets: np.ndarray, case: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-proposal weights: each case of a set with n cases weighs n^-power (mean 1 over cases).
    power = 1 gives every set the same total weight: the ranker's prior over which of two nested
    structures a click means should not follow how many cases of each kind the training data happens
    to hold (16 whole organs per draw against ~125 parcels); 0 weighs every case the same."""
    out = np.zeros(len(case))
    for s in np.unique(sets):
        m = sets == s
        out[m] = len(np.unique(case[m])) ** -power
    per_case = np.array([out[case == c][0] for c in np.unique(case)])
    return out / per_case.mean()


def feature_range(X: np.ndarray) -> dict:
    """The trees' domain (prompting.proposal_ranker.TreeRanker.in_domain): 0.5th / 99.5th percentiles."""
    return {"low": np.percentile(X, 0.5, axis=0).tolist(), "high": np.percentile(X, 99.5, axis=0).tolist(),
            "max_outside": MAX_OUTSIDE}


def outside_share(X: np.ndarray, rng: dict, case: np.ndarray) -> np.ndarray:
    """Per proposal: the share of its case's feature values outside `rng` (what in_domain tests)."""
    out = (X < np.asarray(rng["low"])) | (X > np.asarray(rng["high"]))
    share = np.zeros(len(X))
    for c in np.unique(case):
        m = case == c
        share[m] = out[m].mean()
    return share


def trees_to_json(model, names: list[str]) -> dict:
    """A fitted HistGradientBoostingRegressor as prompting/proposal_ranker.py's "trees" entry."""
    trees = []
    for (pred,) in model._predictors:  # one tree per iteration (regression: one output)
        n = pred.nodes
        leaf = n["is_leaf"].astype(bool)
        trees.append({"feature": np.where(leaf, -1, n["feature_idx"]).astype(int).tolist(),
                      "threshold": [float(v) for v in np.where(leaf, 0.0, n["num_threshold"])],
                      "left": np.where(leaf, 0, n["left"]).astype(int).tolist(),
                      "right": np.where(leaf, 0, n["right"]).astype(int).tolist(),
                      "value": [float(v) for v in np.where(leaf, n["value"], 0.0)]})
    return {"type": "trees", "features": names, "baseline": float(np.ravel(model._baseline_prediction)[0]), "trees": trees}


def dump_rankers(out: dict) -> str:
    """proposal_ranker.json's text: one line per coefficient list and per tree (leaf values to 7 significant digits)."""
    def num(v):
        return float(f"{v:.7g}") if isinstance(v, float) else v

    blocks = []
    for kind, entry in out.items():
        lines = []
        for k, v in entry.items():
            if k == "trees":
                # thresholds at full precision: many are quantiles equal to a training value, which
                # rounding would send to the other side
                rows = [json.dumps({a: (t[a] if a == "threshold" else [num(x) for x in t[a]]) for a in t},
                                   separators=(",", ":")) for t in v]
                lines.append(f'  "trees": [\n   ' + ",\n   ".join(rows) + "\n  ]")
            else:
                lines.append(f"  {json.dumps(k)}: {json.dumps(num(v) if not isinstance(v, list) else v)}")
        blocks.append(f" {json.dumps(kind)}: {{\n" + ",\n".join(lines) + "\n }")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def load_collections(paths: list[str], kind: str):
    """Several `collect` outputs (e.g. --seed 0 and --seed 1) as one table. A reading's listwise group
    is per file; its fold key is the case position, the same in every file, so the same image never
    sits on both sides of a cross-validation split."""
    parts = []
    for j, path in enumerate(paths):
        data = np.load(path)
        case = data[f"{kind}_case"].astype(np.int64)
        parts.append((np.nan_to_num(data[f"{kind}_X"], nan=0.0, posinf=5.0, neginf=-5.0), data[f"{kind}_dice"],
                      data[f"{kind}_hand"], case + 10 ** 7 * j, case, data[f"{kind}_set"]))
        names = [str(n) for n in data[f"{kind}_features"]]
    X, d, hand, group, key, sets = (np.concatenate(c) for c in zip(*parts))
    return X, d, hand, group, key, sets, names


def fit(args) -> None:
    out = json.loads(WEIGHTS_PATH.read_text()) if WEIGHTS_PATH.exists() else {}
    for kind in _kinds(args.kinds):
        temperature = args.temperature if args.temperature is not None else TEMPERATURE[kind]
        model = args.model or MODEL[kind]
        X, d, hand, case, key, sets, names = load_collections(args.data.split(","), kind)

        balance = args.balance if args.balance is not None else BALANCE[kind]
        weight = set_balance(sets, case, balance) if balance else None

        def linear(tr, te):
            mean, scale, w = fit_listwise(X[tr], d[tr], case[tr], temperature, args.l2,
                                          None if weight is None else weight[tr])
            return np.clip((X[te] - mean) / scale, -6, 6) @ w

        def trees(tr, te):
            return fit_trees(X[tr], d[tr], weight=None if weight is None else weight[tr]).predict(X[te])

        print(f"\n{kind} proposals: {len(np.unique(case))} cases, {len(d)} proposals; Dice of the picked proposal "
              f"('hand' = {'the vote' if kind == 'gaze' else 'the hand score'}; linear: listwise, T={temperature}, "
              f"l2={args.l2}; trees: {TREE_PARAMS}); '{model}' is fitted{' and written' if args.write else ''}")
        print(f"leave-one-set-out:\n{'held-out set':<12}{'cases':>7}{'hand':>8}{'linear':>8}{'trees':>8}{'ensemble':>9}{'oracle':>8}")
        for s in np.unique(sets):
            tr, te = sets != s, sets == s
            a, b = linear(tr, te), trees(tr, te)
            ok = outside_share(X[te], feature_range(X[tr]), case[te]) <= MAX_OUTSIDE
            e = within_case_z(a, case[te]) + np.where(ok, within_case_z(b, case[te]), 0.0)
            print(f"{s:<12}{len(np.unique(case[te])):>7}{picked(hand[te], d[te], case[te]).mean():>8.3f}"
                  f"{picked(a, d[te], case[te]).mean():>8.3f}{picked(b, d[te], case[te]).mean():>8.3f}"
                  f"{picked(e, d[te], case[te]).mean():>9.3f}{picked(d[te], d[te], case[te]).mean():>8.3f}")
        # k-fold over contiguous case positions (a case's image neighbours share a fold): every domain
        # is seen in training, as for the bundled ranker, but never the held-out images
        cv = {"linear": np.zeros(len(d)), "trees": np.zeros(len(d))}
        trusted = np.zeros(len(d), bool)  # the trees in their domain (else the ensemble is the linear score)
        for fold in np.array_split(np.unique(key), args.folds):
            te = np.isin(key, fold)
            cv["linear"][te], cv["trees"][te] = linear(~te, te), trees(~te, te)
            trusted[te] = outside_share(X[te], feature_range(X[~te]), case[te]) <= MAX_OUTSIDE
        cv["ensemble"] = within_case_z(cv["linear"], case) + np.where(trusted, within_case_z(cv["trees"], case), 0.0)
        print(f"  (6-fold ensemble below: the trees sat out {len(np.unique(case[~trusted]))} of {len(np.unique(case))} cases, "
              f"features outside the training folds' range)")
        print(f"{args.folds}-fold by image (same domains, other images):")
        for s in list(np.unique(sets)) + ["all"]:
            m = sets == s if s != "all" else np.ones(len(d), bool)
            print(f"{s:<12}{len(np.unique(case[m])):>7}{picked(hand[m], d[m], case[m]).mean():>8.3f}"
                  f"{picked(cv['linear'][m], d[m], case[m]).mean():>8.3f}{picked(cv['trees'][m], d[m], case[m]).mean():>8.3f}"
                  f"{picked(cv['ensemble'][m], d[m], case[m]).mean():>9.3f}{picked(d[m], d[m], case[m]).mean():>8.3f}")
        trained_on = (f"bench/train_ranker.py: {len(np.unique(case))} "
                      f"{'simulated readings of cases disjoint from bench/gaze.py' if kind == 'gaze' else 'cases disjoint from bench/prompts.py'} "
                      f"(sets {', '.join(str(s) for s in np.unique(sets))}"
                      f"{f', a case of a set of n cases weighed n^-{balance:g}' if balance else ''}); "
                      + ("with the click decoder's opinion (models/click_decoder.pt, READ_FEATURES); " if "read0" in names else ""))
        mean, scale, w = fit_listwise(X, d, case, temperature, args.l2, weight)
        for n, v in sorted(zip(names, w), key=lambda t: -abs(t[1]))[:10]:
            print(f"   {n:<16}{v:+.3f}")
        lin_entry = {"features": names, "mean": [round(float(v), 6) for v in mean],
                     "scale": [round(float(v), 6) for v in scale], "weights": [round(float(v), 6) for v in w],
                     "trained_on": trained_on + f"listwise softmax, T={temperature}, l2={args.l2}"}
        if model == "linear":
            out[kind] = lin_entry
            continue
        fitted = fit_trees(X, d, weight=weight)
        tree_entry = trees_to_json(fitted, names)
        tree_entry["range"] = feature_range(X)
        # the bundled evaluator must agree with sklearn's on the training table (after JSON rounding)
        from prompting.proposal_ranker import _ranker

        table = {n: X[:, i] for i, n in enumerate(names)}
        rounded = json.loads(dump_rankers({kind: tree_entry}))[kind]
        gap = float(np.abs(_ranker(kind, rounded, WEIGHTS_PATH).score(table) - fitted.predict(X)).max())
        print(f"trees: {len(tree_entry['trees'])}, numpy evaluator vs sklearn max |diff| {gap:.1e}")
        if gap > 1e-3:
            raise SystemExit(f"the exported trees disagree with sklearn's (max |diff| {gap:.2e}): not written")
        tree_entry["trained_on"] = trained_on + f"gradient-boosted trees on Dice, {TREE_PARAMS}"
        out[kind] = tree_entry if model == "trees" else {
            "type": "ensemble", "trained_on": trained_on + "the linear ranker and the trees, each standardised "
            "over a reading's candidates, summed", "members": [lin_entry, tree_entry]}
    if args.write:
        WEIGHTS_PATH.write_text(dump_rankers(out))
        print(f"\nwrote {WEIGHTS_PATH}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", default="/tmp/clinseg-ranker-A.npz")
    c.add_argument("--cache-dir", default=os.environ.get("CLINSEG_BENCH_CACHE", "/tmp/clinseg-emb-A"))
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--per-slice", type=int, default=6, help="AAL regions per training slice")
    c.add_argument("--nuclei", type=int, default=40, help="nuclei of the 2D image (outside the bench's)")
    c.add_argument("--kinds", default="click,stroke,gaze", help="which rankers' proposals to collect")
    c.add_argument("--sets", default=",".join(TRAINING_SETS), help="which training sets to collect")
    c.add_argument("--deformed-seeds", default="1,2", help="deformed subjects of the 'deformed' set (bench/deform.py seeds)")
    c.add_argument("--first-case", type=int, default=0,
                   help="first case id: a collection of OTHER cases (e.g. more deformed subjects) takes ids no other "
                        "collection uses, so fit's folds key them apart")
    f = sub.add_parser("fit")
    f.add_argument("--data", default="/tmp/clinseg-ranker-A.npz", help="one collection, or several separated by commas")
    f.add_argument("--model", choices=("linear", "trees", "ensemble"), default=None, help="the model to write (default: per kind, MODEL)")
    f.add_argument("--kinds", default="click,stroke,gaze", help="which rankers to fit (and --write; the others are kept)")
    f.add_argument("--temperature", type=float, default=None, help="Dice softmax temperature (default: per kind, TEMPERATURE)")
    f.add_argument("--l2", type=float, default=0.01)
    f.add_argument("--folds", type=int, default=6)
    f.add_argument("--balance", type=float, default=None,
                   help="weigh a case of a set of n cases n^-BALANCE (1: every set the same; default: per kind, BALANCE)")
    f.add_argument("--write", action="store_true", help="store the coefficients in prompting/proposal_ranker.json")
    args = ap.parse_args()
    collect(args) if args.cmd == "collect" else fit(args)


if __name__ == "__main__":
    main()
