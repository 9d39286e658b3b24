"""clinseg workstation (Streamlit). Start with `make run` (listens on 127.0.0.1:8501).

One screen: the sidebar opens a study and moves through it; the tabs segment it (box, clicks,
scribbles, text, gaze, clinical metadata), review RT contours, work the triage list and export.
All state lives in one typed `Workstation` (app/state.py) in the session.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repo
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402

import streamlit as st  # noqa: E402

from app.state import Workstation  # noqa: E402
from app.views import guarded  # noqa: E402


def workstation() -> Workstation:
    if "ws" not in st.session_state:
        st.session_state["ws"] = Workstation()
    return st.session_state["ws"]


def optional_view(module: str) -> bool:
    """RT review and worklist pages come from another part of the project; show them when present."""
    return importlib.util.find_spec(module) is not None


def main() -> None:
    st.set_page_config(page_title="clinseg", page_icon=":material/neurology:", layout="wide")
    ws = workstation()
    from app.views.study import open_demo_on_first_start, render_info, render_navigation, render_open

    open_demo_on_first_start(ws)
    with st.sidebar:
        render_open(ws)
        if ws.study is not None:
            st.divider()
            with guarded("update the view"):
                render_navigation(ws)
    st.title("clinseg")
    if ws.study is None:
        st.info("Open the demo study (sidebar) to start, or open your own DICOM folder/file, NIfTI, NRRD "
                "or image by path or upload. Nothing leaves this computer.", icon=":material/info:")
    names = ["Segment", "Clinical info", "Study", "Export"]
    if optional_view("app.views.rt_review"):
        names.insert(3, "Review (RT)")
    if optional_view("app.views.worklist"):
        names.insert(len(names) - 1, "Worklist")
    tabs = dict(zip(names, st.tabs(names)))
    with tabs["Segment"]:
        if ws.study is not None:
            from app.views.segment import render_segment

            render_segment(ws)
    with tabs["Clinical info"]:
        from app.views.metadata_form import render_metadata_form

        with guarded("read the clinical metadata"):
            render_metadata_form(ws)
    with tabs["Study"]:
        if ws.study is not None:
            render_info(ws)
    if "Review (RT)" in tabs:
        with tabs["Review (RT)"], guarded("show the RT review"):
            from app.views import rt_review

            rt_review.render(ws) if hasattr(rt_review, "render") else rt_review.main()
    if "Worklist" in tabs:
        with tabs["Worklist"], guarded("show the worklist"):
            from app.views import worklist

            worklist.render(ws) if hasattr(worklist, "render") else worklist.main()
    with tabs["Export"]:
        if ws.study is not None:
            from app.views.export import render_export

            with guarded("export"):
                render_export(ws)


main()
