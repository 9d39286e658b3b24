"""AprilTag screen mapping on a synthetic scene frame: the screen, seen in perspective by the scene camera."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from integrations.screen_mapping import (GazeMapper, ImageViewer, Rect, ScreenNotFoundError, detect_markers,
                                         gaze_to_image, gaze_to_slice, marker_layout, render_marker, render_marker_board,
                                         screen_homography)

SCENE = (1600, 1200)  # Neon scene camera (w, h)


def _screen(layout, viewer, rng):
    board = render_marker_board(layout)
    # a grey "slice" in the viewer, so the markers compete with image content
    r = viewer.rect
    board[int(r.y):int(r.y + r.h), int(r.x):int(r.x + r.w)] = rng.integers(40, 200, (int(r.h), int(r.w)), dtype=np.uint8)
    return board


def _view(board, H):
    scene = cv2.warpPerspective(board, H, SCENE, borderValue=90)
    return cv2.GaussianBlur(scene, (3, 3), 0)


def _camera_homography(board_shape, tilt=0.12):
    """screen px -> scene px: the screen fills ~60 % of the frame, seen from the side and above."""
    h, w = board_shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[300, 220], [1330, 160 + 80 * tilt], [1280, 1010], [340, 960]])
    return cv2.getPerspectiveTransform(src, dst)


@pytest.fixture
def scene_setup():
    rng = np.random.default_rng(3)
    viewer_rect = Rect(150, 150, 640, 480)
    layout = marker_layout(viewer_rect, size_px=96, margin_px=24)
    viewer = ImageViewer(viewer_rect, image_shape=(240, 320), zoom=2.0, pan=(0.0, 0.0))
    board = _screen(layout, viewer, rng)
    H = _camera_homography(board.shape)
    return layout, viewer, board, H


def test_rendered_markers_are_tag36h11():
    for tag in (0, 5, 17):
        m = render_marker(tag, 80)
        canvas = np.full((160, 160), 255, np.uint8)
        canvas[40:120, 40:120] = m
        found = detect_markers(canvas)
        assert list(found) == [tag]
        np.testing.assert_allclose(found[tag][0], [40, 40], atol=1.0)  # TL corner of the black square


def test_homography_maps_known_point_within_2px(scene_setup):
    layout, viewer, board, H = scene_setup
    scene = _view(board, H)
    hom = screen_homography(scene, layout)
    assert len(hom.markers) >= 4
    assert hom.reprojection_px < 1.5
    # known screen points (inside the viewer and elsewhere) -> scene -> back to screen
    pts = np.array([[470.0, 390.0], [200.0, 170.0], [760.0, 600.0], [100.0, 500.0]])
    scene_pts = cv2.perspectiveTransform(pts.reshape(-1, 1, 2), H).reshape(-1, 2)
    for p, q in zip(pts, scene_pts):
        back = hom.scene_to_screen(*q)
        assert np.hypot(back[0] - p[0], back[1] - p[1]) < 2.0, (p, back)
    # and through the viewer to image pixels: screen (470, 390) is image ((470-150)/2-.5, (390-150)/2-.5)
    ix, iy = gaze_to_image(tuple(scene_pts[0]), hom, viewer)
    assert abs(ix - 159.5) < 1.0 and abs(iy - 119.5) < 1.0


def test_off_image_gaze_is_dropped(scene_setup):
    layout, viewer, board, H = scene_setup
    hom = screen_homography(_view(board, H), layout)
    outside = cv2.perspectiveTransform(np.array([[[60.0, 60.0]]]), H).reshape(2)  # on a marker, not the image
    assert gaze_to_image(tuple(outside), hom, viewer) is None
    # zoomed in and panned: the image's right part is off the viewer; its left edge is off-image
    zoomed = ImageViewer(viewer.rect, viewer.image_shape, zoom=4.0, pan=(-20.0, 10.0))
    left = cv2.perspectiveTransform(np.array([[[160.0, 300.0]]]), H).reshape(2)
    assert gaze_to_image(tuple(left), hom, zoomed) is None  # screen x 160 -> image x -17.5: off the image
    # ...but it keeps its place on the slice's plane for fixation detection, marked not shown
    lx, ly, shown = gaze_to_slice(tuple(left), hom, zoomed)
    assert not shown and abs(lx - (-20 + 10 / 4 - 0.5)) < 1.0 and abs(ly - (10 + 150 / 4 - 0.5)) < 1.0
    inside = cv2.perspectiveTransform(np.array([[[470.0, 390.0]]]), H).reshape(2)
    ix, iy = gaze_to_image(tuple(inside), hom, zoomed)
    assert abs(ix - (-20 + 320 / 4 - 0.5)) < 1.0 and abs(iy - (10 + 240 / 4 - 0.5)) < 1.0


def test_viewer_fit_and_roundtrip():
    v = ImageViewer.fit(Rect(0, 0, 800, 400), (200, 200))
    assert v.zoom == 2.0
    sx, sy = v.image_to_screen(50, 120)
    ix, iy = v.screen_to_image(sx, sy)
    assert abs(ix - 50) < 1e-6 and abs(iy - 120) < 1e-6
    assert v.screen_to_image(10, 200) is None  # letterbox left of the image


def test_no_markers_is_a_clear_error_and_mapper_drops_gaze(scene_setup):
    layout, viewer, board, H = scene_setup
    blank = np.full((SCENE[1], SCENE[0]), 128, np.uint8)
    with pytest.raises(ScreenNotFoundError, match="markers are visible"):
        screen_homography(blank, layout)
    mapper = GazeMapper(layout, viewer, max_age_s=0.5)
    assert mapper.map(800, 600, t=0.0) is None
    assert mapper.update_frame(_view(board, H), t=1.0)
    inside = cv2.perspectiveTransform(np.array([[[470.0, 390.0]]]), H).reshape(2)
    assert mapper.map(*inside, t=1.2) is not None
    assert mapper.map(*inside, t=2.0) is None  # homography too old
    assert not mapper.update_frame(blank, t=2.0) and "markers" in mapper.last_error


def test_partial_occlusion_still_maps(scene_setup):
    layout, viewer, board, H = scene_setup
    occluded = board.copy()
    for p in layout.placements[:3]:  # a hand over three markers
        x, y = p.corners[0].astype(int)
        occluded[y:y + layout.size_px, x:x + layout.size_px] = 255
    hom = screen_homography(_view(occluded, H), layout)
    assert len(hom.markers) == 3
    q = cv2.perspectiveTransform(np.array([[[470.0, 390.0]]]), H).reshape(2)
    back = hom.scene_to_screen(*q)
    assert np.hypot(back[0] - 470, back[1] - 390) < 2.0
