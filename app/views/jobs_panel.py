"""Background work panel: encode the whole volume, propagate an object in 3-D; progress never blocks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import streamlit as st

from .. import actions
from ..jobs import Job, embed_volume, start_job
from ..state import Workstation, replace_object
from . import get_segmenter, show_error


def _images(ws: Workstation):
    from integrations.windowing import slice_image, volume_window

    vol = ws.study.volume
    bounds = volume_window(vol, actions.window_name(ws))
    return lambda z: slice_image(vol, z, bounds)


def start_embedding(ws: Workstation) -> Job:
    seg = get_segmenter()
    images = _images(ws)
    n, z = ws.study.volume.num_slices, ws.slice_index
    return start_job("Encoding the volume", "embed", lambda job: embed_volume(seg, images, n, z, job))


def start_propagation(ws: Workstation) -> Job:
    obj = ws.active_object
    seg = get_segmenter()
    seeds = actions.propagation_seeds(ws, seg)
    vol, window = ws.study.volume, actions.window_name(ws)

    def run(job: Job):
        from models.propagation import propagate

        return propagate(seg, vol, seeds, view="axial", window=window, progress=job.progress, label=obj.label)

    return start_job(f"Propagating '{obj.label}' through the volume", "propagate", run, {"oid": obj.oid, "study": id(ws.study)})


def apply_finished(ws: Workstation) -> bool:
    """Apply results of finished jobs to the state (script thread). True if anything changed."""
    changed = False
    for job in ws.jobs:
        if not job.finished or job.applied:
            continue
        result = job.take_result()
        if job.error is not None:
            ws.messages.append(("error", f"{job.name} failed: {job.error}"))
            changed = True
        elif job.kind == "propagate" and job.payload.get("study") == id(ws.study):
            obj = ws.object(job.payload["oid"])
            if obj is not None and result is not None:
                replace_object(ws, replace(obj, volume_mask=np.asarray(result.mask, bool)))
                ws.messages.append(("success", f"3-D mask of '{obj.label}': {result.volume_ml:.2f} mL. " + "; ".join(result.notes[:3])))
                ws.canvas_nonce += 1
                changed = True
        elif job.kind == "text":
            from .text_query import apply_text_result

            apply_text_result(ws, job, result)
            changed = True
        elif job.kind == "gaze":
            from .gaze_panel import apply_gaze

            apply_gaze(ws, job, result)
            changed = True
        elif job.kind == "click" and job.payload.get("study") == id(ws.study):
            refined = actions.apply_click_refinement(ws, get_segmenter(), job.payload["preview"], job.payload["slice"], result)
            if refined is not None:
                ws.messages.append(("success", f"Click refined by box proposals: {refined.area_px} px "
                                               f"(predicted IoU {refined.predicted_iou:.2f})."))
                ws.canvas_nonce += 1
                changed = True
        elif job.kind == "embed":
            ws.messages.append(("success", f"All {result} slices encoded: prompts on any slice now only decode."))
            changed = True
    return changed


@st.fragment(run_every=1.0)
def _progress(ws: Workstation) -> None:
    running = [j for j in ws.jobs if j.running]
    for job in running:
        st.progress(job.fraction, text=f"{job.name}: {job.message or 'starting'} ({job.done}/{job.total or '?'})")
        if st.button("Cancel", key=f"cancel-{id(job)}"):
            job.cancel.set()
    if not running and any(j.finished and not j.applied for j in ws.jobs):
        st.rerun(scope="app")


def render_jobs(ws: Workstation) -> None:
    if apply_finished(ws):
        st.rerun()
    st.subheader("Volume")
    busy = any(j.running for j in ws.jobs if j.kind != "click")  # a click's refinement takes ~1 s
    c = st.columns(2)
    if c[0].button("Encode all slices", key="embed_volume", icon=":material/memory:", disabled=busy,
                   help="Runs in the background; later prompts on any slice then take milliseconds."):
        try:
            ws.jobs.append(start_embedding(ws))
        except Exception as e:  # noqa: BLE001
            show_error(e, "start encoding the volume")
    if c[1].button("Propagate in 3-D", key="propagate", icon=":material/view_in_ar:", disabled=busy,
                   help="From the active object's box on this slice through the whole volume (background)."):
        try:
            ws.jobs.append(start_propagation(ws))
        except Exception as e:  # noqa: BLE001
            show_error(e, "propagate the object")
    if any(j.running for j in ws.jobs):
        _progress(ws)
