"""Contour review report: CSV tables (per structure, per slice) and one self-contained HTML file with
the metrics, the flags, the decisions and PNG images of the contours side by side (embedded as
base64, so the file can be mailed or archived on its own). Nothing identifying is written: the
report names the study by the label the caller gives.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contour_review import Comparison, Decision
from .volume import Volume
from .windowing import slice_image, volume_window

COLS = ("structure", "presence", "dice", "hd95_mm", "msd_mm", "surface_dice", "apl_mm", "volume_ref_ml",
        "volume_test_ml", "volume_diff_ml", "volume_diff_pct", "flagged", "flags", "flagged_slices", "decision")


@dataclass(frozen=True)
class ReportFiles:
    structures_csv: Path
    slices_csv: Path
    html: Path


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.3f}")
    return str(v)


def _crop_box(masks: list[np.ndarray], shape, margin: int = 20) -> tuple[slice, slice]:
    both = np.zeros(shape, bool)
    for m in masks:
        if m is not None:
            both |= m
    if not both.any():
        return slice(0, shape[0]), slice(0, shape[1])
    ys, xs = np.nonzero(both)
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 2 * margin
    cy, cx = (ys.max() + ys.min()) // 2, (xs.max() + xs.min()) // 2
    y0 = int(np.clip(cy - side // 2, 0, max(0, shape[0] - side)))
    x0 = int(np.clip(cx - side // 2, 0, max(0, shape[1] - side)))
    return slice(y0, min(shape[0], y0 + side)), slice(x0, min(shape[1], x0 + side))


def render_side_by_side(image01: np.ndarray, panels: list[tuple[str, np.ndarray | None]], title: str = "",
                        crop: bool = True, aspect: float = 1.0, dpi: int = 90) -> bytes:
    """PNG of the slice with each panel's contour drawn on its own copy of the image; the last panel
    overlays all of them (the first dashed) so differences are visible at a glance.
    aspect: pixel height/width (row spacing / column spacing) so anisotropic pixels look right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ("#00c8ff", "#ff4040", "#40ff40", "#ffd000")
    ys, xs = _crop_box([m for _, m in panels], image01.shape) if crop else (slice(None), slice(None))
    img = image01[ys, xs]
    n = len(panels) + (1 if len(panels) > 1 else 0)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), dpi=dpi, squeeze=False)
    for ax in axes[0]:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    for i, (name, m) in enumerate(panels):
        for ax, style in ((axes[0][i], "solid"), (axes[0][-1], "dashed" if i == 0 else "solid")):
            if m is not None and m[ys, xs].any():
                ax.contour(m[ys, xs].astype(float), levels=[0.5], colors=[colors[i % len(colors)]],
                           linewidths=1.4, linestyles=style)
        axes[0][i].set_title(name, fontsize=9)
    if n > len(panels):
        axes[0][-1].set_title("overlay", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pick_slices(review, k: int = 2) -> list[int]:
    """The slices to show for a structure: the worst flagged (lowest Dice), else the largest."""
    if not review.slices:
        return []
    worst = sorted(review.slices, key=lambda s: (s.dice, -s.area_ref_mm2))
    flagged = [s.z for s in worst if s.z in set(review.flagged_slices)]
    if flagged:
        return flagged[:k]
    return [max(review.slices, key=lambda s: s.area_ref_mm2 + s.area_test_mm2).z]


def write_review_report(out_dir, volume: Volume, comparison: Comparison, reference: dict[str, np.ndarray],
                        test: dict[str, np.ndarray], regenerated: dict[str, np.ndarray] | None = None,
                        decisions: dict[str, Decision] | None = None, study_label: str = "study",
                        window: str | None = None, images_per_structure: int = 2,
                        name_map: dict[str, str] | None = None) -> ReportFiles:
    """Write structures.csv, slices.csv and report.html into out_dir."""
    from .contour_review import _match_names

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    regenerated = regenerated or {}
    decisions = decisions or {}
    rows = comparison.table()
    for r in rows:
        d = decisions.get(r["structure"])
        r["decision"] = f"{d.choice} by {d.actor} at {d.at}" if d else ""
    s_csv = out / "structures.csv"
    with open(s_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in COLS})
    sl_rows = comparison.slice_table()
    sl_csv = out / "slices.csv"
    with open(sl_csv, "w", newline="", encoding="utf-8") as fh:
        cols = list(sl_rows[0]) if sl_rows else ["structure", "z"]
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in sl_rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})

    keys = {disp: (rk, tk) for disp, rk, tk in _match_names(reference, test, name_map)}
    bounds = volume_window(volume, window)
    aspect = volume.spacing[1] / volume.spacing[0]
    t = comparison.thresholds
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Contour review report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
        "tr.flag{background:#ffe3e3}img{max-width:100%}</style></head><body>",
        f"<h1>Contour review: {html.escape(study_label)}</h1>",
        f"<p>Reference: <b>{html.escape(comparison.reference_label)}</b>; compared: "
        f"<b>{html.escape(comparison.test_label)}</b>. Grid {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]}, "
        f"spacing {volume.spacing[0]:.3g} x {volume.spacing[1]:.3g} x {volume.spacing[2]:.3g} mm.</p>",
        "<p>Thresholds: " + html.escape(", ".join(f"{k}={v}" for k, v in t.__dict__.items() if v is not None)) + "</p>",
        "<p>Definitions: HD95 = larger of the two directed 95th percentiles of boundary-voxel distances; "
        "MSD = mean of the pooled boundary distances; surface Dice counts boundary voxels within the tolerance; "
        "APL = mm of reference contour farther than the tolerance from the compared contour (per slice); "
        "volume difference = compared - reference. See docs/rt.md.</p>",
        "<h2>Structures</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in COLS) + "</tr>",
    ]
    for r in rows:
        cls = " class='flag'" if r["flagged"] else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in COLS) + "</tr>")
    parts.append("</table><h2>Images</h2>")
    for name, rev in comparison.reviews.items():
        rk, tk = keys.get(name, (None, None))
        for z in pick_slices(rev, images_per_structure):
            panels = [(comparison.reference_label, reference[rk][z] if rk else None),
                      (comparison.test_label, test[tk][z] if tk else None)]
            if name in regenerated:
                panels.append(("regenerated", regenerated[name][z]))
            sm = next((s for s in rev.slices if s.z == z), None)
            title = f"{name}, slice {z}" + (f": Dice {sm.dice:.2f}, HD95 {_fmt(sm.hd95)} mm" if sm else "")
            png = render_side_by_side(slice_image(volume, z, bounds), panels, title=title, aspect=aspect)
            parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(name)} slice {z}' "
                         f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    h = out / "report.html"
    h.write_text("\n".join(parts), encoding="utf-8")
    return ReportFiles(s_csv, sl_csv, h)
