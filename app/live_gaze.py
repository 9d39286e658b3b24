"""The live eye tracker, wired to masks: device worker -> scene-frame mapping -> LiveGazeSession.

`LiveGazeLink` is what the gaze panel keeps in the session while a tracker is connected. It never
blocks: the device worker (integrations.pupil_device.GazeStreamWorker) streams in its own thread,
and `poll()` (called by the panel every ~0.5 s from an `st.fragment(run_every=...)`) drains what
arrived, maps it to slice pixels and feeds the slice's `prompting.gaze.LiveGazeSession`, which
re-decodes against the cached embedding when the fixations change.

Mapping: gaze comes in scene-camera pixels. Each scene frame that shows the AprilTag markers around
the displayed image gives a homography scene -> screen (integrations.screen_mapping); a gaze sample is
mapped through the homography of the frame nearest to it in time (at most `max_frame_age_s` away),
then through the viewer (where the image sits on the board, zoom, pan) to slice pixels. Gaze with no
recent frame, off the board or off the image is kept as `on_image=False` (it splits fixations, it
is never clamped onto the image). Frames come from the worker when it streams the scene camera
(`drain_scene_frames()`), or are handed in with `feed_frame` (a scene-camera source of one's own).

The view matters: a new slice, window, zoom or pan is a new LiveGazeSession (`set_view`), because
fixations on one view say nothing about another.
"""
from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field

import numpy as np

MAX_FRAMES = 64  # homographies kept (a few seconds of scene video at the rate frames are used)


@dataclass(frozen=True)
class LiveView:
    """The view the session belongs to: the board layout and viewer it is shown with."""

    key: tuple  # (study id, slice, window, zoom, centre): a change means a new session
    layout: object  # integrations.screen_mapping.MarkerLayout
    viewer: object  # integrations.screen_mapping.ImageViewer


@dataclass
class LiveCounts:
    received: int = 0  # gaze samples drained from the device
    on_image: int = 0  # of them, mapped onto the image
    frames: int = 0  # scene frames whose markers gave a homography
    frames_failed: int = 0  # scene frames where too few markers were visible
    updates: int = 0  # masks produced
    last_frame_error: str = ""


@dataclass
class LiveGazeLink:
    worker: object  # GazeStreamWorker (start/pause/resume/stop/status/drain_gaze/drain_events)
    segmenter: object
    max_frame_age_s: float = 0.5
    min_markers: int = 2
    view: LiveView | None = None
    session: object = None  # prompting.gaze.LiveGazeSession of the current view
    counts: LiveCounts = field(default_factory=LiveCounts)
    _homs: list = field(default_factory=list)  # [(t, ScreenHomography)] sorted by t
    _blinks: list = field(default_factory=list)  # [(t_start, t_end)] unix s
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- the view ------------------------------------------------------------------------------
    def set_view(self, view: LiveView, image01: np.ndarray, geometry) -> bool:
        """Use this view; a different one starts a new LiveGazeSession (True when it did)."""
        if self.view is not None and self.view.key == view.key and self.session is not None:
            return False
        from prompting.gaze import LiveGazeSession

        with self._lock:
            if self.view is None or self.view.layout is not view.layout:
                self._homs.clear()  # another marker board on screen: old homographies do not apply
            self.view = view
        self.session = LiveGazeSession(self.segmenter, image01, geometry)
        self.worker.drain_gaze()  # gaze looked at the previous view
        self.worker.drain_events()
        return True

    # -- scene frames ----------------------------------------------------------------------------
    def feed_frame(self, frame: np.ndarray, t: float) -> bool:
        """One scene-camera frame taken at unix time t: find the markers, keep the homography."""
        from integrations.screen_mapping import ScreenNotFoundError, screen_homography

        view = self.view
        if view is None:
            return False
        try:
            hom = screen_homography(frame, view.layout, self.min_markers)
        except ScreenNotFoundError as e:
            self.counts.frames_failed += 1
            self.counts.last_frame_error = str(e)
            return False
        with self._lock:
            i = bisect.bisect([h[0] for h in self._homs], t)
            self._homs.insert(i, (float(t), hom))
            del self._homs[:-MAX_FRAMES]
        self.counts.frames += 1
        return True

    def _homography_at(self, t: float):
        with self._lock:
            homs = list(self._homs)
        if not homs:
            return None
        ts = [h[0] for h in homs]
        i = bisect.bisect(ts, t)
        near = min((homs[j] for j in (i - 1, i) if 0 <= j < len(homs)), key=lambda h: abs(h[0] - t))
        return near[1] if abs(near[0] - t) <= self.max_frame_age_s else None

    def map_point(self, x: float, y: float, t: float) -> tuple[float, float] | None:
        """Scene px at unix time t -> slice px, or None (no recent frame, off the board or the image)."""
        from integrations.screen_mapping import gaze_to_image

        hom = self._homography_at(t)
        if hom is None or self.view is None:
            return None
        return gaze_to_image((x, y), hom, self.view.viewer)

    # -- polling (script thread) --------------------------------------------------------------------
    def _pull_frames(self) -> None:
        drain = getattr(self.worker, "drain_scene_frames", None)
        for item in (drain() if drain is not None else ()):
            t, frame = (item.t, item.frame) if hasattr(item, "frame") else item
            self.feed_frame(frame, t)

    def poll(self):
        """Drain the device, map, feed the session; the new GazeUpdate (a mask) or None. Never blocks."""
        from prompting.gaze import Fixation, GazeSample

        if self.session is None or self.view is None:
            return None
        self._pull_frames()
        samples = self.worker.drain_gaze()
        fixations, blinks = self.worker.drain_events()
        self._blinks += [(b.t_start, b.t_end) for b in blinks]
        del self._blinks[:-200]
        mapped = []
        for s in samples:
            xy = self.map_point(s.x, s.y, s.t) if s.worn else None
            blink = any(a <= s.t <= b for a, b in self._blinks)
            mapped.append(GazeSample(s.t, xy[0] if xy else math.nan, xy[1] if xy else math.nan,
                                     worn=s.worn, blink=blink, on_image=xy is not None))
        self.counts.received += len(samples)
        self.counts.on_image += sum(m.on_image for m in mapped)
        update = None
        if getattr(self.worker.status(), "eye_events", False):
            # the Companion app streams its own fixations (it saw the raw signal): use those, not
            # ours from the samples too (that would count every dwell twice)
            own = []
            for f in fixations:
                xy = self.map_point(f.x, f.y, f.t_end)
                if xy is not None:
                    own.append(Fixation(f.t_start, f.t_end, xy[0], xy[1], 0, 0.0, "device"))
            if own:
                update = self.session.add_fixations(own)
        elif mapped:
            update = self.session.add_samples(mapped)
        if update is not None:
            self.counts.updates += 1
        return update

    def reject(self):
        """'Not this': the dominant dwell becomes a negative point; the re-decoded GazeUpdate or None."""
        if self.session is None:
            return None
        return self.session.reject()

    def stop(self) -> None:
        self.worker.stop()
