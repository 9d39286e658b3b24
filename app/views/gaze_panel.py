"""Gaze panel: segment by looking. Three sources, one pipeline (prompting.gaze):
- replay a Pupil Cloud recording (integrations.gaze_recording: scene video -> AprilTag homography ->
  slice pixels), as a background job;
- the mouse as gaze: each click on the image is a 300 ms dwell (for demos, users without a tracker);
- a live Pupil Labs tracker (integrations.pupil_device through app.live_gaze): connect, status,
  pause, stop; fixations re-decode the mask as they arrive (polled by a fragment, never blocking).
While gaze is on, the image is shown 1:1 inside a board of tag36h11 markers for the screen mapping.
"""
from __future__ import annotations

import streamlit as st

from .. import actions
from ..jobs import Job, start_job
from ..render import apriltag_frame, gaze_geometry
from ..state import Workstation
from . import get_segmenter, guarded, show_error

MODES = ("Off", "Replay a recording", "Mouse as gaze", "Live tracker")
CLICK_DWELL_S = 0.3  # a mouse click stands for a fixation this long
MOUSE_KEY = "gaze_mouse"


def gaze_mode() -> str:
    return st.session_state.get("gaze_mode", "Off")


def gaze_active(ws: Workstation) -> bool:
    return gaze_mode() != "Off"


def viewing_geometry(vp):
    from prompting.gaze import ViewingGeometry

    return ViewingGeometry(zoom=vp.scale)


def current_geometry(ws: Workstation):
    """(layout, viewer, viewport) for the slice as it is shown now."""
    from ..render import viewport

    shape = ws.study.volume.shape[1:]
    vp = viewport(shape, ws.zoom, ws.center)
    layout, viewer = gaze_geometry(vp, shape)
    return layout, viewer, vp


# -- replay ------------------------------------------------------------------------------------------
def start_replay(ws: Workstation, folder: str) -> Job:
    from integrations.gaze_recording import load_recording

    recording = load_recording(folder.strip())  # errors in the folder show at once, before any work
    layout, viewer, vp = current_geometry(ws)
    seg, image01 = get_segmenter(), actions.slice_session(ws).image01
    geometry = viewing_geometry(vp)

    def run(job: Job):
        from integrations.gaze_recording import recorded_fixations, replay
        from integrations.screen_mapping import GazeMapper
        from models.gaze_zoom import sharpen_gaze
        from prompting.gaze import detect_fixations, gaze_prompt

        job.progress(0, 4, "mapping gaze through the scene video's markers")
        if recording.fixations:  # Pupil Cloud's own fixations: use them (the device saw the raw signal)
            fixations = recorded_fixations(recording, GazeMapper(layout, viewer))
            how = "recorded fixations"
        else:
            samples = replay(recording, GazeMapper(layout, viewer))
            job.progress(1, 4, "detecting fixations")
            fixations = detect_fixations(samples, geometry)
            how = "fixations detected in the gaze samples"
        job.progress(2, 4, f"{len(fixations)} fixation(s) on the image; decoding")
        emb = seg.embed(image01)
        proposal = gaze_prompt(seg, emb, image01.shape[:2], fixations, geometry, image01=image01)
        # a replay is one-shot: no one is waiting on a live mask, so the reading is also repeated on a
        # zoomed crop for a small structure (models/gaze_zoom.py; docs/gaze.md: +0.05 Dice on AAL regions)
        job.progress(3, 4, "reading again on a zoomed crop")
        best = sharpen_gaze(seg, image01, proposal, fixations, geometry)
        proposal.prompt = best.prompt.with_note(f"replayed recording: {how}")
        proposal.segmentation = best.segmentation
        job.progress(4, 4, "done")
        return proposal

    return start_job("Gaze replay", "gaze", run, {"study": id(ws.study), "slice": ws.slice_index})


def apply_gaze(ws: Workstation, job: Job, proposal) -> None:
    """Script thread: the proposal's mask goes on the active object (or a new 'gaze' object)."""
    from .segment import after_prompt

    if job.payload.get("study") != id(ws.study) or job.payload.get("slice") != ws.slice_index:
        ws.messages.append(("warning", "The gaze replay finished for another slice; replay it again here."))
        return
    label = "" if ws.active_object is not None else "gaze"
    after_prompt(ws, actions.apply_gaze(ws, get_segmenter(), proposal.prompt, proposal.segmentation, label=label))


def render_replay(ws: Workstation) -> None:
    st.caption("A Pupil Cloud 'Timeseries Data + Scene Video' export of a reading of THIS view (same slice, "
               "zoom and markers). Gaze is mapped through the markers in the scene video.")
    with st.form("gaze_replay_form", border=False):
        folder = st.text_input("Recording folder", key="gaze_recording")
        go = st.form_submit_button("Replay", icon=":material/play_arrow:")
    if go and folder.strip():
        try:
            ws.jobs.append(start_replay(ws, folder))
        except Exception as e:  # noqa: BLE001
            show_error(e, "replay the recording")


# -- mouse -------------------------------------------------------------------------------------------
def mouse_session(ws: Workstation, vp):
    """The live gaze session of this slice/view (a new one when the slice, window or zoom changed)."""
    from integrations.gaze_recording import MouseGaze
    from prompting.gaze import LiveGazeSession

    key = (id(ws.study), ws.slice_index, ws.window, ws.zoom, ws.center)
    cur = st.session_state.get(MOUSE_KEY)
    if cur is None or cur["key"] != key:
        image01 = actions.slice_session(ws).image01
        cur = {"key": key, "mouse": MouseGaze(), "live": LiveGazeSession(get_segmenter(), image01, viewing_geometry(vp)),
               "t": 0.0, "last_click": None}
        st.session_state[MOUSE_KEY] = cur
    return cur


def mouse_click(ws: Workstation, cur: dict, xy: tuple[float, float]):
    """One click = a CLICK_DWELL_S fixation at xy (slice px), then a short look away."""
    t = cur["t"]
    cur["mouse"].move(xy[0], xy[1], t)
    cur["mouse"].move(None, None, t + CLICK_DWELL_S)
    cur["t"] = t + CLICK_DWELL_S + 0.1
    return cur["live"].add_samples(cur["mouse"].samples(cur["t"]))


def render_mouse_view(ws: Workstation, board, layout, viewer, vp) -> None:
    from streamlit_image_coordinates import streamlit_image_coordinates  # a frontend component: import here

    cur = mouse_session(ws, vp)
    value = streamlit_image_coordinates(board, key=f"gaze-mouse-{ws.canvas_nonce}", width=board.shape[1])
    if value and value.get("unix_time") != cur["last_click"]:
        cur["last_click"] = value.get("unix_time")
        sx = value["x"] * board.shape[1] / max(1, value.get("width") or board.shape[1])
        sy = value["y"] * board.shape[0] / max(1, value.get("height") or board.shape[0])
        xy = viewer.screen_to_image(sx, sy)
        if xy is None:
            st.warning(f"That click ({sx:.0f}, {sy:.0f}) was off the image; look (click) at the structure.")
            return
        with guarded("segment from the mouse gaze"):
            update = mouse_click(ws, cur, xy)
            if update is not None:
                from .segment import after_prompt

                label = "" if ws.active_object is not None else "gaze"
                after_prompt(ws, actions.apply_gaze(ws, get_segmenter(), update.prompt, update.segmentation, label=label))
                st.rerun()
    if st.button("Not this (reject the dwell)", key="gaze_reject", icon=":material/block:"):
        with guarded("reject the gaze dwell"):
            update = cur["live"].reject()
            if update is not None:
                from .segment import after_prompt

                after_prompt(ws, actions.apply_gaze(ws, get_segmenter(), update.prompt, update.segmentation))
            st.rerun()


# -- live tracker --------------------------------------------------------------------------------------
LIVE_KEY = "gaze_live"  # app.live_gaze.LiveGazeLink while a tracker is connected
POLL_S = 0.5  # how often the page drains the device worker (the worker itself never waits on the page)


def live_link():
    return st.session_state.get(LIVE_KEY)


def connect_live(address: str, port: int):
    """Start the device worker (returns at once: connecting happens in its thread) and its link."""
    from integrations.pupil_device import GazeStreamWorker

    from ..live_gaze import LiveGazeLink

    link = LiveGazeLink(GazeStreamWorker(address, int(port), scene_frames=True).start(), get_segmenter())
    st.session_state[LIVE_KEY] = link
    return link


def disconnect_live() -> None:
    link = st.session_state.pop(LIVE_KEY, None)
    if link is not None:
        link.stop()


def store_live_update(ws: Workstation, update, link=None) -> None:
    """A new live mask: on the active object (the first one makes a 'gaze' object).

    Live masks follow one another while the user looks: consecutive ones (nothing else changed the
    objects in between) are ONE undo step, so undo goes back to before this look, not through every
    intermediate mask."""
    from .segment import after_prompt

    depth = len(ws.undo_stack)
    coalesce = link is not None and link.last_step == (depth, ws.active, ws.slice_index, id(ws.objects))
    label = "" if ws.active_object is not None else "gaze"
    after_prompt(ws, actions.apply_gaze(ws, get_segmenter(), update.prompt, update.segmentation, label=label))
    if coalesce and len(ws.undo_stack) == depth + 1:
        ws.undo_stack.pop()  # the previous live mask's snapshot: the one before the look stays
    if link is not None:
        link.last_step = (len(ws.undo_stack), ws.active, ws.slice_index, id(ws.objects))


def live_status_message(s) -> tuple[str, str] | None:
    """(level, text) to show for a device state other than streaming (None: nothing to say)."""
    if s.connection == "lost":
        return "warning", (f"The eye tracker is not answering: {s.message or 'connection lost'}. The masks so far are "
                           "kept and every tool still works; it reconnects by itself when the device is back, or "
                           "press Disconnect.")
    if s.connection == "connecting":
        return "info", "Connecting to the eye tracker..."
    if s.connection == "connected" and s.worn is False:
        return "warning", "The glasses are not worn: no gaze is used until they are put on."
    return None


@st.fragment(run_every=POLL_S)
def live_poll(ws: Workstation) -> None:
    """Device status and new gaze, every POLL_S: drains the worker, re-decodes, refreshes the page
    when a new mask came (a full rerun: the overlay and the objects list follow)."""
    link = live_link()
    if link is None:
        return
    s = link.worker.status()
    c = st.columns([3, 2, 2, 2])  # "connecting" must fit
    c[0].metric("Connection", s.connection)
    c[1].metric("Battery", f"{s.battery_percent} %" if s.battery_percent is not None else "–")
    c[2].metric("Worn", {True: "yes", False: "no", None: "–"}[s.worn])
    c[3].metric("Gaze rate", f"{s.gaze_rate_hz:.0f} Hz")
    msg = live_status_message(s)
    if msg is not None:
        getattr(st, msg[0])(msg[1])
    n = link.counts
    camera = {True: "streaming", False: "not streamed by the device", None: "–"}[getattr(s, "scene_camera", None)]
    st.caption(f"Gaze on the image: {n.on_image} of {n.received} samples · scene camera: {camera} · "
               f"scene frames mapped: {n.frames}"
               + (f" ({n.frames_failed} without enough markers)" if n.frames_failed else "")
               + f" · masks: {n.updates}" + (" · fixations from the device" if s.eye_events else ""))
    if n.received and not n.on_image and n.last_frame_error:
        st.caption(n.last_frame_error)
    if s.connection in ("paused", "stopped"):
        return
    update = None
    with guarded("segment from the live gaze"):
        update = link.poll()
    if update is not None:
        with guarded("segment from the live gaze"):
            store_live_update(ws, update, link)
            st.rerun()


def render_live(ws: Workstation) -> None:
    link = live_link()
    c = st.columns([3, 1])
    address = c[0].text_input("Companion device address (phone IP)", key="gaze_address", placeholder="192.168.1.20")
    port = c[1].number_input("Port", 1, 65535, 8080, key="gaze_port")
    b = st.columns(3)
    if link is None:
        if b[0].button("Connect", key="gaze_connect", icon=":material/link:") and address.strip():
            with guarded("connect to the eye tracker"):
                connect_live(address.strip(), int(port))
                st.rerun()
        if b[1].button("Find devices", key="gaze_discover", icon=":material/search:",
                       help="Companion apps announcing themselves on this local network (mDNS, ~2 s)."):
            with guarded("look for eye trackers"), st.spinner("Looking for Companion devices on this network..."):
                from integrations.pupil_device import discover_devices

                found = discover_devices(search_s=2.0)
                st.session_state["gaze_found"] = [(d.name, d.address, d.port) for d in found]
        found = st.session_state.get("gaze_found")
        if found is not None:
            if found:
                st.caption("Found: " + ", ".join(f"{n} at {a}:{p}" for n, a, p in found) + " (type the address above).")
            else:
                st.caption("No Companion device answered: check that the phone is on this network with the "
                           "Companion app open, or type its address.")
        st.caption("Connect to a Neon / Pupil Invisible Companion app on this network (same Wi-Fi); its "
                   "address is shown in the app's stream settings.")
        return
    paused = link.worker.status().connection == "paused"
    if b[0].button("Resume" if paused else "Pause", key="gaze_pause", icon=":material/pause:" if not paused else ":material/play_arrow:"):
        link.worker.resume() if paused else link.worker.pause()
        st.rerun()
    if b[1].button("Disconnect", key="gaze_stop", icon=":material/link_off:"):
        disconnect_live()
        st.rerun()
    if b[2].button("Not this (reject the dwell)", key="gaze_live_reject", icon=":material/block:",
                   help="The place you looked at longest becomes a negative point; the mask is decoded again."):
        with guarded("reject the gaze dwell"):
            update = link.reject()
            if update is not None:
                store_live_update(ws, update, link)
            st.rerun()
    st.caption("Look at the structure: gaze is mapped to the image through the markers around it (scene camera), "
               "fixations become a box, and the mask follows as you look. Keep the markers visible.")


def render_live_view(ws: Workstation, board, layout, viewer, vp) -> None:
    """The board for the tracker's scene camera, then the polling fragment (status + new masks)."""
    st.image(board, width=board.shape[1], caption="Gaze on: keep the markers visible to the scene camera.")
    link = live_link()
    if link is None:
        return
    from ..live_gaze import LiveView

    with guarded("prepare the live gaze session"):
        view = LiveView((id(ws.study), ws.slice_index, ws.window, ws.zoom, ws.center), layout, viewer)
        if view.key != (link.view.key if link.view is not None else None):
            link.set_view(view, actions.slice_session(ws).image01, viewing_geometry(vp))
        live_poll(ws)


def render_gaze_view(ws: Workstation, shown, vp) -> None:
    """The image 1:1 inside the AprilTag board (all gaze modes)."""
    layout, viewer = gaze_geometry(vp, ws.study.volume.shape[1:])
    board = apriltag_frame(shown, layout, viewer)
    if gaze_mode() == "Mouse as gaze":
        render_mouse_view(ws, board, layout, viewer, vp)
    elif gaze_mode() == "Live tracker":
        render_live_view(ws, board, layout, viewer, vp)
    else:
        st.image(board, width=board.shape[1], caption="Gaze on: keep the markers visible to the scene camera.")


def render_gaze_panel(ws: Workstation) -> None:
    st.radio("Gaze source", MODES, horizontal=True, key="gaze_mode",
             help="While gaze is on, the image shows inside AprilTag markers for the eye tracker's screen mapping.")
    mode = gaze_mode()
    if mode == "Replay a recording":
        render_replay(ws)
    elif mode == "Live tracker":
        render_live(ws)
    elif mode == "Mouse as gaze":
        st.caption(f"Click where you look: each click counts as a {CLICK_DWELL_S * 1000:.0f} ms fixation; "
                   "the mask follows the dwell-weighted cluster. 'Not this' turns the main dwell into a negative point.")
