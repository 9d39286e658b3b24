"""Text query box: "left hippocampus", "the brain" -> box(es) on this slice -> mask(s), one object each.

Understanding the words and registering the template can take tens of seconds the first time
(loading the text encoder, 3-D registration), so the query runs as a background job; the page stays
usable and shows its progress, and the masks appear when it is done.
"""
from __future__ import annotations

import threading

import streamlit as st

from ..jobs import Job, start_job
from ..state import Workstation
from . import get_segmenter, show_error


class LazyTextPrompter:
    """Builds prompting.text_prompt.TextPrompter on first use, in whichever thread needs it first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompter = None

    def get(self, segmenter):
        with self._lock:
            if self._prompter is None:
                from models.text_encoder import load_text_encoder
                from prompting.exemplars import ExemplarLibrary
                from prompting.query import QueryParser
                from prompting.template_localiser import TemplateLocaliser
                from prompting.text_prompt import TextPrompter
                from prompting.vocabulary import load_vocabulary

                self._prompter = TextPrompter(QueryParser(load_vocabulary(), load_text_encoder()), TemplateLocaliser(),
                                              exemplars=ExemplarLibrary(), embedder=segmenter)
            return self._prompter


@st.cache_resource(show_spinner=False)
def text_prompter() -> LazyTextPrompter:
    from models.text_encoder import preload_libraries

    preload_libraries()  # in the script thread: see its docstring
    return LazyTextPrompter()


def start_text_query(ws: Workstation, query: str) -> Job:
    from .. import actions

    holder, seg = text_prompter(), get_segmenter()
    vol, z = ws.study.volume, ws.slice_index
    image01 = actions.slice_session(ws).image01

    def run(job: Job):
        job.progress(0, 2, "understanding the query (the text model loads once)")
        prompter = holder.get(seg)
        job.progress(1, 2, "finding the structure (template registration, once per study)")
        result = prompter.prompts_for_slice(query, vol, z, image01)
        job.progress(2, 2, "done")
        return result

    return start_job(f"Text query '{query}'", "text", run, {"study": id(ws.study), "slice": z, "query": query})


def apply_text_result(ws: Workstation, job: Job, result) -> None:
    """Script thread: one object per localised target; what was not found is said, never guessed."""
    from .. import actions

    if job.payload.get("study") != id(ws.study):
        return
    ws.messages.clear()
    if result.slice_index is not None and result.slice_index != ws.slice_index:
        ws.slice_index = ws.goto_slice = result.slice_index  # the slider follows on the next run
    seg = get_segmenter()
    active = ws.active_object
    reuse = active is not None and not active.slices and active.volume_mask is None  # an empty object: fill it
    for i, prompt in enumerate(result.prompts):
        r = actions.run_prompt(ws, seg, prompt, label=prompt.label, new_object=not (reuse and i == 0))
        ws.messages.append(("success", f"'{prompt.label}': {r.area_px * ws.study.volume.pixel_area_mm2:.1f} mm². "
                                       f"{prompt.notes[0] if prompt.notes else ''}"))
        ws.messages.extend(("warning", f"Check: {f}") for f in r.flags)
    for failure in result.failures:
        ws.messages.append(("warning", f"Not segmented: {failure}."))
    if not result.found:
        ws.messages.append(("warning", f"Nothing found for '{job.payload['query']}'. Try the structure's name "
                                       "(e.g. 'left putamen', 'Hippocampus_R', 'brain'), or draw a box."))
    ws.canvas_nonce += 1


def render_text_query(ws: Workstation) -> None:
    busy = any(j.running and j.kind == "text" for j in ws.jobs)
    with st.form("text_query_form", border=False):
        query = st.text_input("Text query", key="text_query", placeholder="e.g. left putamen, Hippocampus_R, brain")
        go = st.form_submit_button("Find and segment", icon=":material/search:", disabled=busy)
    if go and query.strip():
        try:
            ws.jobs.append(start_text_query(ws, query.strip()))
        except Exception as e:  # noqa: BLE001
            show_error(e, "start the text query")
