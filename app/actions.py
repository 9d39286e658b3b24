"""What a prompt does to the workstation: slice -> embedding -> prompt set -> mask -> new object state.

No Streamlit here: the views call these with the segmenter, tests can call them directly. The
prompting modules (clicks, scribbles, gaze, text, metadata, fusion) are imported lazily, where they
are used, so the workstation still starts when one of them cannot be imported.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from integrations.errors import InvalidPromptError
from prompting.promptset import Point, PromptSet, PromptSource

from .pipeline import SliceSession
from .prompts import DrawnPrompt
from .state import SliceResult, Workstation, store_result, target_object

log = logging.getLogger("clinseg.app")


def window_name(ws: Workstation) -> str | None:
    return None if ws.window in ("", "default") else ws.window


def slice_session(ws: Workstation) -> SliceSession:
    if ws.study is None:
        raise InvalidPromptError("no study is open: open the demo study or a file first.")
    return SliceSession.open(ws.study.volume, ws.slice_index, window_name(ws))


def _metadata_check(ws: Workstation, mask: np.ndarray) -> tuple[str, ...]:
    """Flags from the clinical metadata form (expected size, laterality), when prompting.metadata exists."""
    if not ws.metadata or ws.study is None:
        return ()
    try:
        from prompting import metadata as md
    except ImportError:
        return ()
    checker = getattr(md, "check_mask", None)
    build = getattr(md, "from_form", None)
    if checker is None or build is None:
        return ()
    meta = build(ws.metadata, ws.study.volume)
    return tuple(str(f) for f in checker(meta, mask, ws.study.volume, ws.slice_index))


def _uncertainty(segmenter, emb, prompt: PromptSet):
    """(map, scalar) from models.uncertainty (SAM-U style), or (None, None) when it is not installed."""
    try:
        from models import uncertainty as unc
    except ImportError:
        return None, None
    fn = getattr(unc, "estimate", None) or getattr(unc, "estimate_uncertainty", None)
    if fn is None:
        return None, None
    res = fn(segmenter, emb, prompt)
    umap = getattr(res, "map", None)
    if umap is None:
        umap = getattr(res, "uncertainty_map", None)
    score = getattr(res, "score", None)
    if score is None:
        score = getattr(res, "uncertainty", None)
    return umap, (None if score is None else float(score))


def run_prompt(ws: Workstation, segmenter, prompt: PromptSet, label: str = "", new_object: bool = False) -> SliceResult:
    """Decode `prompt` on the current slice and store the mask on the active (or a new) object."""
    session = slice_session(ws)
    prompt.validate(session.image01.shape[:2])
    emb = segmenter.embed(session.image01)
    seg = segmenter.decode(emb, prompt)
    umap, score = _uncertainty(segmenter, emb, prompt) if ws.show_uncertainty else (seg.uncertainty_map, seg.uncertainty)
    result = SliceResult(
        mask=np.asarray(seg.mask, bool), predicted_iou=float(seg.predicted_iou), prompt=prompt,
        low_res_logits=seg.low_res_logits, uncertainty_map=umap, uncertainty=score,
        notes=tuple(prompt.notes) + tuple(n for n in seg.notes if n not in prompt.notes),
        flags=tuple(seg.flags) + _metadata_check(ws, seg.mask),
    )
    if new_object:
        from .state import add_object

        add_object(ws, label or prompt.label)
    obj = target_object(ws, label or prompt.label)
    store_result(ws, obj, ws.slice_index, result, label=label or None)
    # Patient-free log line: sizes and scores only, never the study's name or path.
    log.info("segmented slice %d: %s prompt, area %d px, predicted IoU %.2f",
             ws.slice_index, "+".join(sorted(s.value for s in prompt.sources)), result.area_px, result.predicted_iou)
    return result


def drawn_to_prompt(ws: Workstation, segmenter, drawn: DrawnPrompt) -> PromptSet:
    """Turn one drawn shape into the next PromptSet of the active object on this slice."""
    session = slice_session(ws)
    obj = ws.active_object
    previous = obj.result(ws.slice_index) if obj is not None else None
    label = obj.label if obj is not None else ""
    if drawn.kind == "box":
        x0, y0, x1, y1 = drawn.box()
        return PromptSet.from_box(round(x0), round(y0), round(x1), round(y1), label=label)
    emb = segmenter.embed(session.image01)
    if drawn.kind == "click":
        from prompting import clicks

        (x, y), = drawn.points
        point = Point(float(round(x)), float(round(y)), drawn.positive, PromptSource.CLICK)
        if previous is not None and previous.prompt.box is not None:
            return clicks.correct_with_click(segmenter, emb, previous.prompt, previous.low_res_logits, point)
        earlier = previous.prompt.points if previous is not None else ()
        if not any(p.positive for p in earlier + (point,)):
            raise InvalidPromptError("a negative click removes part of a mask: first give the object with a box or a positive click.")
        return replace(clicks.propose_from_points(segmenter, emb, session.image01, earlier + (point,)), label=label)
    if drawn.kind == "scribble":
        from prompting import scribbles

        return scribbles_prompt(scribbles, segmenter, emb, session.image01, previous, drawn, label)
    raise InvalidPromptError(f"unknown prompt kind {drawn.kind!r}.")


def scribbles_prompt(scribbles, segmenter, emb, image01, previous: SliceResult | None, drawn: DrawnPrompt, label: str) -> PromptSet:
    """Delegate a stroke to prompting.scribbles, keeping the earlier strokes of this object and slice."""
    stroke = scribbles.Stroke(points=tuple(drawn.points), positive=drawn.positive)
    earlier = tuple(getattr(previous.prompt, "strokes", ())) if previous is not None else ()
    prompt = scribbles.prompt_from_scribbles(segmenter, emb, image01, earlier + (stroke,), previous=previous.prompt if previous else None)
    return replace(prompt, label=label) if label else prompt


def apply_drawn(ws: Workstation, segmenter, drawn: DrawnPrompt) -> SliceResult:
    return run_prompt(ws, segmenter, drawn_to_prompt(ws, segmenter, drawn))
