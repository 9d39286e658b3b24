"""From what the user did on screen (a shape on the canvas, coordinates typed in) to slice pixels.

The drawing canvas returns Fabric.js objects in canvas (screen) pixels; the viewport maps them to
slice pixels. Typed coordinates take the same path, so keyboard users and tests drive the same code.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from integrations.errors import InvalidPromptError

from .render import Viewport

TOOLS = ("Box", "Click +", "Click −", "Scribble +", "Scribble −")
CANVAS_MODE = {"Box": "rect", "Click +": "point", "Click −": "point", "Scribble +": "freedraw", "Scribble −": "freedraw"}


@dataclass(frozen=True)
class DrawnPrompt:
    """One user action in slice pixels: a box (two corners), a click (one point) or a stroke."""

    kind: str  # "box" | "click" | "scribble"
    positive: bool
    points: tuple[tuple[float, float], ...]

    def box(self) -> tuple[float, float, float, float]:
        (ax, ay), (bx, by) = self.points[0], self.points[-1]
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def tool_kind(tool: str) -> tuple[str, bool]:
    """(kind, positive) of a tool name."""
    if tool == "Box":
        return "box", True
    if tool.startswith("Click"):
        return "click", tool.endswith("+")
    if tool.startswith("Scribble"):
        return "scribble", tool.endswith("+")
    raise ValueError(f"unknown tool {tool!r}; choose one of {', '.join(TOOLS)}")


_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _extent(obj: dict) -> tuple[float, float, float, float]:
    """(left, top, width, height) of a Fabric object in canvas pixels, scale and origin applied."""
    w = float(obj.get("width", 0) or 0) * float(obj.get("scaleX", 1) or 1)
    h = float(obj.get("height", 0) or 0) * float(obj.get("scaleY", 1) or 1)
    left = float(obj.get("left", 0) or 0) - _ORIGIN.get(obj.get("originX", "left"), 0.0) * w
    top = float(obj.get("top", 0) or 0) - _ORIGIN.get(obj.get("originY", "top"), 0.0) * h
    return left, top, w, h


def _path_points(obj: dict) -> list[tuple[float, float]]:
    """Vertices of a free-drawn path: the end point of every command (M, L, Q, C)."""
    pts = []
    for cmd in obj.get("path") or []:
        nums = [v for v in cmd[1:] if isinstance(v, (int, float))]
        if len(nums) >= 2:
            pts.append((float(nums[-2]), float(nums[-1])))
    return pts


def canvas_prompt(obj: dict, tool: str, vp: Viewport) -> DrawnPrompt | None:
    """The last shape drawn on the canvas -> a DrawnPrompt in slice pixels (None if it is not one)."""
    kind, positive = tool_kind(tool)
    typ = str(obj.get("type", "")).lower()
    if kind == "box" and typ in ("rect", "labeledrect"):
        left, top, w, h = _extent(obj)
        # The stroke is drawn centred on the rectangle's edge; the box is the rectangle itself.
        a = vp.to_image(left, top)
        b = vp.to_image(left + w, top + h)
        return DrawnPrompt("box", True, (a, b))
    if kind == "click" and typ in ("circle", "point"):
        left, top, w, h = _extent(obj)
        return DrawnPrompt("click", positive, (vp.to_image(left + w / 2.0, top + h / 2.0),))
    if kind == "scribble" and typ == "path":
        pts = _path_points(obj)
        if pts:
            return DrawnPrompt("scribble", positive, tuple(vp.to_image(x, y) for x, y in pts))
    return None


_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_coordinates(text: str, kind: str, positive: bool = True) -> DrawnPrompt:
    """Typed coordinates in slice pixels: box "x0 y0 x1 y1", click "x y", scribble "x y, x y, ...".

    Raises InvalidPromptError saying what was expected, so a typo is an error, not a wrong box.
    """
    nums = [float(v) for v in _NUM.findall(text or "")]
    if any(not math.isfinite(v) for v in nums):
        raise InvalidPromptError(f"coordinates must be numbers, got {text!r}.")
    if kind == "box":
        if len(nums) != 4:
            raise InvalidPromptError(f"a box needs 4 numbers 'x0 y0 x1 y1' (slice pixels), got {len(nums)} in {text!r}.")
        return DrawnPrompt("box", True, ((nums[0], nums[1]), (nums[2], nums[3])))
    if kind == "click":
        if len(nums) != 2:
            raise InvalidPromptError(f"a click needs 2 numbers 'x y' (column, row), got {len(nums)} in {text!r}.")
        return DrawnPrompt("click", positive, ((nums[0], nums[1]),))
    if kind == "scribble":
        if len(nums) < 4 or len(nums) % 2:
            raise InvalidPromptError(f"a scribble needs at least two points 'x y, x y, ...', got {text!r}.")
        return DrawnPrompt("scribble", positive, tuple(zip(nums[0::2], nums[1::2])))
    raise InvalidPromptError(f"unknown prompt kind {kind!r}.")
