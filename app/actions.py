"""What a prompt does to the workstation: slice -> embedding -> prompt set -> mask -> new object state.

No Streamlit here: the views call these with the segmenter, tests can call them directly. The
prompting modules (clicks, scribbles, metadata) and models.uncertainty are imported lazily, where
they are used, so the workstation still starts when one of them cannot be imported.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from integrations.errors import InvalidPromptError
from prompting.promptset import Point, PromptSet, PromptSource

from .pipeline import SliceSession
from .prompts import DrawnPrompt
from .state import SliceResult, Workstation, store_result, target_object

if TYPE_CHECKING:
    from prompting.clicks import ClickConfig

log = logging.getLogger("clinseg.app")


def window_name(ws: Workstation) -> str | None:
    return None if ws.window in ("", "default") else ws.window


def slice_session(ws: Workstation) -> SliceSession:
    if ws.study is None:
        raise InvalidPromptError("no study is open: open the demo study or a file first.")
    return SliceSession.open(ws.study.volume, ws.slice_index, window_name(ws))


def clinical_metadata(ws: Workstation):
    """The form's values as prompting.metadata.ClinicalMetadata (modality/spacing from the study)."""
    from prompting.metadata import ClinicalMetadata

    md = ws.metadata
    side = {"left": "L", "right": "R", "bilateral": "B"}.get(md.get("laterality", ""))
    size = float(md.get("expected_size_mm") or 0.0) or None
    text = " ".join(v for v in (md.get("finding", ""), md.get("history", "")) if v)
    known = {"laterality": side, "expected_size_mm": size, "urgency": md.get("urgency") or None}
    if md.get("modality"):
        known["modality"] = md["modality"]
    if md.get("body_part"):
        known["body_part"] = md["body_part"]
    return ClinicalMetadata.from_volume(ws.study.volume, text, **known)


def left_map(ws: Workstation, shape: tuple[int, int]):
    """(H, W) bool: pixels on the patient's left, from the study's orientation (None: not decidable)."""
    from prompting.metadata import patient_left_map

    vol = ws.study.volume
    try:
        return patient_left_map(vol.direction, vol.origin, vol.spacing, shape, ws.slice_index)
    except InvalidPromptError:
        return None


def metadata_flags(ws: Workstation, mask: np.ndarray) -> tuple[str, ...]:
    """Ways the mask contradicts the clinical metadata form (expected size, patient side)."""
    if not ws.metadata or not np.asarray(mask).any():
        return ()
    from prompting.metadata import check_result

    return tuple(check_result(mask, clinical_metadata(ws), left_map(ws, mask.shape)))


def metadata_note(ws: Workstation, prompt: PromptSet, shape: tuple[int, int]) -> PromptSet:
    """A prompt on the other side than the form says is kept (the user pointed there), with a note."""
    if not ws.metadata:
        return prompt
    from prompting.metadata import check_prompt_side

    return check_prompt_side(prompt, clinical_metadata(ws), left_map(ws, shape))


def store_segmentation(ws: Workstation, seg, prompt: PromptSet, label: str = "", strokes: tuple = (),
                       new_object: bool = False, inputs: tuple = (), fusion: tuple[str, ...] = ()) -> SliceResult:
    """Put a decoded Segmentation on the active (or a new) object for the current slice.

    `inputs`: the raw per-tool PromptSets this result came from (app/combine.py); `fusion`: the
    fusion notes when they were mixed."""
    result = SliceResult(
        mask=np.asarray(seg.mask, bool), predicted_iou=float(seg.predicted_iou), prompt=prompt,
        low_res_logits=seg.low_res_logits, uncertainty_map=seg.uncertainty_map, uncertainty=seg.uncertainty,
        notes=tuple(prompt.notes) + tuple(n for n in seg.notes if n not in prompt.notes),
        flags=tuple(f for f in seg.flags) + tuple(f for f in metadata_flags(ws, seg.mask) if f not in seg.flags),
        strokes=tuple(strokes),
        inputs=tuple(inputs) or (replace(prompt, mask_input=None, notes=()),),
        fusion=tuple(fusion),
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


def drop_background_strokes(seg, strokes: tuple, shape: tuple[int, int]) -> None:
    """Background strokes are hard evidence: the mask components they cross go (in place)."""
    negative = [s for s in strokes if not s.positive]
    if negative:
        from prompting.scribbles import negative_evidence, remove_negative

        seg.mask = remove_negative(seg.mask, negative_evidence(negative, shape))


def honour_edge_clicks(seg, prompt: PromptSet) -> None:
    """Correction clicks near the mask's edge move the edge there (in place;
    prompting.clicks.apply_click_edits): the decoder answers the box, the result answers the clicks."""
    if any(p.source == PromptSource.CLICK for p in prompt.points):
        from prompting.clicks import apply_click_edits

        seg.mask = apply_click_edits(seg.mask, prompt.points)


def run_prompt(ws: Workstation, segmenter, prompt: PromptSet, label: str = "", new_object: bool = False,
               strokes: tuple = (), inputs: tuple = (), fusion: tuple[str, ...] = (),
               decode_as: PromptSet | None = None) -> SliceResult:
    """Decode `prompt` on the current slice (uncertainty when the map is on) and store the mask.

    `decode_as`: what the decoder gets, when it differs from the stored prompt; by default
    `prompting.clicks.decoder_prompt`: a box-trained backend (LiteMedSAM) decodes a prompt with a
    box from the box alone, the clicks, stroke points and previous logits staying in the stored
    prompt as evidence. The same decode as bench/prompts.py measures, and ~4x cheaper: a prompt
    with a previous mask runs the full fp32 refinement decoder."""
    from prompting.clicks import decoder_prompt

    session = slice_session(ws)
    shape = session.image01.shape[:2]
    prompt.validate(shape)
    prompt = metadata_note(ws, prompt, shape)
    emb = segmenter.embed(session.image01)
    if decode_as is None:
        decode_as = decoder_prompt(segmenter, prompt)
    seg = segmenter.decode(emb, decode_as)
    drop_background_strokes(seg, strokes, shape)
    honour_edge_clicks(seg, prompt)
    if ws.show_uncertainty:
        from models.uncertainty import add_uncertainty

        add_uncertainty(segmenter, emb, decode_as, seg)
    if fusion:
        from .combine import unhonoured_negatives

        fusion = tuple(fusion) + tuple(unhonoured_negatives(prompt, seg.mask))
    return store_segmentation(ws, seg, prompt, label, strokes, new_object, inputs, fusion)


def sharpen(ws: Workstation, segmenter) -> tuple[SliceResult | None, str]:
    """The active object's mask on this slice decoded again on a zoomed re-encode of a crop around
    its box (models/zoom.py: the one-shot path's step, +0.11 Dice on Colin27's AAL regions), kept
    only when the decoder rates it clearly better (ZOOM_IOU_MARGIN), as the one-shot path does. A result
    of one click or of foreground strokes alone first has them read again on that crop (`_reread_on_crop`).
    Returns (the stored result or None when the current one was kept, what happened)."""
    from models.zoom import ZOOM_IOU_MARGIN, ZoomPolicy, to_slice_frame, zoom_crop
    from prompting.clicks import decoder_prompt

    previous = previous_result(ws)
    if previous is None or previous.area_px == 0:
        raise InvalidPromptError("nothing to sharpen on this slice: segment the structure first (box, click or scribble).")
    if previous.prompt.box is None:
        # clicks or strokes the click decoder answered (prompting.clicks.read_answer): only structures
        # large enough for the whole slice's model frame are answered so, and there a zoom has nothing to add
        what = "strokes" if previous.strokes else "clicks"
        return None, (f"kept the current mask: the click decoder read these {what} on the whole slice; it answers only "
                      "structures large enough to draw there (smaller ones go through box proposals, which Sharpen zooms).")
    session = slice_session(ws)
    shape = session.image01.shape[:2]
    strokes = tuple(previous.strokes)
    reread = _reread_on_crop(ws, segmenter, previous, session.image01, strokes)
    if reread is not None:
        return reread
    prompt = decoder_prompt(segmenter, previous.prompt)
    policy = ZoomPolicy()
    box = prompt.clipped(shape).box
    if not policy.applies(box, shape):
        raise InvalidPromptError(f"the box ({box.width + 1:.0f} x {box.height + 1:.0f} px) is already large on this "
                                 f"{shape[1]} x {shape[0]} slice: zooming helps targets under {policy.max_fraction:.0%} "
                                 "of the slice's shorter side.")
    crop = zoom_crop(session.image01, prompt, policy)
    emb = segmenter.embed(crop.image01)
    seg = segmenter.decode(emb, crop.prompt)
    if seg.predicted_iou < previous.predicted_iou + ZOOM_IOU_MARGIN:
        return None, (f"kept the current mask: the zoomed decode was rated {seg.predicted_iou:.2f}, the current one "
                      f"{previous.predicted_iou:.2f} (a zoomed mask replaces it only when rated {ZOOM_IOU_MARGIN:.2f} higher).")
    if ws.show_uncertainty:
        from models.uncertainty import add_uncertainty

        add_uncertainty(segmenter, emb, crop.prompt, seg)
    seg = to_slice_frame(segmenter, seg, crop, shape)
    seg.notes = list(previous.notes) + seg.notes[-1:]
    drop_background_strokes(seg, strokes, shape)
    honour_edge_clicks(seg, previous.prompt)
    obj = ws.active_object
    result = store_segmentation(ws, seg, previous.prompt, label=obj.label if obj is not None else "", strokes=strokes,
                                inputs=previous.inputs, fusion=previous.fusion)
    return result, (f"sharpened: re-encoded a {crop.window[2] - crop.window[0]} x {crop.window[3] - crop.window[1]} px "
                    f"crop; predicted IoU {previous.predicted_iou:.2f} -> {seg.predicted_iou:.2f}.")


def _reread_on_crop(ws: Workstation, segmenter, previous: SliceResult, image01, strokes: tuple) -> tuple[SliceResult, str] | None:
    """Sharpen for a result of one click or of foreground strokes alone: they are read again on the
    zoomed crop (models.reading_zoom, the one-shot path bench/prompts.py measures), the learned ranker
    choosing among whole-slice and crop proposals. None when that does not apply or a whole-slice
    proposal wins: the box's gated zoom then decides, as for any other result, unless the one-shot
    path already declined that zoom for leaving the winning proposal (then: kept, with the reason)."""
    from models.reading_zoom import sharpen_clicks, sharpen_scribbles
    from models.zoom import ZoomPolicy

    prompt, source = previous.prompt, previous.prompt.box.source
    if strokes and all(s.positive for s in strokes) and source == PromptSource.SCRIBBLE:
        res, what = sharpen_scribbles(segmenter, image01, strokes, prompt, policy=ZoomPolicy(),
                                      uncertainty=ws.show_uncertainty), "strokes"
    elif (not strokes and source == PromptSource.CLICK and len(prompt.points) == 1 and prompt.points[0].positive
          and prompt.points[0].source == PromptSource.CLICK):  # corrected results: measured no gain (docs/prompting.md)
        res, what = sharpen_clicks(segmenter, image01, prompt.points, prompt, policy=ZoomPolicy(),
                                   uncertainty=ws.show_uncertainty), "clicks"
    else:
        return None
    if not res.zoomed:
        # the whole slice won; its zoomed decode, when it leaves the winning proposal, is not asked again
        return (None, f"kept the current mask: {res.declined}.") if res.declined else None
    seg = res.segmentation
    seg.notes = list(previous.notes) + seg.notes[-2:]
    honour_edge_clicks(seg, res.prompt)
    obj = ws.active_object
    result = store_segmentation(ws, seg, res.prompt, label=obj.label if obj is not None else "", strokes=strokes,
                                inputs=previous.inputs, fusion=previous.fusion)
    x0, y0, x1, y1 = seg.zoom
    return result, (f"sharpened: the {what} read again on a {x1 - x0} x {y1 - y0} px crop; a crop proposal kept "
                    f"(predicted IoU {previous.predicted_iou:.2f} -> {seg.predicted_iou:.2f}).")


def propagation_seeds(ws: Workstation, segmenter) -> dict[int, PromptSet]:
    """The active object's prompted slices as 3-D propagation seeds (models.propagation), each decoded
    as its slice's result was (`prompting.clicks.decoder_prompt`: a box-trained backend, the box alone)."""
    from prompting.clicks import decoder_prompt

    obj = ws.active_object
    if obj is None or not obj.slices:
        raise InvalidPromptError("segment the structure on one slice first (a box works best), then propagate.")
    seeds = {}
    for z, r in obj.slices:
        if r.area_px == 0:
            continue
        if r.prompt.box is not None:
            seeds[z] = decoder_prompt(segmenter, r.prompt)
        else:  # clicks or strokes the click decoder answered: propagation carries boxes, so their mask's box seeds it
            ys, xs = np.nonzero(r.mask)
            seeds[z] = PromptSet.from_box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), label=r.prompt.label)
    if not seeds:
        raise InvalidPromptError("propagation starts from a slice with a mask; segment the structure on one slice first.")
    return seeds


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
            return clicks.correct_with_click(segmenter, emb, previous.prompt, previous.low_res_logits, point,
                                             previous_mask=previous.mask)
        earlier = previous.prompt.points if previous is not None else ()
        if not any(p.positive for p in earlier + (point,)):
            raise InvalidPromptError("a negative click removes part of a mask: first give the object with a box or a positive click.")
        return replace(clicks.propose_from_points(segmenter, emb, session.image01, earlier + (point,)), label=label)
    raise InvalidPromptError(f"unknown prompt kind {drawn.kind!r}.")


def scribble_prompt(ws: Workstation, segmenter, emb, previous: SliceResult | None, drawn: DrawnPrompt, label: str,
                    image01=None):
    """(PromptSet, strokes so far): this stroke plus the earlier strokes of this object on this slice.

    A box the user drew earlier on this slice stays the frame the strokes refine. `image01`, the
    slice the embedding came from, lets the learned proposal ranker look at the image.
    """
    from prompting.scribbles import Scribble, propose_from_scribbles

    stroke = Scribble.of(drawn.points, width=3.0, positive=drawn.positive)
    strokes = (tuple(previous.strokes) if previous is not None else ()) + (stroke,)
    box = None
    if previous is not None and previous.prompt.box is not None and previous.prompt.box.source == PromptSource.BOX:
        box = previous.prompt.box
    prompt = propose_from_scribbles(segmenter, emb, strokes, box=box, image01=image01)
    return (replace(prompt, label=label) if label else prompt), strokes


def previous_result(ws: Workstation) -> SliceResult | None:
    """The active object's result on the current slice (what a new input adds to)."""
    obj = ws.active_object
    return obj.result(ws.slice_index) if obj is not None else None


def run_fused(ws: Workstation, segmenter, inputs: tuple, previous: SliceResult | None, strokes: tuple = (),
              label: str = "") -> SliceResult:
    """Mixed inputs for one object -> prompting.fusion -> decode; the fusion notes go on the result."""
    from .combine import fuse_inputs

    session = slice_session(ws)
    emb = segmenter.embed(session.image01)
    fused = fuse_inputs(segmenter, emb, session.image01, inputs,
                        previous.prompt if previous is not None else None,
                        previous.low_res_logits if previous is not None else None, strokes)
    return run_prompt(ws, segmenter, fused.prompt, label=label, strokes=strokes, inputs=inputs, fusion=fused.notes,
                      decode_as=fused.decode)


def apply_drawn(ws: Workstation, segmenter, drawn: DrawnPrompt) -> SliceResult:
    """One drawn/typed input: fused with the object's other kinds of input on this slice, or, while
    all its inputs are of one kind, refined by that tool's own path."""
    from .combine import is_mixed, merged_inputs, raw_click, raw_scribble

    previous = previous_result(ws)
    earlier_strokes = tuple(previous.strokes) if previous is not None else ()
    stroke = None
    if drawn.kind == "scribble":
        from prompting.scribbles import Scribble

        stroke = Scribble.of(drawn.points, width=3.0, positive=drawn.positive)
        raw = raw_scribble(stroke)
    elif drawn.kind == "click":
        (x, y), = drawn.points
        raw = raw_click(x, y, drawn.positive)
    elif drawn.kind == "box":
        x0, y0, x1, y1 = drawn.box()
        raw = PromptSet.from_box(round(x0), round(y0), round(x1), round(y1))
    else:
        raise InvalidPromptError(f"unknown prompt kind {drawn.kind!r}.")
    inputs = merged_inputs(previous.inputs if previous is not None else (), raw)
    if is_mixed(inputs):
        strokes = earlier_strokes + ((stroke,) if stroke is not None else ())
        return run_fused(ws, segmenter, inputs, previous, strokes)
    if drawn.kind == "scribble":
        session = slice_session(ws)
        obj = ws.active_object
        prompt, strokes = scribble_prompt(ws, segmenter, segmenter.embed(session.image01), previous, drawn,
                                          obj.label if obj is not None else "", image01=session.image01)
        return run_prompt(ws, segmenter, prompt, strokes=strokes, inputs=inputs)
    return run_prompt(ws, segmenter, drawn_to_prompt(ws, segmenter, drawn), inputs=inputs)


def preview_click(ws: Workstation, segmenter, drawn: DrawnPrompt, cfg: ClickConfig | None = None):
    """A first positive click on the active object's slice that the click decoder does not answer
    outright (its reading covers less than `ClickConfig.read_min_area` of the model frame: a small
    structure, whose answer takes ~65 box proposals, ~1 s on 2 cores) -> its reading, shown at once.

    Returns None when that does not apply (the click is then `apply_drawn`'s), else (the preview's
    SliceResult, stored like any result; a function that computes the answer by box proposals, to run
    off the script thread: it touches nothing of the workstation). `apply_click_refinement` puts that
    answer in place of the preview if the user has not moved on."""
    from prompting import clicks

    if drawn.kind != "click" or not drawn.positive or previous_result(ws) is not None:
        return None
    if getattr(segmenter, "click_decoder", None) is None:
        return None
    cfg = cfg or clicks.ClickConfig()
    session = slice_session(ws)
    image01 = session.image01
    (x, y), = drawn.points
    point = Point(float(round(x)), float(round(y)), True, PromptSource.CLICK)
    clicks.check_points((point,), image01.shape[:2])
    emb = segmenter.embed(image01)
    # answered outright (apply_drawn then answers it from the same reading, kept by the click decoder)
    if cfg.read_min_area is None or clicks.answered_reading(segmenter, emb, (point,), cfg) is not None:
        return None
    obj = ws.active_object
    label = obj.label if obj is not None else ""
    preview = PromptSet(points=(point,), label=label).with_note(
        "preview: the click decoder's reading of a small structure; box proposals refine it in the background")
    from .combine import raw_click

    result = run_prompt(ws, segmenter, preview, inputs=(raw_click(x, y, True),))

    def refine() -> PromptSet:
        answer = clicks.propose_from_points(segmenter, segmenter.embed(image01), image01, (point,),
                                            replace(cfg, read_min_area=None))
        return replace(answer, label=label) if label else answer

    return result, refine


def apply_click_refinement(ws: Workstation, segmenter, preview: SliceResult, slice_index: int,
                           prompt: PromptSet) -> SliceResult | None:
    """The box proposals' answer to a previewed click (`preview_click`) in place of the preview, when
    the preview is still what the active object shows on the slice on screen; None (nothing changed)
    when the user has moved on (another slice, another object, another input)."""
    obj = ws.active_object
    if obj is None or ws.slice_index != slice_index or obj.result(slice_index) is not preview:
        return None
    return run_prompt(ws, segmenter, prompt, inputs=preview.inputs)


def apply_gaze(ws: Workstation, segmenter, prompt: PromptSet, segmentation, label: str = "") -> SliceResult:
    """A gaze proposal for the active object: stored as decoded, or fused with the object's other
    inputs on this slice (a click, a box, a text box) when there are any."""
    from .combine import is_mixed, merged_inputs

    previous = previous_result(ws)
    raw = replace(prompt, mask_input=None, notes=())
    inputs = merged_inputs(previous.inputs if previous is not None else (), raw)
    if is_mixed(inputs):
        return run_fused(ws, segmenter, inputs, previous, tuple(previous.strokes) if previous is not None else (), label)
    return store_segmentation(ws, segmentation, prompt, label=label, inputs=inputs)
