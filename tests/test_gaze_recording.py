"""Pupil Cloud export import + deterministic replay through screen mapping and gaze prompting; mouse gaze."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.simulated_gaze import simulate_gaze
from integrations.gaze_recording import (MouseGaze, RecordingFormatError, load_recording, recorded_fixations,
                                         replay)
from integrations.screen_mapping import GazeMapper, ImageViewer, Rect, marker_layout, render_marker_board
from prompting.gaze import FixationConfig, ViewingGeometry, detect_fixations, gaze_prompt

T0_NS = 1_700_000_000_000_000_000
SCENE = (1600, 1200)
FPS = 15


def _camera(board_shape, k: int) -> np.ndarray:
    """screen -> scene homography of frame k: the head drifts a little to the right and down."""
    h, w = board_shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[320, 240], [1320, 200], [1270, 1000], [350, 960]]) + np.float32([3 * k, 1.5 * k])
    return cv2.getPerspectiveTransform(src, dst)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def export(tmp_path_factory, ):
    """A synthetic Pupil Cloud export: a reader looks at a disc shown in the viewer, scene video included."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:200, :240]
    mask = (yy - 100) ** 2 + (xx - 120) ** 2 < 40 ** 2
    image01 = np.clip(0.1 + 0.8 * mask + rng.normal(0, 0.02, mask.shape), 0, 1).astype(np.float32)
    rect = Rect(150, 150, 480, 400)
    viewer = ImageViewer.fit(rect, mask.shape)
    layout = marker_layout(rect)
    board = render_marker_board(layout)
    shown = cv2.resize((image01 * 255).astype(np.uint8), (int(240 * viewer.zoom), int(200 * viewer.zoom)))
    y0, x0 = int(rect.y - viewer.pan[1] * viewer.zoom), int(rect.x - viewer.pan[0] * viewer.zoom)
    board[y0:y0 + shown.shape[0], x0:x0 + shown.shape[1]] = shown
    geometry = ViewingGeometry(600, 0.27, viewer.zoom)
    sim = simulate_gaze(mask, geometry, np.random.default_rng(5))

    folder = tmp_path_factory.mktemp("export") / "2025-01-01_reader"
    folder.mkdir()
    duration = sim.samples[-1].t + 0.1
    n_frames = int(duration * FPS) + 1
    frame_t = [k / FPS for k in range(n_frames)]
    vw = cv2.VideoWriter(str(folder / "scene.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SCENE)
    assert vw.isOpened()
    for k in range(n_frames):
        vw.write(cv2.cvtColor(cv2.warpPerspective(board, _camera(board.shape, k), SCENE, borderValue=80), cv2.COLOR_GRAY2BGR))
    vw.release()
    _write_csv(folder / "world_timestamps.csv", ["section id", "recording id", "timestamp [ns]"],
               [["s", "r", T0_NS + int(t * 1e9)] for t in frame_t])
    rows, truth = [], []
    blink_id = 0
    prev_blink = False
    for s in sim.samples:
        k = int(np.floor(s.t * FPS + 1e-9))  # the frame shown at or before the sample
        sx, sy = viewer.image_to_screen(s.x, s.y)
        gx, gy = cv2.perspectiveTransform(np.array([[[sx, sy]]], np.float64), _camera(board.shape, k)).reshape(2)
        if s.blink and not prev_blink:
            blink_id += 1
        prev_blink = s.blink
        rows.append(["s", "r", T0_NS + int(round(s.t * 1e9)), f"{gx:.3f}", f"{gy:.3f}", int(s.worn),
                     "", blink_id if s.blink else "", 0.0, 0.0])
        truth.append((s.x, s.y, s.worn, s.blink))
    _write_csv(folder / "gaze.csv", ["section id", "recording id", "timestamp [ns]", "gaze x [px]", "gaze y [px]",
                                     "worn", "fixation id", "blink id", "azimuth [deg]", "elevation [deg]"], rows)
    blinks = [s for s in sim.samples if s.blink]
    _write_csv(folder / "blinks.csv", ["section id", "recording id", "blink id", "start timestamp [ns]",
                                       "end timestamp [ns]", "duration [ms]"],
               [["s", "r", 1, T0_NS + int(blinks[0].t * 1e9), T0_NS + int(blinks[-1].t * 1e9), 0]] if blinks else [])
    fx_rows = []
    for i, f in enumerate(sim.fixations):
        tm = (f.t_start + f.t_end) / 2
        k = int(np.floor(tm * FPS))
        sx, sy = viewer.image_to_screen(f.x, f.y)
        gx, gy = cv2.perspectiveTransform(np.array([[[sx, sy]]], np.float64), _camera(board.shape, k)).reshape(2)
        fx_rows.append(["s", "r", i + 1, T0_NS + int(f.t_start * 1e9), T0_NS + int(f.t_end * 1e9),
                        (f.t_end - f.t_start) * 1000, gx, gy, 0, 0])
    _write_csv(folder / "fixations.csv", ["section id", "recording id", "fixation id", "start timestamp [ns]",
                                          "end timestamp [ns]", "duration [ms]", "fixation x [px]", "fixation y [px]",
                                          "azimuth [deg]", "elevation [deg]"], fx_rows)
    return dict(folder=folder, mask=mask, image01=image01, viewer=viewer, layout=layout, geometry=geometry,
                truth=truth, sim=sim)


def test_load_recording(export):
    rec = load_recording(export["folder"])
    assert len(rec.gaze_t_ns) == len(export["truth"]) and rec.video is not None
    assert rec.worn.sum() < len(rec.worn)  # some worn=False samples
    assert rec.in_blink.any() and len(rec.fixations) == len(export["sim"].fixations)


def test_bad_exports_say_what_is_wrong(tmp_path):
    with pytest.raises(RecordingFormatError, match="gaze.csv is missing"):
        load_recording(tmp_path)
    (tmp_path / "gaze.csv").write_text("timestamp [ns],x\n1,2\n")
    with pytest.raises(RecordingFormatError, match="no column 'gaze x \\[px\\]'"):
        load_recording(tmp_path)
    with pytest.raises(RecordingFormatError, match="not a folder"):
        load_recording(tmp_path / "nope")


def test_replay_maps_gaze_to_image_pixels(export):
    rec = load_recording(export["folder"])
    mapper = GazeMapper(export["layout"], export["viewer"], max_age_s=0.5)
    samples = replay(rec, mapper)
    assert len(samples) == len(export["truth"])
    errs = []
    for s, (x, y, worn, blink) in zip(samples, export["truth"]):
        assert s.worn == worn and s.blink == blink
        if s.on_image:
            errs.append(np.hypot(s.x - x, s.y - y))
    assert len(errs) > 0.9 * len(samples)
    # mp4 compression and corner detection: sub-2-pixel in the image at zoom 2 (screen error / 2)
    assert np.median(errs) < 1.0 and np.percentile(errs, 95) < 2.0, (np.median(errs), np.max(errs))
    fx = recorded_fixations(rec, GazeMapper(export["layout"], export["viewer"]))
    assert len(fx) == len(export["sim"].fixations)
    for f, t in zip(fx, export["sim"].fixations):
        assert np.hypot(f.x - t.x, f.y - t.y) < 2.0


def test_replay_gives_the_same_prompt_every_time(export, segmenter):
    emb = segmenter.embed(export["image01"])
    results = []
    for _ in range(2):
        rec = load_recording(export["folder"])
        samples = replay(rec, GazeMapper(export["layout"], export["viewer"]))
        fx = detect_fixations(samples, export["geometry"], FixationConfig())
        prop = gaze_prompt(segmenter, emb, export["mask"].shape, fx, export["geometry"])
        results.append((prop.prompt.box, tuple(prop.prompt.points), prop.segmentation.mask.copy()))
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    assert np.array_equal(results[0][2], results[1][2])
    m = results[0][2]
    dice = 2 * (m & export["mask"]).sum() / (m.sum() + export["mask"].sum())
    assert dice > 0.85, dice


def test_mouse_as_gaze_rests_become_fixations():
    geometry = ViewingGeometry(600, 0.27, 2.0)
    mouse = MouseGaze(rate_hz=60)
    samples = []
    mouse.move(50, 60, 0.0)
    samples += mouse.samples(0.5)  # rest 0.5 s
    mouse.move(120, 90, 0.5)  # jump
    samples += mouse.samples(0.9)  # rest 0.4 s
    mouse.move(None, None, 0.9)  # left the image
    samples += mouse.samples(1.2)
    fx = detect_fixations(samples, geometry, FixationConfig())
    assert [(round(f.x), round(f.y)) for f in fx] == [(50, 60), (120, 90)]
    assert abs(fx[0].duration - 0.5) < 0.05 and not samples[-1].on_image
