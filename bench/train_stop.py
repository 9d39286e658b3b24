"""Fit and check the learned stop rule of slice propagation (models/propagation_stop.py).

    .venv/bin/python bench/train_stop.py collect --subjects deformed1,deformed2,deformed3 --out .bench-data/stop/train.npz
    .venv/bin/python bench/train_stop.py collect --subjects colin27,deformed0 --structures bench --out .bench-data/stop/bench.npz
    .venv/bin/python bench/train_stop.py fit .bench-data/stop/train.npz [--check .bench-data/stop/bench.npz] [--write]
    .venv/bin/python bench/train_stop.py handover BOX.npz PRIOR.npz

collect: from one tight box on the middle slice of each structure, propagate with every hand stop rule
off except "the mask vanished" (area floor), up to 25 slices past the structure's true end, and keep
per propagated slice the stop features, the hand rules' verdict, and the mask's area and overlap with
the truth. Stopping never changes the slices before the stop, so these traces replay ANY stop rule
exactly: a rule keeps a prefix of each direction's slices.

Training structures (`--structures train`, the default): every AAL region except bench/volume.py's
structures AND their other-side twins (no putamen, caudate, thalamus, hippocampus, amygdala, insula or
cerebellum 6 at all), on deformed subjects other than bench/volume.py's deformed0.

fit: gradient-boosted trees (bench/train_ranker.py's TREE_PARAMS) predict each slice's precision
(overlap / mask area). The threshold is chosen by 3-D Dice in 5-fold cross-validation grouped by
structure name (a region never in its own fold's training set); printed against the hand rules.
`--check` replays the fitted rule and the hand rules on other traces (the benchmark's) WITHOUT
choosing anything on them. `--write` bundles the model as models/propagation_stop.json for traces of
boxes alone (`collect --decoder box`, the default), models/propagation_stop_prior.json for traces of
the propagation decoder (`--decoder prior`: the next slice decoded with the previous slice's mask as a
prior, `PropagationConfig.prior`).

handover: on traces of both decoders (same subjects and structures), 3-D Dice of the box chain alone,
the decoder's chain alone, the decoder's slices over the longer of both stops, and the handover that
propagation uses (`PropagationConfig.prior_handover`): the decoder's slices up to its stop, then the box
chain's up to its own; and, for scale, the best a handover could do with stops that know the truth
(each direction's two stop slices chosen to maximise the structure's 3-D Dice).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from integrations.windowing import apply_window, volume_window  # noqa: E402
from models.cache import EmbeddingCache  # noqa: E402
from models.propagation import PropagationConfig, hand_stop_reason, propagate  # noqa: E402
from models.propagation_stop import (STOP_FEATURES, STOP_MODEL_PATH, STOP_MODEL_PRIOR_PATH, load_stop_model,  # noqa: E402
                                     stop_features)
from models.registry import build_segmenter  # noqa: E402

CACHE = ROOT / ".bench-data" / "embeddings"
BENCH_TWINS = ("Putamen", "Caudate", "Thalamus", "Hippocampus", "Amygdala", "Insula", "Cerebelum_6")
OVERSHOOT = 25  # slices past the true end a trace may run (leaks to learn from)
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.025), 3)


def permissive(cap: int, margin: float = PropagationConfig.box_margin, prior: bool = False) -> PropagationConfig:
    """Every hand stop rule off except the area floor ("the object vanished"); the propagated slices alone
    (no cross-view refinement: a trace's masks are what the stop rule sees, slice by slice). `prior`:
    next slices through the propagation decoder (its chain alone: a trace is one chain, no handover to
    the box chain), else boxes alone."""
    return PropagationConfig(box_margin=margin, min_predicted_iou=0.0, min_stability=0.0, min_consistency=0.0, max_growth=math.inf,
                             max_intensity_shift=math.inf, max_anchor_intensity_shift=None, max_slices=cap,
                             stop_rule="hand", cross_view=None, prior=prior,
                             prior_handover=False)


def subject(name: str):
    """(T1 volume, AAL label -> name, structure name -> its [z, y, x] mask) for 'colin27' or 'deformedK'."""
    from bench.deform import deformed_subject, load_colin27

    if name == "colin27":
        t1, aal, brain, names = load_colin27()
        labels = np.rint(aal.voxels).astype(np.int32)

        def mask(s):
            if s == "brain":
                return brain.voxels > 0
            return labels == next(i for i, n in names.items() if n == s)
        return t1, names, mask
    subj = deformed_subject(int(name.removeprefix("deformed")))
    return subj.t1, subj.names, subj.label_mask


def structure_list(which: str, names: dict[int, str]) -> list[str]:
    from bench.volume import STRUCTURES

    if which == "bench":
        return list(STRUCTURES)
    if which == "train":
        return sorted(n for n in names.values() if not n.startswith(BENCH_TWINS))
    return [s for s in which.split(",") if s]


def trace(seg, volume, truth: np.ndarray, bounds, margin: float = PropagationConfig.box_margin,
          prior: bool = False) -> tuple[list[dict], dict]:
    """Rows for every propagated slice of one structure, and the anchor slice's numbers."""
    from bench.volume import middle_slice, tight_box

    z0 = middle_slice(truth)
    zs = np.nonzero(truth.reshape(truth.shape[0], -1).any(1))[0]
    cap = int(max(z0 - zs.min(), zs.max() - z0)) + OVERSHOOT
    res = propagate(seg, volume, {z0: tight_box(truth[z0])}, window=bounds, config=permissive(cap, margin, prior))
    recs = {r.index: r for r in res.slices}
    anchor = recs[z0]
    hand = PropagationConfig()
    pixel_mm = math.sqrt(volume.pixel_area_mm2)
    rows = []
    for direction in (-1, 1):
        history = [anchor]
        z = z0 + direction
        while z in recs:
            rec = recs[z]
            m = res.mask[z]
            img = apply_window(volume.voxels[z], bounds)
            f = stop_features(rec, history, m, img, abs(z - z0) * volume.spacing[2], pixel_mm)
            reason = hand_stop_reason(hand, rec, history[-1], anchor, decoder_scores=not prior)
            rows.append({**f, "direction": direction, "step": abs(z - z0), "area": int(m.sum()),
                         "inter": int((m & truth[z]).sum()), "truth_area": int(truth[z].sum()),
                         "hand_stop": reason is not None})
            history.append(rec)
            z += direction
    a = res.mask[z0]
    return rows, {"area": int(a.sum()), "inter": int((a & truth[z0]).sum()), "truth": int(truth.sum())}


def collect(a) -> None:
    out = {k: [] for k in STOP_FEATURES + ("direction", "step", "area", "inter", "truth_area", "hand_stop", "case")}
    cases = []
    for sname in a.subjects.split(","):
        volume, names, mask_of = subject(sname)
        seg = build_segmenter("litemedsam", cache=EmbeddingCache(max_bytes=1 << 30, disk_dir=CACHE / sname))
        if a.decoder == "prior" and seg.propagation_decoder is None:
            raise SystemExit("--decoder prior: this segmenter has no propagation decoder ($CLINSEG_PROPAGATION_DECODER)")
        bounds = volume_window(volume, None)
        for s in structure_list(a.structures, names):
            truth = mask_of(s)
            if truth.reshape(truth.shape[0], -1).sum(1).max() < 10:
                continue
            t0 = time.perf_counter()
            rows, anchor = trace(seg, volume, truth, bounds, a.margin, a.decoder == "prior")
            k = len(cases)
            cases.append({"subject": sname, "structure": s, **anchor})
            for r in rows:
                for key in out:
                    out[key].append(k if key == "case" else r[key])
            print(f"{sname:<10} {s:<22} {len(rows):4d} slices  {time.perf_counter() - t0:5.1f} s", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, **{k: np.asarray(v) for k, v in out.items()}, cases=json.dumps(cases), decoder=a.decoder)
    print(f"{len(cases)} structures, {len(out['case'])} slices -> {a.out}")


def load(paths: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    tables, cases = [], []
    for p in paths.split(","):
        d = np.load(p)
        t = {k: d[k] for k in d.files if k not in ("cases", "decoder")}
        t["case"] = t["case"] + len(cases)
        cases += json.loads(str(d["cases"]))
        tables.append(t)
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}, cases


def kept_prefix(stop: np.ndarray, t: dict[str, np.ndarray], cases: list[dict]) -> dict[int, float]:
    """3-D Dice per case when each direction keeps its slices up to (not including) the first `stop`."""
    out = {}
    for c, info in enumerate(cases):
        inter, area = info["inter"], info["area"]
        for d in (-1, 1):
            idx = np.nonzero((t["case"] == c) & (t["direction"] == d))[0]
            idx = idx[np.argsort(t["step"][idx])]
            first = np.nonzero(stop[idx])[0]
            keep = idx[: first[0]] if len(first) else idx
            inter += int(t["inter"][keep].sum())
            area += int(t["area"][keep].sum())
        out[c] = 2.0 * inter / max(area + info["truth"], 1)
    return out


def precision(t: dict[str, np.ndarray]) -> np.ndarray:
    return t["inter"] / np.maximum(t["area"], 1)


def features(t: dict[str, np.ndarray]) -> np.ndarray:
    from prompting.proposal_ranker import feature_matrix

    return feature_matrix(t, STOP_FEATURES)


def fit(a) -> None:
    from bench.train_ranker import feature_range, fit_trees, trees_to_json
    from prompting.proposal_ranker import _tree_ranker

    t, cases = load(a.data)
    X, y = features(t), precision(t)
    names = np.array([c["structure"] for c in cases])
    # folds by structure NAME: deformed twins of one region land in the same fold
    uniq = sorted(set(names))
    fold_of_name = {n: i % a.folds for i, n in enumerate(np.random.default_rng(0).permutation(uniq))}
    fold = np.array([fold_of_name[names[c]] for c in t["case"]])
    cv_pred = np.zeros(len(y))
    for k in range(a.folds):
        m = fold == k
        cv_pred[m] = fit_trees(X[~m], y[~m]).predict(X[m])
    hand = kept_prefix(t["hand_stop"], t, cases)
    none = kept_prefix(np.zeros(len(y), bool), t, cases)
    print(f"training traces: {len(cases)} structures, {len(y)} slices; cross-validated (5 folds by structure name)")
    print(f"  hand rules           3-D Dice {np.mean(list(hand.values())):.4f}")
    print(f"  no stop (area only)  3-D Dice {np.mean(list(none.values())):.4f}")
    best = (-1.0, None)
    for th in THRESHOLDS:
        d = np.mean(list(kept_prefix(cv_pred < th, t, cases).values()))
        both = np.mean(list(kept_prefix((cv_pred < th) | t["hand_stop"], t, cases).values()))
        print(f"  learned < {th:.3f}      3-D Dice {d:.4f}   (learned OR hand rules {both:.4f})")
        if d > best[0]:
            best = (float(d), float(th))
    threshold = best[1] if a.threshold is None else a.threshold
    print(f"chosen threshold {threshold} (CV 3-D Dice {best[0]:.4f})")

    model = fit_trees(X, y)
    entry = trees_to_json(model, list(STOP_FEATURES))
    entry["range"] = feature_range(X)
    entry["trained_on"] = f"{len(cases)} propagation traces ({len(y)} slices): {sorted(set(c['subject'] for c in cases))}"
    tree = _tree_ranker("stop", entry, Path("<fit>"))
    full = tree.score({f: t[f] for f in STOP_FEATURES})
    print(f"export check: max |numpy - sklearn| = {np.abs(full - model.predict(X)).max():.2e}")

    if a.check:
        tc, cc = load(a.check)
        p = tree.score({f: tc[f] for f in STOP_FEATURES})
        in_dom = in_domain_rows(tree, tc)
        learned = np.where(in_dom, p < threshold, tc["hand_stop"])
        rows = {"hand": kept_prefix(tc["hand_stop"], tc, cc), "learned": kept_prefix(learned, tc, cc),
                "learned, no gate": kept_prefix(p < threshold, tc, cc)}
        print(f"\ncheck traces ({a.check}): {len(cc)} structures, {len(p)} slices, {1 - in_dom.mean():.1%} slices out of domain")
        print(f"{'subject':<10} {'structure':<16} " + " ".join(f"{k:>17}" for k in rows))
        for c, info in enumerate(cc):
            print(f"{info['subject']:<10} {info['structure']:<16} " + " ".join(f"{rows[k][c]:17.3f}" for k in rows))
        print(f"{'mean':<27} " + " ".join(f"{np.mean(list(rows[k].values())):17.4f}" for k in rows))
    if a.write:
        decoders = {str(np.load(p).get("decoder", "box")) for p in a.data.split(",")}
        if len(decoders) != 1:
            raise SystemExit(f"traces of different decoders ({sorted(decoders)}): fit one stop model per decoder")
        path = STOP_MODEL_PRIOR_PATH if decoders == {"prior"} else STOP_MODEL_PATH
        path.write_text(json.dumps({"threshold": threshold, "box_margin": a.margin, "decoder": decoders.pop(),
                                    "trained_on": entry["trained_on"], "model": entry}, separators=(",", ":")) + "\n")
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def in_domain_rows(tree, t: dict[str, np.ndarray]) -> np.ndarray:
    """Per traced slice, whether the stop model trusts itself there (`LearnedStop.in_domain`, row by row)."""
    return tree.outside_shares(t) <= tree.max_outside


def stop_flags(t: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Each traced slice's verdict under the bundled stop model at `path`, as propagation decides it: the
    model where the slice's features are in its domain, the hand rules elsewhere."""
    model = load_stop_model(str(path))
    tree = model.model
    return np.where(in_domain_rows(tree, t), tree.score({f: t[f] for f in STOP_FEATURES}) < model.threshold, t["hand_stop"])


def first_stops(stop: np.ndarray, t: dict[str, np.ndarray], cases: list[dict]) -> dict[tuple, float]:
    """(subject, structure, direction) -> the step of the first slice `stop` rejects (inf: none)."""
    out = {}
    for c, info in enumerate(cases):
        for d in (-1, 1):
            idx = np.nonzero((t["case"] == c) & (t["direction"] == d) & stop)[0]
            out[(info["subject"], info["structure"], d)] = float(t["step"][idx].min()) if len(idx) else math.inf
    return out


def handover(a) -> None:
    """Replay the propagation decoder's chain, the box chain and their combinations on traces of both."""
    tb, cb = load(a.box)
    tp, cp = load(a.prior)
    sb = first_stops(stop_flags(tb, STOP_MODEL_PATH), tb, cb)
    sp = first_stops(stop_flags(tp, STOP_MODEL_PRIOR_PATH), tp, cp)
    box_case = {(i["subject"], i["structure"]): c for c, i in enumerate(cb)}

    def kept(t, c, d, lo, hi) -> tuple[int, int]:
        m = (t["case"] == c) & (t["direction"] == d) & (t["step"] >= lo) & (t["step"] < hi)
        return int(t["inter"][m].sum()), int(t["area"][m].sum())

    rules = {
        "boxes alone": lambda b, p: ((0, 0), (0, b)),
        "decoder alone": lambda b, p: ((0, p), (0, 0)),
        "decoder, longer stop": lambda b, p: ((0, max(b, p)), (0, 0)),
        "handover": lambda b, p: ((0, p), (p, b)),
    }
    rows = {k: [] for k in [*rules, "stops knowing the truth"]}
    print(f"{'subject':<10} {'structure':<16} " + " ".join(f"{k:>20}" for k in rows))
    for c, info in enumerate(cp):
        key = (info["subject"], info["structure"])
        if key not in box_case:
            continue
        line = []
        for name, rule in rules.items():
            inter, area = info["inter"], info["area"]  # the anchor: the same box-prompted decode in both
            for d in (-1, 1):
                (p0, p1), (b0, b1) = rule(sb[key + (d,)], sp[key + (d,)])
                for t, case, lo, hi in ((tp, c, p0, p1), (tb, box_case[key], b0, b1)):
                    i, m = kept(t, case, d, lo, hi)
                    inter, area = inter + i, area + m
            rows[name].append(2.0 * inter / max(area + info["truth"], 1))
            line.append(rows[name][-1])
        rows["stops knowing the truth"].append(truth_stops(tp, c, tb, box_case[key], info))
        line.append(rows["stops knowing the truth"][-1])
        print(f"{key[0]:<10} {key[1]:<16} " + " ".join(f"{v:20.3f}" for v in line))
    print(f"{'mean':<27} " + " ".join(f"{np.mean(v):20.4f}" for v in rows.values()))


def truth_stops(tp: dict[str, np.ndarray], cp: int, tb: dict[str, np.ndarray], cb: int, info: dict) -> float:
    """The best 3-D Dice a handover can reach on these traces: in each direction the decoder's slices
    before step p and the box chain's from p to before step b, p and b chosen knowing the truth (how
    far a better stop rule could go). Dice = 2I / (A + T) is a ratio, so it is maximised exactly by
    Dinkelbach's iteration: for a trial Dice l, each direction on its own maximises I - l/2 * A;
    l is then set to the Dice reached, until it no longer rises."""
    def cumulative(t, case, d):
        m = (t["case"] == case) & (t["direction"] == d)
        n = int(t["step"][m].max()) if m.any() else 0
        inter, area = np.zeros(n + 1), np.zeros(n + 1)
        inter[t["step"][m]] = t["inter"][m]
        area[t["step"][m]] = t["area"][m]
        return np.cumsum(inter), np.cumsum(area)  # [k]: steps 1..k

    sides = [(cumulative(tp, cp, d), cumulative(tb, cb, d)) for d in (-1, 1)]
    best = 0.0
    for _ in range(50):
        inter, area = info["inter"], info["area"]
        for (pi, pa), (bi, ba) in sides:
            top = (0.0, 0.0, 0.0)
            for p in range(len(pi)):  # decoder slices 1..p
                k = min(p, len(bi) - 1)
                ib, ab = bi[k:] - bi[k], ba[k:] - ba[k]  # box slices p+1..b (never empty: ib[0] is none)
                gain = ib - best / 2 * ab
                j = int(np.argmax(gain))
                value = pi[p] - best / 2 * pa[p] + gain[j]
                if value > top[0]:
                    top = (value, pi[p] + ib[j], pa[p] + ab[j])
            inter, area = inter + top[1], area + top[2]
        dice = 2.0 * inter / max(area + info["truth"], 1)
        if dice <= best + 1e-9:
            break
        best = dice
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--subjects", default="deformed1,deformed2,deformed3")
    c.add_argument("--structures", default="train", help="'train', 'bench' or a comma-separated list")
    c.add_argument("--out", required=True)
    c.add_argument("--margin", type=float, default=PropagationConfig.box_margin,
                   help="box margin of the propagated boxes (PropagationConfig.box_margin)")
    c.add_argument("--decoder", choices=("box", "prior"), default="box",
                   help="next slices from boxes alone (the default here) or through the propagation decoder "
                        "(PropagationConfig.prior); fit writes the stop model of that decoder")
    f = sub.add_parser("fit")
    f.add_argument("data", help="comma-separated collect outputs")
    f.add_argument("--check", default=None)
    f.add_argument("--folds", type=int, default=5)
    f.add_argument("--threshold", type=float, default=None, help="use this threshold instead of the CV-chosen one")
    f.add_argument("--write", action="store_true")
    f.add_argument("--margin", type=float, default=PropagationConfig.box_margin,
                   help="the box margin the traces were collected with (recorded in the JSON)")
    h = sub.add_parser("handover", help="replay the decoder's chain, the box chain and the handover between them")
    h.add_argument("box", help="collect --decoder box output")
    h.add_argument("prior", help="collect --decoder prior output of the same subjects and structures")
    a = ap.parse_args()
    {"collect": collect, "fit": fit, "handover": handover}[a.cmd](a)


if __name__ == "__main__":
    main()
