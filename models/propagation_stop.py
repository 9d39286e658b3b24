"""A learned stop rule for slice propagation: is the mask just decoded on this slice still the structure?

Why: the hand rules of `PropagationConfig` (predicted IoU, stability, consistency, growth, intensity
shift and drift) each look at one signal with one threshold. At an atlas region's end the tissue often
goes on with the same intensity (putamen -> claustrum, thalamus -> midbrain), so no single signal
fires and the mask leaks for dozens of slices; tightening any one threshold cuts other structures
short (docs/volume.md). A regression model over all the signals together, plus the sweep's history
(how far from the prompted slice relative to the structure's size, the area against its peak so far),
predicts the share of the new mask that lies inside the true structure (its precision); propagation
stops at the first slice predicted below `threshold`.

Why precision: a slice with mask area m and overlap i raises the 3-D Dice 2I/(M+T) of what was kept so
far exactly when i/m > Dice/2, so a slice is worth keeping when most of its mask is the structure.

The model (gradient-boosted trees, `prompting.proposal_ranker.TreeRanker`) is fitted by
`bench/train_stop.py` on propagation runs over deformed Colin27 subjects and AAL regions DISJOINT from
bench/volume.py's (neither its subjects nor its structures nor their other-side twins) and bundled as
JSON (`propagation_stop.json`). Where a sweep's signals fall outside what it was fitted on
(`TreeRanker.in_domain`), the hand rules decide instead.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from prompting.proposal_ranker import ImageContext, TreeRanker, _ranker, image_features

STOP_MODEL_PATH = Path(__file__).with_name("propagation_stop.json")
# fitted on traces of the propagation decoder (masks decoded with the previous slice's as a prior)
STOP_MODEL_PRIOR_PATH = Path(__file__).with_name("propagation_stop_prior.json")

STOP_FEATURES = ("iou", "stability", "consistency", "d_iou", "iou_min", "log_area_anchor", "log_growth",
                 "log_growth_prev", "log_area_peak", "mean_shift", "median_drift", "depth", "fill", "cut_by_box",
                 "contrast", "edge", "sd_in")


def stop_features(rec, history: Sequence, mask: np.ndarray, image01: np.ndarray, depth_mm: float,
                  pixel_mm: float) -> dict[str, float]:
    """Signals of the slice just decoded (`rec`, a SliceRecord; `mask`, its mask on `image01`).

    `history` holds the sweep's accepted SliceRecords in order, the anchor first and the previous slice
    last; `depth_mm` is this slice's distance from the anchor along the sweep, `pixel_mm` the in-plane
    pixel size (the square root of a pixel's area), so depth is measured against the anchor's size."""
    anchor, prev = history[0], history[-1]
    before = history[-2] if len(history) >= 2 else prev
    areas = [r.area_px for r in history]
    box = np.asarray(rec.box, np.float64)
    box_area = max((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0), 1.0)
    cues = image_features(mask, box, ImageContext.of(image01))
    return {
        "iou": rec.predicted_iou,
        "stability": rec.stability,
        "consistency": rec.consistency,
        "d_iou": rec.predicted_iou - anchor.predicted_iou,
        "iou_min": min([rec.predicted_iou] + [r.predicted_iou for r in history[1:]]),
        "log_area_anchor": math.log((rec.area_px + 1.0) / (anchor.area_px + 1.0)),
        "log_growth": math.log((rec.area_px + 1.0) / (prev.area_px + 1.0)),
        "log_growth_prev": math.log((prev.area_px + 1.0) / (before.area_px + 1.0)),
        "log_area_peak": math.log((rec.area_px + 1.0) / (max(areas) + 1.0)),
        "mean_shift": rec.intensity - prev.intensity,
        "median_drift": rec.median_intensity - anchor.median_intensity,
        "depth": depth_mm / (math.sqrt(max(anchor.area_px, 1)) * pixel_mm),
        "fill": rec.area_px / box_area,
        "cut_by_box": cues["cut_by_box"],
        "contrast": cues["contrast"],
        "edge": cues["edge"],
        "sd_in": cues["sd_in"],
    }


@dataclass(frozen=True)
class LearnedStop:
    """Stop where the predicted precision of the new slice's mask falls below `threshold`."""
    model: TreeRanker
    threshold: float
    trained_on: str = ""

    def predict(self, features: dict[str, float]) -> float:
        return float(self.model.score({k: np.array([v]) for k, v in features.items()})[0])

    def in_domain(self, features: dict[str, float]) -> bool:
        return self.model.in_domain({k: np.array([v]) for k, v in features.items()})


@lru_cache(maxsize=2)
def load_stop_model(path: str = str(STOP_MODEL_PATH)) -> LearnedStop:
    """The bundled stop model; read once per process (immutable)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"the propagation stop model is missing: {p} (re-install clinseg or run "
                                "bench/train_stop.py fit)")
    d = json.loads(p.read_text())
    model = _ranker("stop", d["model"], p)
    if not isinstance(model, TreeRanker):
        raise ValueError(f"the stop model in {p} must be of type 'trees'")
    missing = set(model.features) - set(STOP_FEATURES)
    if missing:
        raise ValueError(f"the stop model in {p} uses features this clinseg does not compute: {sorted(missing)}")
    from .propagation import PropagationConfig

    if abs(float(d.get("box_margin", -1.0)) - PropagationConfig.box_margin) > 1e-9:
        raise ValueError(f"the stop model in {p} was fitted on propagation with box margin {d.get('box_margin')}, "
                         f"but propagation uses {PropagationConfig.box_margin}: refit it (bench/train_stop.py)")
    t = float(d["threshold"])
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"the stop model in {p} has a threshold outside [0, 1]: {t}")
    return LearnedStop(model, t, d.get("trained_on", ""))
