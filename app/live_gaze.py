"""The live eye tracker, wired to masks: device worker -> scene-frame mapping -> LiveGazeSession.

`LiveGazeLink` is what the gaze panel keeps in the session while a tracker is connected. It never
blocks: the device worker (integrations.pupil_device.GazeStreamWorker) streams in its own thread,
and `poll()` (called by the panel every ~0.5 s from an `st.fragment(run_every=...)`) drains what
arrived, maps it to slice pixels and feeds the slice's `prompting.gaze.LiveGazeSession`, which
re-decodes against the cached embedding when the fixations change.

Mapping: gaze comes in scene-camera pixels. The worker (started with `scene_frames=True`) hands over
scene frames (`drain_frames()`, a few per second); `integrations.screen_mapping.SceneGazeMapping`
finds the AprilTag markers around the displayed image in each, and maps every gaze sample through
the homography of the frame nearest in time, then through the viewer (where the image sits on the
board, zoom, pan) to slice pixels. Gaze off the image keeps its slice coordinates with
`on_image=False` (never clamped onto the image): fixation detection reads it, so a fixation on a
structure at the image's edge is not pulled inwards, and keeps only fixations mostly on the image.
Gaze with no recent frame has no coordinates (NaN) and splits fixations. Frames from another
scene-camera source can be handed in with `feed_frame` (they are processed in `poll`, on the
script thread, like the worker's).

The view matters: a new slice, window, zoom or pan is a new LiveGazeSession (`set_view`), because
fixations on one view say nothing about another.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

MAX_PENDING_FRAMES = 16  # frames handed in but not yet processed (a stalled page must not pile them up)
CLOCK_RESET_S = 2.0  # a sample this much older than the newest one seen means the device clock restarted


def in_time_order(samples, newest: float | None) -> tuple[list, float | None, bool]:
    """The samples that continue the stream after `newest`, the new newest time, and whether the clock restarted.

    Fixation detection needs time order. A live stream can break it: packets that arrive late by a
    few ms (dropped: their moment is covered by the samples around them), or a device whose clock
    restarted after a reconnect (everything after the jump starts a new stream)."""
    kept, restarted = [], False
    for s in samples:
        if newest is not None and s.t < newest:
            if newest - s.t < CLOCK_RESET_S:
                continue
            kept, restarted = [], True
        kept.append(s)
        newest = s.t
    return kept, newest, restarted


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
    worker: object  # GazeStreamWorker (start/pause/resume/stop/status/drain_gaze/drain_events/drain_frames)
    segmenter: object
    view: LiveView | None = None
    session: object = None  # prompting.gaze.LiveGazeSession of the current view
    mapping: object = None  # integrations.screen_mapping.SceneGazeMapping of the current view
    counts: LiveCounts = field(default_factory=LiveCounts)
    last_step: tuple | None = None  # (undo depth, object, slice, objects id) after the last live mask
    newest_t: float | None = None  # time of the newest gaze sample fed to the session
    _pending: deque = field(default_factory=lambda: deque(maxlen=MAX_PENDING_FRAMES))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- the view ------------------------------------------------------------------------------
    def set_view(self, view: LiveView, image01: np.ndarray, geometry) -> bool:
        """Use this view; a different one starts a new LiveGazeSession and mapping (True when it did)."""
        if self.view is not None and self.view.key == view.key and self.session is not None:
            return False
        from integrations.screen_mapping import GazeMapper, SceneGazeMapping
        from prompting.gaze import LiveGazeSession

        self.session = LiveGazeSession(self.segmenter, image01, geometry)
        self.newest_t = None
        self.mapping = SceneGazeMapping(GazeMapper(view.layout, view.viewer))
        self.view = view
        self.worker.drain_gaze()  # gaze that looked at the previous view
        self.worker.drain_events()
        return True

    # -- scene frames ----------------------------------------------------------------------------
    def feed_frame(self, frame: np.ndarray, t: float) -> None:
        """A scene-camera frame taken at unix time t, from a source other than the worker (any thread)."""
        from integrations.screen_mapping import SceneFrame

        with self._lock:
            self._pending.append(SceneFrame(float(t), frame))

    # -- polling (script thread) --------------------------------------------------------------------
    def poll(self):
        """Drain the device, map, feed the session; the new GazeUpdate (a mask) or None. Never blocks."""
        if self.session is None or self.mapping is None:
            return None
        with self._lock:
            frames = list(self._pending)
            self._pending.clear()
        drain = getattr(self.worker, "drain_frames", None)
        frames += drain() if drain is not None else []
        fixations, blinks = self.worker.drain_events()
        batch = self.mapping.process(frames, self.worker.drain_gaze(), fixations, blinks)
        c = self.counts
        c.received += len(batch.samples)
        c.on_image += sum(s.on_image for s in batch.samples)
        c.frames += batch.frames_used
        c.frames_failed += len(frames) - batch.frames_used
        c.last_frame_error = batch.message
        if getattr(self.worker.status(), "eye_events", False):
            # the Companion app streams its own fixations (it saw the raw signal): use those, not
            # ours from the samples too (that would count every dwell twice)
            update = self.session.add_fixations(batch.fixations) if batch.fixations else None
        else:
            samples, self.newest_t, restarted = in_time_order(batch.samples, self.newest_t)
            if restarted:
                self.session.reset()
            update = self.session.add_samples(samples) if samples else None
        if update is not None:
            c.updates += 1
        return update

    def reject(self):
        """'Not this': the dominant dwell becomes a negative point; the re-decoded GazeUpdate or None."""
        if self.session is None:
            return None
        return self.session.reject()

    def stop(self) -> None:
        self.worker.stop()
