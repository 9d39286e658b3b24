"""Study panel (sidebar): open the demo, a path or an upload; slice, window and zoom controls."""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import streamlit as st

from integrations.errors import UnreadableFileError
from integrations.windowing import CT_WINDOWS, PERCENTILE_WINDOWS

from ..state import Study, Workstation, open_study
from . import guarded

log = logging.getLogger("clinseg.app")
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "app" / "demo" / "colin27_demo.nii.gz"
ZOOMS = (1.0, 1.5, 2.0, 3.0, 4.0)


def load_study(path: str | Path, title: str, kind: str, series_uid: str | None = None) -> Study:
    from integrations.loaders import load_volume

    vol = load_volume(path, series_uid=series_uid)
    return Study(volume=vol, title=title, kind=kind)


def _open(ws: Workstation, study: Study) -> None:
    open_study(ws, study)
    for key in ("slice", "zoom", "pan_x", "pan_y"):
        st.session_state.pop(key, None)
    info = study.volume.describe()
    # Patient-free: kind, modality and size only (the path/name may identify the patient).
    log.info("opened a %s study: %s %s", kind_word(study.kind), info["modality"], info["shape_zyx"])


def kind_word(kind: str) -> str:
    return {"demo": "demo", "path": "local", "upload": "uploaded"}.get(kind, kind)


def _save_uploads(files) -> Path:
    """Uploaded files -> a private temp folder (a DICOM series arrives as many files)."""
    folder = Path(tempfile.mkdtemp(prefix="clinseg-upload-"))
    for f in files:
        name = Path(f.name).name or "upload"
        (folder / name).write_bytes(f.getvalue())
    return folder


def _upload_target(folder: Path) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if not files:
        raise UnreadableFileError("nothing was uploaded.")
    if len(files) == 1:
        return files[0]
    return folder  # several files: a DICOM series


def open_demo_on_first_start(ws: Workstation) -> None:
    """`make run` passes --demo: a new session starts on the bundled demo case, once."""
    if "--demo" in sys.argv[1:] and ws.study is None and not st.session_state.get("demo_autoopened"):
        st.session_state["demo_autoopened"] = True
        with guarded("open the demo study"):
            _open(ws, load_study(DEMO, "Colin27 demo (T1 MRI)", "demo"))


def render_open(ws: Workstation) -> None:
    st.header("Study")
    if st.button("Open demo study", key="open_demo", icon=":material/neurology:", width="stretch",
                 help="Colin27 T1 MRI, 40 axial slices (not patient data)"):
        with guarded("open the demo study"):
            _open(ws, load_study(DEMO, "Colin27 demo (T1 MRI)", "demo"))
    with st.form("open_path_form", border=False):
        path = st.text_input("Path on this computer", key="path",
                             placeholder="DICOM folder or file, .nii.gz, .nrrd, .png ...")
        series = st.text_input("DICOM series UID (only if the folder holds several)", key="series_uid")
        if st.form_submit_button("Open path", icon=":material/folder_open:") and path.strip():
            with guarded("open the study"):
                p = Path(path.strip()).expanduser()
                _open(ws, load_study(p, f"{p.name}", "path", series.strip() or None))
    uploads = st.file_uploader("...or upload (several files for a DICOM series)", accept_multiple_files=True, key="upload")
    if uploads and st.button("Open upload", key="open_upload", icon=":material/upload:"):
        with guarded("open the uploaded study"):
            folder = _save_uploads(uploads)
            target = _upload_target(folder)
            _open(ws, load_study(target, "uploaded study", "upload"))


def render_navigation(ws: Workstation) -> None:
    """Slice slider (+ PageUp/PageDown), window preset, zoom and pan."""
    vol = ws.study.volume
    n = vol.num_slices
    if n > 1:
        c1, c2 = st.columns(2)
        if c1.button("Prev", key="prev_slice", shortcut="PageDown", width="stretch", help="Previous slice (PageDown)"):
            ws.slice_index = max(0, ws.slice_index - 1)
            st.session_state["slice"] = ws.slice_index
        if c2.button("Next", key="next_slice", shortcut="PageUp", width="stretch", help="Next slice (PageUp)"):
            ws.slice_index = min(n - 1, ws.slice_index + 1)
            st.session_state["slice"] = ws.slice_index
        if ws.goto_slice is not None:
            st.session_state["slice"], ws.goto_slice = ws.goto_slice, None
        st.session_state.setdefault("slice", ws.slice_index)
        ws.slice_index = int(st.slider("Slice", 0, n - 1, key="slice", help="Arrow keys move the slider; PageUp/PageDown anywhere."))
    else:
        ws.slice_index = 0
    presets = ["default", *PERCENTILE_WINDOWS, *CT_WINDOWS] if vol.modality.upper() == "CT" else ["default", *PERCENTILE_WINDOWS]
    if ws.window not in presets:
        ws.window = "default"
    ws.window = st.selectbox("Window", presets, index=presets.index(ws.window), key="window",
                             help="CT: Hounsfield presets; MR/photos: percentile windows of the whole study.")
    ws.zoom = float(st.select_slider("Zoom", options=ZOOMS, value=ws.zoom if ws.zoom in ZOOMS else 1.0, key="zoom",
                                     format_func=lambda z: f"{z:g}x"))
    h, w = vol.shape[1:]
    if ws.zoom > 1.0:
        cx = st.slider("Pan x", 0, w - 1, int(ws.center[0]) if ws.center else w // 2, key="pan_x")
        cy = st.slider("Pan y", 0, h - 1, int(ws.center[1]) if ws.center else h // 2, key="pan_y")
        ws.center = (float(cx), float(cy))
    else:
        ws.center = None


def render_info(ws: Workstation) -> None:
    """Patient-free facts about the open study."""
    vol = ws.study.volume
    info = vol.describe()
    z, h, w = info["shape_zyx"]
    sx, sy, sz = info["spacing_xyz_mm"]
    st.markdown(f"**{ws.study.title}**")
    c = st.columns(4)
    c[0].metric("Modality", info["modality"])
    c[1].metric("Size", f"{w}×{h}×{z}")
    c[2].metric("Spacing (mm)", f"{sx:g}×{sy:g}×{sz:g}")
    c[3].metric("Source", "DICOM" if info["dicom"] else kind_word(ws.study.kind))
    lo, hi = info["value_range"]
    st.caption(f"Intensity range {lo:.4g} .. {hi:.4g}; {info['channels']} channel(s); "
               "no patient identifiers are shown or logged.")
