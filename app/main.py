"""clinseg workstation (Streamlit). Start with `make run`.

This page is the minimal viewer of the core issue: open the bundled demo or a path, pick a slice and
window, give a box, see the mask. The full workstation grows from here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repo
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import streamlit as st

from app.pipeline import SliceSession, segment
from integrations.errors import ClinsegInputError, ModelWeightsError
from integrations.loaders import load_volume
from integrations.windowing import WINDOWS
from prompting.promptset import PromptSet

DEMO = ROOT / "app" / "demo" / "colin27_demo.nii.gz"


@st.cache_resource(show_spinner="Loading LiteMedSAM...")
def get_segmenter():
    from models.registry import build_segmenter

    return build_segmenter("litemedsam")


def overlay(image01: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    rgb = np.repeat((image01 * 255).astype(np.uint8)[..., None], 3, axis=2) if image01.ndim == 2 else (image01 * 255).astype(np.uint8)
    if mask is not None and mask.any():
        rgb = rgb.copy()
        rgb[mask] = (0.55 * rgb[mask] + 0.45 * np.array([255, 60, 60])).astype(np.uint8)
    return rgb


def main() -> None:
    st.set_page_config(page_title="clinseg", layout="wide")
    st.title("clinseg")
    with st.sidebar:
        st.header("Study")
        if st.button("Open demo study", key="open_demo"):
            st.session_state["path"] = str(DEMO)
        path = st.text_input("Path to DICOM folder/file, NIfTI, NRRD or image", key="path")
    if not path:
        st.info("Open the demo study or type a path in the sidebar.")
        return
    try:
        vol = load_volume(path)
    except ClinsegInputError as e:
        st.error(f"Cannot open the study: {e}")
        return
    info = vol.describe()
    st.caption(f"{info['modality']} · {info['shape_zyx'][2]}x{info['shape_zyx'][1]} px · {vol.num_slices} slices · spacing {info['spacing_xyz_mm']} mm")
    z = st.slider("Slice", 0, vol.num_slices - 1, vol.num_slices // 2, key="slice") if vol.num_slices > 1 else 0
    window = st.selectbox("Window", ["default", *WINDOWS], key="window")
    session = SliceSession.open(vol, z, None if window == "default" else window)
    h, w = session.image01.shape[:2]
    c = st.columns(4)
    x0 = c[0].number_input("x0", 0, w - 1, w // 4, key="x0")
    y0 = c[1].number_input("y0", 0, h - 1, h // 4, key="y0")
    x1 = c[2].number_input("x1", 0, w - 1, 3 * w // 4, key="x1")
    y1 = c[3].number_input("y1", 0, h - 1, 3 * h // 4, key="y1")
    mask = None
    if st.button("Segment box", key="segment"):
        try:
            seg = segment(get_segmenter(), session, PromptSet.from_box(x0, y0, x1, y1))
        except (ClinsegInputError, ModelWeightsError) as e:
            st.error(str(e))
        else:
            mask = seg.mask
            st.session_state["last_area_mm2"] = seg.area_px * vol.pixel_area_mm2
            st.success(f"Area {seg.area_px * vol.pixel_area_mm2:.1f} mm² · predicted IoU {seg.predicted_iou:.2f}")
    st.image(overlay(session.image01, mask), caption=f"slice {z}", width="stretch")


main()
