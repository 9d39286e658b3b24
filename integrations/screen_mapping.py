"""Scene camera -> screen -> image pixels, through AprilTag markers shown around the displayed image.

The eye tracker reports gaze in its scene camera's pixels (Neon: 1600 x 1200). The app draws >= 4
AprilTag tag36h11 markers around the image viewer; in each scene frame we find them (OpenCV's aruco
module, DICT_APRILTAG_36h11), fit the homography scene -> screen from their corners, and map gaze
through it. Then the viewer's geometry (where the image sits on screen, zoom, pan) takes screen
pixels to slice pixels. Gaze off the viewer or off the image maps to None: it is dropped, not clamped.

Screen coordinates are the app's own logical pixels, origin at the top-left of the area that holds
the markers and the viewer (the same frame `marker_layout` and `render_marker_board` use).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import ClinsegInputError

TAG_FAMILY = cv2.aruco.DICT_APRILTAG_36h11


class ScreenNotFoundError(ClinsegInputError):
    """Too few markers visible in a scene frame to know where the screen is."""


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    def contains(self, sx: float, sy: float) -> bool:
        return self.x <= sx < self.x + self.w and self.y <= sy < self.y + self.h


@dataclass(frozen=True)
class MarkerPlacement:
    tag_id: int
    corners: np.ndarray = field(compare=False)  # (4, 2) screen px: TL, TR, BR, BL of the black square


@dataclass(frozen=True)
class MarkerLayout:
    """Where the app draws its markers, in screen px."""

    placements: tuple[MarkerPlacement, ...]
    size_px: int
    canvas: tuple[int, int]  # (width, height) of the area holding markers + viewer

    def corners_for(self, tag_id: int) -> np.ndarray | None:
        for p in self.placements:
            if p.tag_id == tag_id:
                return p.corners
        return None


def marker_layout(viewer: Rect, size_px: int = 96, margin_px: int = 24, ids: tuple[int, ...] = (0, 1, 2, 3, 4, 5),
                  ) -> MarkerLayout:
    """Markers around the viewer: four at its corners, two more at mid-height (left, right) when six
    ids are given. The canvas grows to hold them; the viewer keeps its own coordinates."""
    if len(ids) < 4:
        raise ValueError("screen mapping needs at least 4 markers around the image")
    s, m = size_px, margin_px
    x0, y0 = viewer.x - m - s, viewer.y - m - s  # top-left marker's top-left corner
    x1, y1 = viewer.x + viewer.w + m, viewer.y + viewer.h + m
    spots = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, viewer.y + viewer.h / 2 - s / 2), (x1, viewer.y + viewer.h / 2 - s / 2)]
    placements = []
    for tag_id, (px, py) in zip(ids, spots):
        c = np.array([[px, py], [px + s, py], [px + s, py + s], [px, py + s]], dtype=np.float64)
        placements.append(MarkerPlacement(int(tag_id), c))
    if min(x0, y0) < 0:
        raise ValueError(f"the viewer at ({viewer.x}, {viewer.y}) leaves no room for {s} px markers with {m} px margin")
    canvas = (int(np.ceil(x1 + s + m)), int(np.ceil(y1 + s + m)))
    return MarkerLayout(tuple(placements), s, canvas)


def render_marker(tag_id: int, size_px: int = 96) -> np.ndarray:
    """One tag36h11 marker as a uint8 image of size_px x size_px (black square edge to edge: put it on
    white, with a white quiet zone of at least one cell, for detection)."""
    d = cv2.aruco.getPredefinedDictionary(TAG_FAMILY)
    return cv2.aruco.generateImageMarker(d, int(tag_id), int(size_px), borderBits=1)


def render_marker_board(layout: MarkerLayout, background: int = 255) -> np.ndarray:
    """The canvas with all markers drawn (uint8, H x W): the app overlays the viewer on it."""
    w, h = layout.canvas
    board = np.full((h, w), background, np.uint8)
    for p in layout.placements:
        x, y = int(round(p.corners[0, 0])), int(round(p.corners[0, 1]))
        board[y:y + layout.size_px, x:x + layout.size_px] = render_marker(p.tag_id, layout.size_px)
    return board


@dataclass(frozen=True)
class ImageViewer:
    """How the slice is shown: the viewer's rectangle on screen, zoom and pan.

    zoom: screen px per image px. pan: the image pixel (x, y) shown at the viewer's top-left corner.
    """

    rect: Rect
    image_shape: tuple[int, int]  # (H, W) of the slice
    zoom: float = 1.0
    pan: tuple[float, float] = (0.0, 0.0)

    def locate(self, sx: float, sy: float) -> tuple[float, float, bool]:
        """Screen pixel -> slice pixel (x, y) on the slice's plane, not clipped, and whether the viewer
        shows it (inside the viewer's rectangle and on the slice). Gaze just off the image keeps its
        position: a fixation on a structure at the image's edge has samples on both sides, and only
        all of them together put its centre where the eye looked."""
        # a screen pixel covers [k, k+1); its centre is k + 0.5; image pixel centres are integers
        ix = self.pan[0] + (sx - self.rect.x) / self.zoom - 0.5
        iy = self.pan[1] + (sy - self.rect.y) / self.zoom - 0.5
        h, w = self.image_shape
        shown = self.rect.contains(sx, sy) and -0.5 <= ix <= w - 0.5 and -0.5 <= iy <= h - 0.5
        return float(ix), float(iy), bool(shown)

    def screen_to_image(self, sx: float, sy: float) -> tuple[float, float] | None:
        """Screen pixel -> slice pixel, or None where the viewer does not show the slice."""
        ix, iy, shown = self.locate(sx, sy)
        if not shown:
            return None
        h, w = self.image_shape
        return float(min(max(ix, 0.0), w - 1.0)), float(min(max(iy, 0.0), h - 1.0))

    def image_to_screen(self, ix: float, iy: float) -> tuple[float, float]:
        return (self.rect.x + (ix + 0.5 - self.pan[0]) * self.zoom, self.rect.y + (iy + 0.5 - self.pan[1]) * self.zoom)

    @staticmethod
    def fit(rect: Rect, image_shape: tuple[int, int]) -> "ImageViewer":
        """The whole slice, aspect kept, centred in the viewer."""
        h, w = image_shape
        z = min(rect.w / w, rect.h / h)
        pan = (-(rect.w / z - w) / 2, -(rect.h / z - h) / 2)
        return ImageViewer(rect, (h, w), z, pan)


@dataclass(frozen=True)
class ScreenHomography:
    matrix: np.ndarray  # 3x3, scene px -> screen px
    markers: tuple[int, ...]  # ids used
    reprojection_px: float  # RMS error of the marker corners, screen px

    def scene_to_screen(self, x: float, y: float) -> tuple[float, float]:
        p = self.matrix @ np.array([x, y, 1.0])
        return float(p[0] / p[2]), float(p[1] / p[2])


def _detector() -> cv2.aruco.ArucoDetector:
    params = cv2.aruco.DetectorParameters()
    # subpixel corners: the homography is only as good as its corners
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    return cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(TAG_FAMILY), params)


def detect_markers(frame: np.ndarray) -> dict[int, np.ndarray]:
    """tag id -> (4, 2) corners in frame px (TL, TR, BR, BL as drawn)."""
    img = np.asarray(frame)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    corners, ids, _ = _detector().detectMarkers(img)
    if ids is None:
        return {}
    return {int(i): c.reshape(4, 2).astype(np.float64) for i, c in zip(ids.ravel(), corners)}


def screen_homography(frame: np.ndarray, layout: MarkerLayout, min_markers: int = 2) -> ScreenHomography:
    """Homography scene frame -> screen from the layout's markers found in the frame.

    Raises ScreenNotFoundError when fewer than min_markers of the layout's markers are visible.
    """
    found = detect_markers(frame)
    ids = sorted(i for i in found if layout.corners_for(i) is not None)
    if len(ids) < min_markers:
        raise ScreenNotFoundError(
            f"only {len(ids)} of the {len(layout.placements)} screen markers are visible to the scene camera "
            f"(need {min_markers}): face the screen, keep the markers uncovered, or enlarge them.")
    src = np.concatenate([found[i] for i in ids])
    dst = np.concatenate([layout.corners_for(i) for i in ids])
    method = cv2.RANSAC if len(ids) >= 3 else 0
    H, _ = cv2.findHomography(src, dst, method, 3.0)
    if H is None:
        raise ScreenNotFoundError("the visible markers do not give a consistent screen plane; check the view.")
    proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), H).reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - dst) ** 2, axis=1))))
    return ScreenHomography(H, tuple(ids), rms)


def gaze_to_image(gaze_xy: tuple[float, float], homography: ScreenHomography,
                  viewer: ImageViewer) -> tuple[float, float] | None:
    """Scene-camera gaze -> slice pixel, or None when the gaze is off the viewer or off the image."""
    sx, sy = homography.scene_to_screen(*gaze_xy)
    if not (np.isfinite(sx) and np.isfinite(sy)):
        return None
    return viewer.screen_to_image(sx, sy)


def gaze_to_slice(gaze_xy: tuple[float, float], homography: ScreenHomography,
                  viewer: ImageViewer) -> tuple[float, float, bool] | None:
    """Scene-camera gaze -> (x, y, shown): slice coordinates, unclipped, and whether the viewer shows
    that point (ImageViewer.locate); None only when the homography does not reach the screen plane."""
    sx, sy = homography.scene_to_screen(*gaze_xy)
    if not (np.isfinite(sx) and np.isfinite(sy)):
        return None
    return viewer.locate(sx, sy)


@dataclass
class GazeMapper:
    """Keeps the latest homography (updated per scene frame) and maps gaze samples between frames.

    A homography older than max_age_s is not trusted (the head moved; the screen moved in view):
    gaze maps to None until a new frame shows the markers again.
    """

    layout: MarkerLayout
    viewer: ImageViewer
    max_age_s: float = 0.5
    min_markers: int = 2
    homography: ScreenHomography | None = None
    homography_t: float = float("-inf")
    last_error: str = ""

    def update_frame(self, frame: np.ndarray, t: float) -> bool:
        try:
            self.homography = screen_homography(frame, self.layout, self.min_markers)
            self.homography_t = t
            self.last_error = ""
            return True
        except ScreenNotFoundError as e:
            self.last_error = str(e)
            return False

    def _current(self, t: float) -> ScreenHomography | None:
        if self.homography is None or abs(t - self.homography_t) > self.max_age_s:
            return None
        return self.homography

    def map(self, x: float, y: float, t: float) -> tuple[float, float] | None:
        h = self._current(t)
        return None if h is None else gaze_to_image((x, y), h, self.viewer)

    def locate(self, x: float, y: float, t: float) -> tuple[float, float, bool] | None:
        """Like `map`, but gaze off the image keeps its slice coordinates (gaze_to_slice)."""
        h = self._current(t)
        return None if h is None else gaze_to_slice((x, y), h, self.viewer)

    def with_viewer(self, viewer: ImageViewer) -> "GazeMapper":
        """The user zoomed or panned: same markers, new viewer geometry."""
        self.viewer = viewer
        return self


# ------------------------------------------------------------------------------------------------
# live: scene frames + scene-camera gaze -> slice-pixel gaze samples
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneFrame:
    """One scene-camera frame (uint8 gray or BGR) at unix time t (seconds), as the worker hands it over."""

    t: float
    image: np.ndarray = field(compare=False)


@dataclass
class LiveBatch:
    """What one poll of the live feed produced, in slice pixels, ready for prompting.gaze.LiveGazeSession."""

    samples: list  # prompting.gaze.GazeSample (on_image=False where the gaze missed the image, x/y NaN if no screen was seen)
    fixations: list  # prompting.gaze.Fixation from the device's own detector, mapped; off-image ones dropped
    blinks: list[tuple[float, float]]
    frames_used: int = 0
    screen_found: bool = False
    message: str = ""


@dataclass
class SceneGazeMapping:
    """The live stage between the device and the gaze session, a pure unit: scene frames in, homography
    per frame (AprilTags), gaze samples mapped through the homography nearest in time and the viewer
    (zoom, pan) to slice pixels. Blinks mark the samples inside them.

    Gaze arrives at 200 Hz, frames at up to 30 Hz; marker detection on a 1600 x 1200 frame costs
    tens of ms, so the worker hands over at most `frame_rate_hz` frames per second (default 5) and a
    homography serves gaze up to `mapper.max_age_s` (0.5 s) from its frame.
    """

    mapper: GazeMapper
    _homs: list = field(default_factory=list)  # (t, ScreenHomography), time order, recent only

    def add_frame(self, frame: SceneFrame) -> bool:
        ok = self.mapper.update_frame(frame.image, frame.t)
        if ok:
            self._homs.append((frame.t, self.mapper.homography))
            self._homs = self._homs[-32:]
        return ok

    def _homography_at(self, t: float):
        best, best_dt = None, self.mapper.max_age_s
        for ht, h in reversed(self._homs):
            dt = abs(t - ht)
            if dt <= best_dt:
                best, best_dt = h, dt
            elif ht < t - self.mapper.max_age_s:
                break
        return best

    def map_point(self, x: float, y: float, t: float) -> tuple[float, float] | None:
        h = self._homography_at(t)
        return None if h is None else gaze_to_image((x, y), h, self.mapper.viewer)

    def locate_point(self, x: float, y: float, t: float) -> tuple[float, float, bool] | None:
        h = self._homography_at(t)
        return None if h is None else gaze_to_slice((x, y), h, self.mapper.viewer)

    def process(self, frames, gaze, fixations=(), blinks=()) -> LiveBatch:
        """frames: SceneFrame; gaze: objects with t, x, y, worn (scene px); fixations: with t_start,
        t_end, x, y (scene px); blinks: with t_start, t_end. Frames are used before the gaze they time."""
        from prompting.gaze import Fixation, GazeSample  # the samples' type lives with the detector

        used = sum(self.add_frame(f) for f in sorted(frames, key=lambda f: f.t))
        spans = [(float(b.t_start), float(b.t_end)) for b in blinks]
        out = []
        for g in gaze:
            loc = self.locate_point(float(g.x), float(g.y), float(g.t))
            blink = any(s <= g.t <= e for s, e in spans)
            if loc is None:
                out.append(GazeSample(float(g.t), float("nan"), float("nan"), bool(g.worn), blink, False))
            else:
                out.append(GazeSample(float(g.t), loc[0], loc[1], bool(g.worn), blink, loc[2]))
        fx = []
        for f in fixations:
            xy = self.map_point(float(f.x), float(f.y), 0.5 * (float(f.t_start) + float(f.t_end)))
            if xy is not None:
                n = max(1, int(round((f.t_end - f.t_start) * 200)))
                fx.append(Fixation(float(f.t_start), float(f.t_end), xy[0], xy[1], n, 0.0, "device"))
        found = bool(self._homs)
        msg = "" if found else (self.mapper.last_error or "no scene frame with the screen markers yet")
        return LiveBatch(out, fx, spans, int(used), found, msg)


@dataclass
class LiveGazeFeed:
    """Glue for the app: drains a streaming worker (integrations.pupil_device.GazeStreamWorker, or
    anything with drain_gaze / drain_frames / drain_events) and maps everything through
    SceneGazeMapping. Call `poll()` from the UI loop; it never blocks on the network."""

    worker: object
    mapping: SceneGazeMapping

    def poll(self) -> LiveBatch:
        frames = self.worker.drain_frames() if hasattr(self.worker, "drain_frames") else []
        gaze = self.worker.drain_gaze()
        fixations, blinks = self.worker.drain_events() if hasattr(self.worker, "drain_events") else ([], [])
        return self.mapping.process(frames, gaze, fixations, blinks)

    def with_viewer(self, viewer: ImageViewer) -> "LiveGazeFeed":
        """The user zoomed or panned: same markers and homographies, new viewer geometry."""
        self.mapping.mapper.with_viewer(viewer)
        return self
