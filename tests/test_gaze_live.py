"""Live gaze: scene frames -> AprilTag homography -> slice pixels -> LiveGazeSession.

The frame -> homography -> image stage (integrations.screen_mapping.SceneGazeMapping) is fed real
rendered tag36h11 frames (the screen board warped into a 1600x1200 scene view). The device side is the
real pupil_labs client against the fake Neon (tests/fake_neon.py), which streams gaze but no H.264
video: the frames come from the renderer through the same `drain_frames` interface the worker offers.
"""
from __future__ import annotations

import math
import time

import cv2
import numpy as np

from integrations.pupil_device import GazeStreamWorker
from integrations.screen_mapping import (GazeMapper, ImageViewer, LiveGazeFeed, Rect, SceneFrame, SceneGazeMapping,
                                         marker_layout, render_marker_board)
from prompting.gaze import LiveGazeSession, ViewingGeometry
from tests.fake_neon import FakeNeon

SCENE = (1600, 1200)


class _Setup:
    def __init__(self, image_shape=(200, 240), zoom=2.0, pan=(0.0, 0.0)):
        self.viewer = ImageViewer(Rect(150, 150, image_shape[1] * zoom, image_shape[0] * zoom), image_shape, zoom, pan)
        self.layout = marker_layout(self.viewer.rect, size_px=96, margin_px=24)
        board = render_marker_board(self.layout)
        r = self.viewer.rect
        rng = np.random.default_rng(1)
        board[int(r.y):int(r.y + r.h), int(r.x):int(r.x + r.w)] = rng.integers(40, 200, (int(r.h), int(r.w)), dtype=np.uint8)
        h, w = board.shape
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = np.float32([[300, 220], [1330, 170], [1280, 1010], [340, 960]])
        self.H = cv2.getPerspectiveTransform(src, dst)  # screen -> scene
        self.frame = cv2.GaussianBlur(cv2.warpPerspective(board, self.H, SCENE, borderValue=90), (3, 3), 0)

    def scene_of_image(self, ix: float, iy: float) -> tuple[float, float]:
        sx, sy = self.viewer.image_to_screen(ix, iy)
        p = self.H @ np.array([sx, sy, 1.0])
        return float(p[0] / p[2]), float(p[1] / p[2])


class _G:  # a scene-camera gaze sample as the worker gives it (SceneGaze's fields)
    def __init__(self, t, x, y, worn=True):
        self.t, self.x, self.y, self.worn = t, x, y, worn


class _Span:
    def __init__(self, t_start, t_end, x=0.0, y=0.0):
        self.t_start, self.t_end, self.x, self.y = t_start, t_end, x, y


def test_frames_map_gaze_to_slice_pixels():
    s = _Setup(zoom=2.0, pan=(10.0, 5.0))
    mapping = SceneGazeMapping(GazeMapper(s.layout, s.viewer))
    targets = [(30.0, 40.0), (120.5, 77.0), (200.0, 150.0)]  # image px (inside the panned view)
    gaze = [_G(0.01 * k, *s.scene_of_image(*targets[k % 3])) for k in range(30)]
    gaze.append(_G(0.31, *s.scene_of_image(-30.0, 40.0)))  # left of the image: on a marker margin
    gaze.append(_G(2.0, *s.scene_of_image(30.0, 40.0)))  # long after the last frame: no homography
    fix = [_Span(0.1, 0.3, *s.scene_of_image(120.5, 77.0))]
    batch = mapping.process([SceneFrame(0.05, s.frame)], gaze, fix, [_Span(0.1, 0.12)])
    assert batch.screen_found and batch.frames_used == 1
    for k in range(30):
        smp = batch.samples[k]
        assert smp.on_image and math.hypot(smp.x - targets[k % 3][0], smp.y - targets[k % 3][1]) < 2.0, (k, smp)
        assert smp.blink == (0.1 <= smp.t <= 0.12)
    off = batch.samples[30]  # off the image: not a prompt, but where the eye was is kept for detection
    assert not off.on_image and not off.usable and off.tracked and abs(off.x - (-30.0)) < 2.0 and abs(off.y - 40.0) < 2.0
    assert not batch.samples[31].on_image  # stale homography: not trusted
    assert len(batch.fixations) == 1 and math.hypot(batch.fixations[0].x - 120.5, batch.fixations[0].y - 77.0) < 2.0
    assert batch.fixations[0].source == "device"


def test_frame_without_markers_maps_nothing():
    s = _Setup()
    mapping = SceneGazeMapping(GazeMapper(s.layout, s.viewer))
    blank = np.full((SCENE[1], SCENE[0]), 90, np.uint8)
    batch = mapping.process([SceneFrame(0.0, blank)], [_G(0.01, 800.0, 600.0)])
    assert not batch.screen_found and "markers" in batch.message
    assert not batch.samples[0].on_image


class _FramesBeside:
    """The worker's gaze (real client, fake device) with rendered scene frames beside it."""

    def __init__(self, worker, frame):
        self.worker, self.frame = worker, frame

    def drain_frames(self):
        return [SceneFrame(time.time(), self.frame)]

    def drain_gaze(self):
        return self.worker.drain_gaze()

    def drain_events(self):
        return self.worker.drain_events()


def test_live_device_gaze_through_frames_segments_the_disc(segmenter, disc_image):
    image, mask = disc_image
    s = _Setup(image_shape=mask.shape, zoom=2.0)
    # the reader looks over the disc (slice px (120, 100), radius 40), 300 ms per place, with tremor
    centres = [(104.0, 92.0), (138.0, 104.0), (116.0, 122.0), (124.0, 80.0)]

    def gaze(t):
        cx, cy = centres[int(t / 0.3) % 4]
        return (*s.scene_of_image(cx + 1.5 * math.sin(37 * t), cy + 1.5 * math.cos(41 * t)), True)

    with FakeNeon(gaze=gaze) as dev:
        worker = GazeStreamWorker("127.0.0.1", dev.port, scene_frames=True).start()
        try:
            assert worker.wait_for_state("connected", 10), worker.status()
            assert worker.status().scene_camera is False  # the fake serves no video: said so, gaze goes on
            assert "no scene camera" in worker.status().message
            feed = LiveGazeFeed(_FramesBeside(worker, s.frame), SceneGazeMapping(GazeMapper(s.layout, s.viewer)))
            live = LiveGazeSession(segmenter, image, ViewingGeometry(zoom=s.viewer.zoom))
            end = time.monotonic() + 20
            while time.monotonic() < end and len(live.fixations()) < 5:
                time.sleep(0.3)
                batch = feed.poll()
                assert batch.screen_found, batch.message
                live.add_samples(batch.samples)
        finally:
            worker.stop()
    assert len(live.fixations()) >= 5 and live.last is not None, "no live update from the device's gaze"
    m = live.last.segmentation.mask
    # after a few looks the box has grown from the first fixation's neighbourhood to the disc
    assert 2 * (m & mask).sum() / (m.sum() + mask.sum()) > 0.85
