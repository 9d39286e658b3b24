"""What the clinician sees: the windowed slice, each object's mask (fill + outline), the uncertainty
map, and, while gaze is on, AprilTag markers around the image for the eye tracker's screen mapping.

Pure functions from arrays to RGB uint8 arrays; the views only place the result on the page.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .state import SegObject, Status

MAX_DISPLAY_W = 640
MAX_DISPLAY_H = 600


@dataclass(frozen=True)
class Viewport:
    """The part of the slice on screen and its magnification: screen px = (image px - origin) * scale."""

    x0: int
    y0: int
    width: int  # image pixels shown
    height: int
    scale: float  # screen pixels per image pixel

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) in screen pixels."""
        return max(1, round(self.width * self.scale)), max(1, round(self.height * self.scale))

    def to_image(self, sx: float, sy: float) -> tuple[float, float]:
        """Screen (canvas) pixel -> slice pixel index (x = column, y = row)."""
        return self.x0 + sx / self.scale - 0.5, self.y0 + sy / self.scale - 0.5

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        return (x + 0.5 - self.x0) * self.scale, (y + 0.5 - self.y0) * self.scale


def viewport(shape: tuple[int, int], zoom: float = 1.0, center: tuple[float, float] | None = None,
             max_w: int = MAX_DISPLAY_W, max_h: int = MAX_DISPLAY_H) -> Viewport:
    """Crop of (H, W) at `zoom` around `center` (clamped inside the image), fitted to the screen box."""
    h, w = shape
    zoom = max(1.0, float(zoom))
    cw, ch = max(2, round(w / zoom)), max(2, round(h / zoom))
    cx, cy = center if center is not None else (w / 2.0, h / 2.0)
    x0 = int(np.clip(round(cx - cw / 2.0), 0, w - cw))
    y0 = int(np.clip(round(cy - ch / 2.0), 0, h - ch))
    scale = min(max_w / cw, max_h / ch)
    return Viewport(x0, y0, cw, ch, float(scale))


def to_rgb(image01: np.ndarray) -> np.ndarray:
    img = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    rgb = (img * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3].copy()


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a mask (inside edge), `width` pixels thick."""
    m = np.asarray(mask, bool)
    if not m.any():
        return m
    return m & ~ndimage.binary_erosion(m, iterations=max(1, width), border_value=0)


def heat(values01: np.ndarray) -> np.ndarray:
    """A perceptual black -> red -> yellow -> white ramp for the uncertainty map."""
    v = np.clip(np.asarray(values01, np.float32), 0.0, 1.0)
    r = np.clip(3.0 * v, 0, 1)
    g = np.clip(3.0 * v - 1.0, 0, 1)
    b = np.clip(3.0 * v - 2.0, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def compose(image01: np.ndarray, objects: tuple[SegObject, ...], z: int, active: int | None = None,
            show_uncertainty: bool = False, fill_alpha: float = 0.35) -> np.ndarray:
    """The slice with every non-rejected object's mask on slice z: fill, then outline on top.

    The active object gets a thicker outline; rejected objects are not drawn (they stay listed).
    """
    rgb = to_rgb(image01).astype(np.float32)
    for obj in objects:
        if obj.status == Status.REJECTED:
            continue
        m = obj.mask(z)
        if m is None or not m.any():
            continue
        color = np.asarray(obj.color, np.float32)
        rgb[m] = (1 - fill_alpha) * rgb[m] + fill_alpha * color
        edge = outline(m, 2 if obj.oid == active else 1)
        rgb[edge] = color
    if show_uncertainty:
        for obj in objects:
            r = obj.result(z)
            if obj.oid == active and r is not None and r.uncertainty_map is not None:
                u = np.asarray(r.uncertainty_map, np.float32)
                a = (0.75 * u)[..., None]  # opaque where the model disagrees, clear where it is sure
                rgb = (1 - a) * rgb + a * heat(u).astype(np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def crop_and_scale(rgb: np.ndarray, vp: Viewport) -> np.ndarray:
    """The viewport's crop resized to its display size (nearest: pixels stay crisp for contouring)."""
    from PIL import Image

    crop = rgb[vp.y0: vp.y0 + vp.height, vp.x0: vp.x0 + vp.width]
    return np.asarray(Image.fromarray(crop).resize(vp.display_size, Image.NEAREST))


def draw_marks(rgb: np.ndarray, vp: Viewport, points=(), box=None) -> np.ndarray:
    """Draw the current prompt (box, +/- points) on a display image so the user sees what was given."""
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    if box is not None:
        (sx0, sy0), (sx1, sy1) = vp.to_screen(box.x0 - 0.5, box.y0 - 0.5), vp.to_screen(box.x1 + 0.5, box.y1 + 0.5)
        cv2.rectangle(out, (int(sx0), int(sy0)), (int(sx1), int(sy1)), (0, 255, 0), 1)
    for p in points:
        sx, sy = vp.to_screen(p.x, p.y)
        color = (0, 220, 0) if p.positive else (255, 40, 40)
        cv2.circle(out, (int(sx), int(sy)), 4, color, -1)
        cv2.circle(out, (int(sx), int(sy)), 4, (0, 0, 0), 1)
    return out


TAG_PX = 64  # marker size on screen: detectable by a Neon scene camera at ~60 cm
TAG_MARGIN = 16


def gaze_geometry(vp: Viewport, image_shape: tuple[int, int], tag_px: int = TAG_PX, margin: int = TAG_MARGIN):
    """(MarkerLayout, ImageViewer) of the gaze view: the display image with tag36h11 markers around it.

    Screen coordinates are the board's own pixels (the image is shown 1:1), so the eye tracker's
    homography (integrations.screen_mapping) maps gaze straight back to slice pixels through the viewer.
    """
    from integrations.screen_mapping import ImageViewer, Rect, marker_layout

    w, h = vp.display_size
    pad = tag_px + margin
    rect = Rect(float(pad), float(pad), float(w), float(h))
    layout = marker_layout(rect, size_px=tag_px, margin_px=margin)
    viewer = ImageViewer(rect, tuple(image_shape), zoom=vp.scale, pan=(float(vp.x0), float(vp.y0)))
    return layout, viewer


def apriltag_frame(rgb: np.ndarray, layout, viewer) -> np.ndarray:
    """The display image pasted into the marker board (white, with the layout's AprilTags)."""
    from integrations.screen_mapping import render_marker_board

    board = np.repeat(render_marker_board(layout)[..., None], 3, axis=2)
    x, y = int(viewer.rect.x), int(viewer.rect.y)
    h, w = rgb.shape[:2]
    board[y: y + h, x: x + w] = rgb[..., :3]
    return board
