"""Clinical metadata form: what the referral says about the target, used to constrain and check masks."""
from __future__ import annotations

import streamlit as st

from ..state import Workstation

MODALITIES = ("", "CT", "MR", "PT", "US", "CR/DX", "MG", "OT (photo/microscopy)")
BODY_PARTS = ("", "brain", "head and neck", "chest", "breast", "abdomen", "liver", "kidney", "pelvis",
              "prostate", "spine", "extremity", "cells/tissue")
LATERALITY = ("", "left", "right", "bilateral", "midline")
URGENCY = ("routine", "soon", "urgent", "emergency")


def render_metadata_form(ws: Workstation) -> None:
    """The form's values land in `ws.metadata` (plain values; prompting.metadata interprets them)."""
    md = ws.metadata
    vol = ws.study.volume if ws.study is not None else None
    default_modality = md.get("modality") or (vol.modality if vol is not None and vol.modality in MODALITIES else "")
    with st.form("metadata_form"):
        st.caption("From the referral or request. Used to check results (expected size, side) and pick windows; "
                   "kept in this session only, never logged.")
        c = st.columns(3)
        modality = c[0].selectbox("Modality", MODALITIES, index=MODALITIES.index(default_modality) if default_modality in MODALITIES else 0)
        body_part = c[1].selectbox("Body part", BODY_PARTS, index=BODY_PARTS.index(md.get("body_part", "")) if md.get("body_part", "") in BODY_PARTS else 0)
        laterality = c[2].selectbox("Laterality (patient's side)", LATERALITY,
                                    index=LATERALITY.index(md.get("laterality", "")) if md.get("laterality", "") in LATERALITY else 0)
        c = st.columns(3)
        size = c[0].number_input("Expected size (mm, longest diameter; 0 = unknown)", 0.0, 1000.0,
                                 float(md.get("expected_size_mm", 0.0)), step=1.0)
        urgency = c[1].selectbox("Urgency", URGENCY, index=URGENCY.index(md.get("urgency", "routine")))
        finding = c[2].text_input("Finding / target", md.get("finding", ""), placeholder="e.g. lesion, tumour, cyst")
        history = st.text_area("Clinical history (free text)", md.get("history", ""), height=80,
                               placeholder="e.g. 2 cm lesion in the left kidney on ultrasound")
        if st.form_submit_button("Save clinical info", icon=":material/save:"):
            ws.metadata = {
                "modality": modality, "body_part": body_part, "laterality": laterality,
                "expected_size_mm": float(size), "urgency": urgency, "finding": finding.strip(),
                "history": history.strip(),
            }
            st.success("Saved: new prompts are checked against it.")
    if ws.metadata:
        shown = {k: v for k, v in ws.metadata.items() if v not in ("", 0.0, None)}
        st.caption("In use: " + ", ".join(f"{k.replace('_', ' ')} = {v}" for k, v in shown.items() if k != "history"))
