"""Text query box: "left hippocampus", "the brain" -> a box on this slice -> mask."""
from __future__ import annotations

import streamlit as st

from ..state import Workstation
from . import guarded


def render_text_query(ws: Workstation) -> None:
    with st.form("text_query_form", border=False):
        query = st.text_input("Text query", key="text_query", placeholder="e.g. left hippocampus, right putamen, brain")
        go = st.form_submit_button("Find and segment", icon=":material/search:")
    if go and query.strip():
        with guarded("segment from the text query"):
            from .. import actions
            from .segment import after_prompt
            from . import get_segmenter

            result = actions.apply_text(ws, get_segmenter(), query.strip())
            after_prompt(ws, result)
            st.rerun()
