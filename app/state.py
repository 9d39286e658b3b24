"""Typed session state of the workstation: the study, the view, the objects and their history.

Everything the screen shows is derived from one `Workstation` held in `st.session_state["ws"]`.
Objects are immutable snapshots: an edit builds new `SegObject`s and `commit` pushes the old tuple
onto the undo stack, so undo/redo is swapping tuples, never replaying prompts (which would re-run
the model and could give a different mask after a cache eviction).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from integrations.volume import Volume
from prompting.promptset import PromptSet

# Distinct, colour-blind friendly overlay colours (Okabe-Ito), cycled per object.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (255, 255, 255),
)
HISTORY_LIMIT = 50  # snapshots kept for undo; masks are small but a session can be long


class Status(str, Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Study:
    """An opened study. `title` is what the screen calls it: never the path (it may hold a name)."""

    volume: Volume
    title: str
    kind: str  # "demo", "path", "upload"


@dataclass(frozen=True)
class SliceResult:
    """The current mask of one object on one slice and the prompt that produced it."""

    mask: np.ndarray  # (H, W) bool
    predicted_iou: float
    prompt: PromptSet
    low_res_logits: np.ndarray | None = None
    uncertainty_map: np.ndarray | None = None
    uncertainty: float | None = None
    notes: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    strokes: tuple = ()  # prompting.scribbles.Scribble strokes drawn on this slice so far
    inputs: tuple = ()  # the raw PromptSet of each input given for this result (app/combine.py)
    fusion: tuple[str, ...] = ()  # what fusion kept/widened/rejected and why, when the inputs were mixed

    @property
    def area_px(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class SegObject:
    oid: int
    label: str
    color: tuple[int, int, int]
    slices: tuple[tuple[int, SliceResult], ...] = ()  # (z, result), sorted by z; a tuple keeps it hashable/frozen
    status: Status = Status.PENDING
    volume_mask: np.ndarray | None = field(default=None, compare=False)  # (Z, H, W) bool from 3-D propagation

    def result(self, z: int) -> SliceResult | None:
        for zz, r in self.slices:
            if zz == z:
                return r
        return None

    def mask(self, z: int) -> np.ndarray | None:
        r = self.result(z)
        if r is not None:
            return r.mask
        if self.volume_mask is not None and 0 <= z < self.volume_mask.shape[0] and self.volume_mask[z].any():
            return self.volume_mask[z]
        return None

    def with_result(self, z: int, result: SliceResult) -> "SegObject":
        rest = tuple((zz, r) for zz, r in self.slices if zz != z)
        return replace(self, slices=tuple(sorted(rest + ((z, result),), key=lambda t: t[0])))

    def without_slice(self, z: int) -> "SegObject":
        return replace(self, slices=tuple((zz, r) for zz, r in self.slices if zz != z))

    def label_volume(self, shape: tuple[int, int, int]) -> np.ndarray:
        """(Z, H, W) bool: 3-D propagation result overridden by the slices edited by hand."""
        out = np.zeros(shape, bool) if self.volume_mask is None else self.volume_mask.astype(bool).copy()
        for z, r in self.slices:
            out[z] = r.mask
        return out

    def area_mm2(self, z: int, volume: Volume) -> float:
        m = self.mask(z)
        return 0.0 if m is None else float(np.count_nonzero(m)) * volume.pixel_area_mm2

    def volume_ml(self, volume: Volume) -> float:
        return float(np.count_nonzero(self.label_volume(volume.shape))) * volume.voxel_volume_ml


@dataclass
class Workstation:
    """All state of one browser session. Mutated only through the functions below and the views."""

    study: Study | None = None
    slice_index: int = 0
    window: str = "default"
    zoom: float = 1.0
    center: tuple[float, float] | None = None  # (x, y) of the zoomed view in image pixels
    objects: tuple[SegObject, ...] = ()
    active: int | None = None  # oid of the object prompts go to
    undo_stack: list[tuple[SegObject, ...]] = field(default_factory=list)
    redo_stack: list[tuple[SegObject, ...]] = field(default_factory=list)
    next_oid: int = 1
    canvas_nonce: int = 0  # bumped after each drawn prompt: a fresh canvas holds no stale shapes
    metadata: dict = field(default_factory=dict)  # clinical metadata form values
    show_uncertainty: bool = False
    messages: list[tuple[str, str]] = field(default_factory=list)  # (level, text) shown once after a rerun
    goto_slice: int | None = None  # set by code (not the slider): the slider moves there on the next run
    jobs: list = field(default_factory=list)  # app.jobs.Job: background work of this session

    # -- objects --------------------------------------------------------------------------------
    def object(self, oid: int | None) -> SegObject | None:
        return next((o for o in self.objects if o.oid == oid), None)

    @property
    def active_object(self) -> SegObject | None:
        return self.object(self.active)


def open_study(ws: Workstation, study: Study) -> None:
    """A new study: objects and history of the previous one do not apply to it."""
    ws.study = study
    ws.slice_index = study.volume.num_slices // 2
    ws.zoom, ws.center = 1.0, None
    ws.objects, ws.active = (), None
    ws.undo_stack.clear()
    ws.redo_stack.clear()
    ws.next_oid = 1
    ws.canvas_nonce += 1
    for job in ws.jobs:  # results of the previous study must not land on this one
        job.cancel.set()
    ws.jobs = []


def commit(ws: Workstation, objects: tuple[SegObject, ...]) -> None:
    """Replace the objects, remembering the previous state for undo; a new edit clears redo."""
    ws.undo_stack.append(ws.objects)
    del ws.undo_stack[:-HISTORY_LIMIT]
    ws.redo_stack.clear()
    ws.objects = tuple(objects)
    if ws.object(ws.active) is None:
        ws.active = ws.objects[-1].oid if ws.objects else None


def _step(ws: Workstation, source: list, target: list) -> bool:
    """Move one snapshot between the undo and redo stacks (undo and redo are mirror images)."""
    if not source:
        return False
    target.append(ws.objects)
    ws.objects = source.pop()
    if ws.object(ws.active) is None:
        ws.active = ws.objects[-1].oid if ws.objects else None
    return True


def undo(ws: Workstation) -> bool:
    return _step(ws, ws.undo_stack, ws.redo_stack)


def redo(ws: Workstation) -> bool:
    return _step(ws, ws.redo_stack, ws.undo_stack)


def new_object(ws: Workstation, label: str = "") -> SegObject:
    """A fresh object with the next id and colour, not yet in `ws.objects` (no history step)."""
    oid = ws.next_oid
    ws.next_oid += 1
    return SegObject(oid=oid, label=label.strip() or f"object {oid}", color=PALETTE[(oid - 1) % len(PALETTE)])


def add_object(ws: Workstation, label: str = "") -> SegObject:
    obj = new_object(ws, label)
    commit(ws, ws.objects + (obj,))
    ws.active = obj.oid
    return obj


def replace_object(ws: Workstation, obj: SegObject) -> None:
    commit(ws, tuple(obj if o.oid == obj.oid else o for o in ws.objects))


def delete_object(ws: Workstation, oid: int) -> None:
    commit(ws, tuple(o for o in ws.objects if o.oid != oid))


def set_status(ws: Workstation, oid: int, status: Status) -> None:
    obj = ws.object(oid)
    if obj is not None and obj.status != status:
        replace_object(ws, replace(obj, status=status))


def target_object(ws: Workstation, label: str = "") -> SegObject:
    """The object a new prompt goes to: the active one, or a new one (added with its first result,
    so the first prompt is one undo step, not two)."""
    obj = ws.active_object
    return obj if obj is not None else new_object(ws, label)


def store_result(ws: Workstation, obj: SegObject, z: int, result: SliceResult, label: str | None = None) -> SegObject:
    """Put a slice result on an object (a new snapshot for undo) and return the updated object."""
    current = ws.object(obj.oid) or obj
    updated = current.with_result(z, result)
    if label:
        updated = replace(updated, label=label)
    if updated.status != Status.PENDING:  # an edited object must be reviewed again
        updated = replace(updated, status=Status.PENDING)
    if ws.object(obj.oid) is None:
        commit(ws, ws.objects + (updated,))
    else:
        replace_object(ws, updated)
    ws.active = updated.oid
    return updated
