"""Export panel: write masks (NIfTI, PNG; DICOM-SEG and RTSTRUCT for DICOM studies), each re-read."""
from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from ..export import export_all, exportable
from ..state import Workstation

MIME = {"nifti": "application/gzip", "png": "image/png", "dicom-seg": "application/dicom", "rtstruct": "application/dicom"}


def default_folder() -> str:
    return str(Path(tempfile.gettempdir()) / "clinseg-exports")


def render_export(ws: Workstation) -> None:
    vol = ws.study.volume
    dicom = vol.dicom is not None
    kinds = ["nifti", "png"] + (["dicom-seg", "rtstruct"] if dicom else [])
    names = {"nifti": "NIfTI label map (3-D)", "png": "PNG of this slice", "dicom-seg": "DICOM-SEG", "rtstruct": "RTSTRUCT"}
    if not dicom:
        st.caption("DICOM-SEG and RTSTRUCT are offered for studies opened from DICOM (they reference its images).")
    chosen = st.multiselect("Formats", kinds, default=kinds, format_func=names.get, key="export_kinds")
    accepted_only = st.checkbox("Accepted objects only", value=False, key="export_accepted_only")
    folder = st.text_input("Folder to write to", value=st.session_state.get("export_folder_default", default_folder()),
                           key="export_folder")
    n = len(exportable(ws.objects, accepted_only))
    st.caption(f"{n} object(s) will be exported as labels 1..{n} (in the order listed under Objects).")
    if st.button("Export", key="export", icon=":material/download:", type="primary"):
        done, errors = export_all(folder, vol, ws.objects, ws.slice_index, tuple(chosen), accepted_only)
        st.session_state["export_result"] = ([(str(f.path), f.kind, f.check) for f in done], errors)
    result = st.session_state.get("export_result")
    if result:
        files, errors = result
        for path, kind, check in files:
            p = Path(path)
            st.success(f"{names[kind]} written and verified: {p.name}. {check}")
            if p.exists():
                st.download_button(f"Download {p.name}", p.read_bytes(), file_name=p.name, mime=MIME[kind], key=f"dl-{kind}")
        for e in errors:
            st.error(f"Export failed: {e}")
