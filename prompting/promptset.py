"""`PromptSet`: the one prompt type every input source produces and every segmenter consumes.

Coordinates are slice pixels: x = column, y = row, boxes (x0, y0, x1, y1) with x1 >= x0, inclusive
pixel indices as a bounding box of a mask gives them. Each element remembers where it came from
and how much it is trusted, so fusion can weigh a gaze fixation against a typed query.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from integrations.errors import InvalidPromptError


class PromptSource(str, Enum):
    CLICK = "click"
    BOX = "box"
    SCRIBBLE = "scribble"
    GAZE = "gaze"
    TEXT = "text"
    METADATA = "metadata"
    LOCALISER = "localiser"
    REFINEMENT = "refinement"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    positive: bool = True
    source: PromptSource = PromptSource.CLICK
    confidence: float = 1.0


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    source: PromptSource = PromptSource.BOX
    confidence: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1


@dataclass(frozen=True)
class PromptSet:
    """Prompts for ONE object on one slice. Several objects are several PromptSets."""

    points: tuple[Point, ...] = ()
    box: Box | None = None
    # Previous low-resolution logits (1, 256, 256) in the model frame, to refine the last mask.
    mask_input: np.ndarray | None = field(default=None, compare=False)
    label: str = ""
    notes: tuple[str, ...] = ()  # why fusion did what it did, in words for the user

    @staticmethod
    def from_box(x0: float, y0: float, x1: float, y1: float, source: PromptSource = PromptSource.BOX,
                 confidence: float = 1.0, label: str = "") -> "PromptSet":
        return PromptSet(box=Box(float(x0), float(y0), float(x1), float(y1), source, confidence), label=label)

    def with_points(self, *points: Point) -> "PromptSet":
        return replace(self, points=self.points + tuple(points))

    def with_box(self, box: Box | None) -> "PromptSet":
        return replace(self, box=box)

    def with_mask_input(self, logits: np.ndarray | None) -> "PromptSet":
        return replace(self, mask_input=logits)

    def with_note(self, note: str) -> "PromptSet":
        return replace(self, notes=self.notes + (note,))

    @property
    def is_empty(self) -> bool:
        return self.box is None and not self.points and self.mask_input is None

    @property
    def sources(self) -> set[PromptSource]:
        s = {p.source for p in self.points}
        if self.box is not None:
            s.add(self.box.source)
        return s

    def validate(self, image_shape: tuple[int, int]) -> None:
        """Raise InvalidPromptError, with the reason, for prompts no model can use."""
        h, w = image_shape
        if self.is_empty:
            raise InvalidPromptError("no prompt given: draw a box, click, scribble, look at or name the structure.")
        if self.box is not None:
            b = self.box
            vals = (b.x0, b.y0, b.x1, b.y1)
            if not all(math.isfinite(v) for v in vals):
                raise InvalidPromptError(f"the box has non-numeric coordinates {vals}.")
            if b.x1 < b.x0 or b.y1 < b.y0:
                raise InvalidPromptError(f"the box ({b.x0:g}, {b.y0:g}, {b.x1:g}, {b.y1:g}) has its corners swapped (x1 < x0 or y1 < y0).")
            if b.x1 - b.x0 < 1 or b.y1 - b.y0 < 1:
                raise InvalidPromptError(
                    f"the box ({b.x0:g}, {b.y0:g}, {b.x1:g}, {b.y1:g}) has no area; drag a box at least 2 pixels wide and high."
                )
            if b.x1 < 0 or b.y1 < 0 or b.x0 > w - 1 or b.y0 > h - 1:
                raise InvalidPromptError(
                    f"the box ({b.x0:g}, {b.y0:g}, {b.x1:g}, {b.y1:g}) lies outside the {w}x{h} image."
                )
        for p in self.points:
            if not (math.isfinite(p.x) and math.isfinite(p.y)):
                raise InvalidPromptError(f"a {p.source.value} point has non-numeric coordinates ({p.x}, {p.y}).")
            if not (0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
                raise InvalidPromptError(f"a {p.source.value} point ({p.x:g}, {p.y:g}) lies outside the {w}x{h} image.")

    def clipped(self, image_shape: tuple[int, int]) -> "PromptSet":
        """The box clipped to the image (a box partly outside is fine: the structure is what's inside)."""
        if self.box is None:
            return self
        h, w = image_shape
        b = self.box
        return replace(self, box=Box(max(0.0, b.x0), max(0.0, b.y0), min(w - 1.0, b.x1), min(h - 1.0, b.y1), b.source, b.confidence))
