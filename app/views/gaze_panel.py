"""Gaze panel: live Pupil Labs tracker, replay of a recording, or the mouse as gaze."""
from __future__ import annotations

import streamlit as st

from ..state import Workstation

MODES = ("Off", "Replay a recording", "Mouse as gaze", "Live tracker")


def gaze_active(ws: Workstation) -> bool:
    return st.session_state.get("gaze_mode", "Off") != "Off"


def render_gaze_view(ws: Workstation, shown, vp) -> None:
    from ..render import apriltag_frame

    framed, _ = apriltag_frame(shown)
    st.image(framed, caption="Gaze on: keep the four markers visible to the scene camera.")


def render_gaze_panel(ws: Workstation) -> None:
    st.radio("Gaze source", MODES, horizontal=True, key="gaze_mode")
