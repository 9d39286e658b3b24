"""Segment panel: the image with the mask overlay, the drawing tools, typed prompts, objects, history."""
from __future__ import annotations

import logging

import numpy as np
import streamlit as st
from PIL import Image

from .. import actions
from ..prompts import CANVAS_MODE, TOOLS, canvas_prompt, parse_coordinates, tool_kind
from ..render import compose, crop_and_scale, draw_marks, viewport
from ..state import Status, Workstation, add_object, delete_object, redo, set_status, undo
from . import get_segmenter, guarded

log = logging.getLogger("clinseg.app")
STROKE = {"Box": "#00ff00", "Click +": "#00dd00", "Click −": "#ff3030", "Scribble +": "#00dd00", "Scribble −": "#ff3030"}


def flash(ws: Workstation, level: str, text: str) -> None:
    """A message shown after the rerun that follows a prompt."""
    ws.messages.append((level, text))


def show_messages(ws: Workstation) -> None:
    """Messages of the last action; they stay until the next one (components rerun the page on their own)."""
    for level, text in ws.messages:
        getattr(st, level)(text)


def display_image(ws: Workstation):
    """(display RGB array, viewport) of the current slice with every object drawn on it."""
    session = actions.slice_session(ws)
    rgb = compose(session.image01, ws.objects, ws.slice_index, ws.active, ws.show_uncertainty)
    vp = viewport(session.image01.shape[:2], ws.zoom, ws.center)
    shown = crop_and_scale(rgb, vp)
    obj = ws.active_object
    r = obj.result(ws.slice_index) if obj is not None else None
    if r is not None:
        shown = draw_marks(shown, vp, r.prompt.points, r.prompt.box)
    return shown, vp


def after_prompt(ws: Workstation, result) -> None:
    vol = ws.study.volume
    ws.messages.clear()
    area = result.area_px * vol.pixel_area_mm2
    if result.area_px == 0:
        flash(ws, "warning", "The model found nothing for this prompt. Draw a box around the structure, "
                             "or add a positive click inside it.")
    else:
        flash(ws, "success", f"Mask updated: {area:.1f} mm² (predicted IoU {result.predicted_iou:.2f}).")
    if result.fusion:
        flash(ws, "info", "Prompts fused: " + "; ".join(result.fusion))
    for f in result.flags:
        flash(ws, "warning", f"Check: {f}")
    ws.canvas_nonce += 1


def segment_drawn(ws: Workstation, drawn) -> None:
    """One drawn or typed prompt -> the active object's result. A first click on a small structure
    shows the click decoder's reading at once and its box proposals' answer when they are done
    (a background job, `actions.preview_click`); everything else is answered here."""
    seg = get_segmenter()
    previewed = actions.preview_click(ws, seg, drawn)
    if previewed is None:
        after_prompt(ws, actions.apply_drawn(ws, seg, drawn))
        return
    from ..jobs import start_job

    result, refine = previewed
    after_prompt(ws, result)
    flash(ws, "info", "A small structure: this is the click decoder's first reading; box proposals refine it in a moment.")
    ws.jobs.append(start_job("Refining the click", "click", lambda job: refine(),
                             {"study": id(ws.study), "slice": ws.slice_index, "preview": result}))


def render_canvas(ws: Workstation, tool: str, shown: np.ndarray, vp) -> None:
    """The drawing canvas over the image; each finished shape becomes one prompt."""
    try:
        from streamlit_drawable_canvas import st_canvas  # imported here: it registers a frontend component
    except Exception as e:  # noqa: BLE001 - the typed prompts below still work without it
        st.image(shown, caption="Drawing is unavailable here; use the typed prompt below.")
        log.warning("drawing canvas unavailable: %s", type(e).__name__)
        return
    h, w = shown.shape[:2]
    res = st_canvas(
        background_image=Image.fromarray(shown), width=w, height=h, drawing_mode=CANVAS_MODE[tool],
        stroke_width=2 if tool == "Box" else 3, stroke_color=STROKE[tool], fill_color="rgba(0,0,0,0)",
        point_display_radius=4, update_streamlit=True, key=f"canvas-{ws.canvas_nonce}",
    )
    objs = (res.json_data or {}).get("objects") or []
    if not objs:
        return
    drawn = canvas_prompt(objs[-1], tool, vp)
    if drawn is None:
        return
    ok = False
    with guarded(f"segment with the {tool.lower()} prompt"):
        segment_drawn(ws, drawn)
        ok = True
    if not ok:
        ws.canvas_nonce += 1  # drop the bad shape so the next one starts clean
        return
    st.rerun()


def render_typed(ws: Workstation, tool: str) -> None:
    """Coordinates typed in slice pixels: the keyboard path, same code as the canvas."""
    kind, positive = tool_kind(tool)
    hint = {"box": "x0 y0 x1 y1", "click": "x y", "scribble": "x y, x y, x y ..."}[kind]
    with st.form("typed_prompt", border=False):
        text = st.text_input(f"{tool} by coordinates (slice pixels: {hint})", key="typed_coords")
        if st.form_submit_button("Apply", icon=":material/check:"):
            with guarded(f"segment with the typed {kind}"):
                drawn = parse_coordinates(text, kind, positive)
                segment_drawn(ws, drawn)
                st.rerun()


def render_objects(ws: Workstation) -> None:
    vol = ws.study.volume
    z = ws.slice_index
    c1, c2, c3 = st.columns([3, 1, 1])
    new_label = c1.text_input("New object label", key="new_label", placeholder="e.g. left hippocampus",
                              label_visibility="collapsed")
    if c2.button("New", key="new_object", icon=":material/add:", help="Start another labelled object"):
        ws.messages.clear()
        add_object(ws, new_label)
        ws.canvas_nonce += 1
        st.rerun()
    if c3.button("Undo", key="undo", shortcut="Ctrl+Z", icon=":material/undo:"):
        ws.messages.clear()
        undo(ws)
        ws.canvas_nonce += 1
        st.rerun()
    if st.button("Redo", key="redo", shortcut="Ctrl+Y", icon=":material/redo:", disabled=not ws.redo_stack):
        ws.messages.clear()
        redo(ws)
        ws.canvas_nonce += 1
        st.rerun()
    if not ws.objects:
        st.caption("No objects yet: the first prompt creates one.")
        return
    render_runtime(get_segmenter())
    options = [o.oid for o in ws.objects]
    names = {o.oid: o.label for o in ws.objects}
    ws.active = st.radio("Prompts go to", options, index=options.index(ws.active) if ws.active in options else 0,
                         format_func=lambda oid: names[oid], key=f"active-{ws.canvas_nonce}", horizontal=True)
    for o in ws.objects:
        area = o.area_mm2(z, vol)
        ml = o.volume_ml(vol)
        r = o.result(z)
        sw = "#{:02x}{:02x}{:02x}".format(*o.color)
        with st.container(border=True):
            st.markdown(f"<span style='color:{sw}'>■</span> **{o.label}** · {o.status.value}", unsafe_allow_html=True)
            text = f"Area on slice {z}: {area:.1f} mm² · volume {ml:.3f} mL · {len(o.slices)} slice(s) edited"
            if r is not None:
                text += f" · predicted IoU {r.predicted_iou:.2f}"
                if r.uncertainty is not None:
                    text += f" · uncertainty {r.uncertainty:.2f}"
            st.caption(text, help="area = mask pixels × pixel spacing; volume = all slices' voxels × voxel size")
            if r is not None and r.fusion:
                st.info(f"**Prompts fused**: {r.fusion[0]}  \n" + "\n".join(f"- {n}" for n in r.fusion[1:]),
                        icon=":material/merge:")
            elif r is not None and r.notes:
                st.caption("How the prompt was understood: " + "; ".join(r.notes[-3:]))
            for f in (r.flags if r is not None else ()):
                st.warning(f)
            b = st.columns(4)
            if b[0].button("Accept", key=f"accept-{o.oid}", icon=":material/check_circle:", disabled=o.status == Status.ACCEPTED):
                set_status(ws, o.oid, Status.ACCEPTED)
                st.rerun()
            if b[1].button("Reject", key=f"reject-{o.oid}", icon=":material/cancel:", disabled=o.status == Status.REJECTED):
                set_status(ws, o.oid, Status.REJECTED)
                st.rerun()
            if b[2].button("Delete", key=f"delete-{o.oid}", icon=":material/delete:"):
                ws.messages.clear()
                delete_object(ws, o.oid)
                ws.canvas_nonce += 1
                st.rerun()
            if b[3].button("Sharpen", key=f"sharpen-{o.oid}", icon=":material/center_focus_strong:", disabled=r is None,
                           help="Re-encode a zoomed crop around this slice's box (small structures): the mask is "
                                "replaced only when the model rates the zoomed one clearly better. Undo reverts it."):
                ws.messages.clear()
                ws.active = o.oid
                with guarded("sharpen the mask"):
                    result, what = actions.sharpen(ws, get_segmenter())
                    if result is not None:
                        after_prompt(ws, result)
                    flash(ws, "info", what.capitalize())
                    st.rerun()


def render_segment(ws: Workstation) -> None:
    show_messages(ws)
    left, right = st.columns([3, 2], gap="medium")
    with right:
        tool = st.radio("Tool", TOOLS, horizontal=True, key="tool",
                        help="Box: drag around the structure. Click +/−: add/remove. Scribble +/−: paint inside/outside.")
        ws.show_uncertainty = st.toggle("Uncertainty map", value=ws.show_uncertainty, key="show_uncertainty",
                                        help="Shows where the model disagrees with itself (computed for new prompts).")
        render_typed(ws, tool)
        from .text_query import render_text_query

        render_text_query(ws)
        from .gaze_panel import render_gaze_panel

        with guarded("run the gaze panel"):
            render_gaze_panel(ws)
        st.subheader("Objects")
        render_objects(ws)
        from .jobs_panel import render_jobs

        render_jobs(ws)
    with left:
        from .gaze_panel import gaze_active

        with guarded("draw the slice"):
            shown, vp = display_image(ws)
            if gaze_active(ws):
                from .gaze_panel import render_gaze_view

                render_gaze_view(ws, shown, vp)
            else:
                render_canvas(ws, tool, shown, vp)
            st.caption(f"{ws.study.title} · slice {ws.slice_index + 1}/{ws.study.volume.num_slices} · window {ws.window} · zoom {ws.zoom:g}x")


def render_runtime(segmenter) -> None:
    """Which engine runs the model, and why: a fallback to a slower runtime is never silent."""
    rep = getattr(segmenter, "runtime_report", None)
    if rep is None:
        return
    st.caption(f"Model runtime: {rep.reason}", help="The engine that runs LiteMedSAM on this computer (docs/speed.md). "
               "Run `clinseg export-onnx` once for the fast runtimes; PyTorch is the slower reference.")
    if rep.fell_back:
        st.warning(f"The {rep.requested} runtime could not be used; segmentation runs on {rep.active} (slower, same results).",
                   icon=":material/speed:")
