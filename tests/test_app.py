"""The workstation driven headless by streamlit.testing.v1.AppTest, with the real LiteMedSAM model.

AppTest cannot draw on the canvas, so prompts go through the typed-coordinates field that sits next
to it (the same code path: app/prompts.py -> app/actions.py). Exports are re-read with nibabel,
Pillow and pydicom.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app" / "main.py")
TIMEOUT = 300  # the first prompt loads the model and encodes a slice on a busy 2-core machine

# A box around the demo's left lateral ventricle/basal ganglia region (slice 20, 181x217 px).
DEMO_BOX = "60 80 120 140"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINSEG_WORKLIST", str(tmp_path / "worklist.db"))  # the worklist tab's database
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def ws_of(at):
    return at.session_state["ws"]


def run(target):
    """Run the script (after a widget interaction, `target` is the widget) and fail on any exception."""
    at = target.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_demo(at):
    run(at.button(key="open_demo").click())
    ws = ws_of(at)
    assert ws.study is not None and ws.study.kind == "demo"
    return ws


def set_tool(at, tool: str):
    run(at.radio(key="tool").set_value(tool))


def typed(at, text: str):
    at.text_input(key="typed_coords").set_value(text)
    return run(at.button(key="FormSubmitter:typed_prompt-Apply").click())


def successes(at) -> list[str]:
    return [s.value for s in at.success]


def errors(at) -> list[str]:
    return [e.value for e in at.error]


# -- study -------------------------------------------------------------------------------------
def test_start_screen_and_demo(app):
    assert any("Open the demo study" in i.value for i in app.info)
    ws = open_demo(app)
    assert ws.study.volume.shape == (40, 217, 181)
    assert ws.slice_index == 20
    assert any("Colin27 demo" in c.value and "slice 21/40" in c.value for c in app.caption)
    # navigation: slider, next button, window preset
    run(app.slider(key="slice").set_value(5))
    assert ws_of(app).slice_index == 5
    run(app.button(key="next_slice").click())
    assert ws_of(app).slice_index == 6
    run(app.selectbox(key="window").set_value("full"))
    assert ws_of(app).window == "full"
    assert [m.value for m in app.metric][:2] == ["MR", "181×217×40"]


def test_make_run_starts_on_the_demo_case(tmp_path, monkeypatch):
    # `make run` passes `-- --demo`: the first screen already shows the bundled study, once per session
    monkeypatch.setenv("CLINSEG_WORKLIST", str(tmp_path / "worklist.db"))
    monkeypatch.setattr("sys.argv", ["app/main.py", "--demo"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert ws_of(at).study is not None and ws_of(at).study.volume.shape == (40, 217, 181)
    assert not any("Open the demo study" in i.value for i in at.info)


def test_bad_path_and_upload_give_readable_errors(app, tmp_path):
    app.text_input(key="path").set_value(str(tmp_path / "no_such_study.nii.gz"))
    run(app.button(key="FormSubmitter:open_path_form-Open path").click())
    assert any("Cannot open the study" in e and "no such file" in e for e in errors(app)), errors(app)
    assert ws_of(app).study is None
    # a corrupt upload: NIfTI name, garbage bytes
    app.file_uploader(key="upload").set_value(("scan.nii.gz", b"this is not an image" * 10, "application/gzip"))
    run(app)
    run(app.button(key="open_upload").click())
    msgs = errors(app)
    assert any("Cannot open the uploaded study" in e and "scan.nii.gz" in e for e in msgs), msgs
    assert ws_of(app).study is None


def test_upload_opens_a_png(app):
    from io import BytesIO

    from PIL import Image

    img = np.zeros((40, 60), np.uint8)
    img[10:30, 20:45] = 200
    buf = BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    app.file_uploader(key="upload").set_value(("cells.png", buf.getvalue(), "image/png"))
    run(app)
    run(app.button(key="open_upload").click())
    ws = ws_of(app)
    assert ws.study is not None and ws.study.volume.shape == (1, 40, 60) and ws.study.kind == "upload"


# -- segmenting ----------------------------------------------------------------------------------
def test_box_undo_redo_accept_and_export_round_trip(app, tmp_path):
    import nibabel as nib
    from PIL import Image

    ws = open_demo(app)
    typed(app, DEMO_BOX)
    assert not errors(app), errors(app)
    ws = ws_of(app)
    assert len(ws.objects) == 1
    obj = ws.objects[0]
    mask = obj.mask(20)
    assert mask is not None and mask.sum() > 200
    ys, xs = np.nonzero(mask)
    assert xs.min() >= 55 and xs.max() <= 125 and ys.min() >= 75 and ys.max() <= 145  # inside the box (+ margin)
    assert any("Mask updated" in s for s in successes(app))
    # the engine running the model is stated (the tests' empty export folder: PyTorch, and why)
    assert any(c.value.startswith("Model runtime:") and "export-onnx" in c.value for c in app.caption)
    area = [c.value for c in app.caption if c.value.startswith("Area on slice 20")]
    assert area and f"{mask.sum():.1f} mm²" in area[0]  # 1 mm pixels: area in mm² = pixel count

    # undo removes the mask (and the object), redo brings it back
    run(app.button(key="undo").click())
    assert ws_of(app).objects == ()
    run(app.button(key="redo").click())
    assert np.array_equal(ws_of(app).objects[0].mask(20), mask)

    # a second object, then reject it: rejected objects are not exported
    app.text_input(key="new_label").set_value("second")
    run(app.button(key="new_object").click())
    typed(app, "100 60 160 120")
    ws = ws_of(app)
    assert [o.label for o in ws.objects] == ["object 1", "second"]
    run(app.button(key=f"reject-{ws.objects[1].oid}").click())
    run(app.button(key=f"accept-{ws.objects[0].oid}").click())
    assert [o.status.value for o in ws_of(app).objects] == ["accepted", "rejected"]

    app.text_input(key="export_folder").set_value(str(tmp_path / "out"))
    run(app.button(key="export").click())
    assert not errors(app), errors(app)
    assert sum("written and verified" in s for s in successes(app)) == 2
    nii = tmp_path / "out" / "clinseg_labels.nii.gz"
    img = nib.load(str(nii))
    labels = np.transpose(np.asarray(img.dataobj), (2, 1, 0))
    assert labels.shape == (40, 217, 181)
    assert np.allclose(img.affine, ws.study.volume.ras_affine)
    assert np.array_equal(labels[20] == 1, mask) and labels.max() == 1 and labels.sum() == mask.sum()
    png = np.asarray(Image.open(tmp_path / "out" / "clinseg_slice020.png"))
    assert np.array_equal(png == 255, mask)


def test_click_scribble_and_uncertainty(app):
    open_demo(app)
    # one positive click near the left putamen: the click decoder reads it (here the brain around it,
    # drawn from the box around that reading: prompting.clicks.read_answer)
    set_tool(app, "Click +")
    typed(app, "75 110")
    assert not errors(app), errors(app)
    ws = ws_of(app)
    r = ws.objects[0].result(20)
    assert r.area_px > 20 and r.mask[110, 75] and any("read by the click decoder" in n for n in r.prompt.notes)
    # a negative click on the mask edge corrects the same object
    set_tool(app, "Click −")
    ys, xs = np.nonzero(r.mask)
    typed(app, f"{xs.max()} {ys[np.argmax(xs)]}")
    r2 = ws_of(app).objects[0].result(20)
    assert len(r2.prompt.points) == 2 and not r2.prompt.points[1].positive
    # scribble on a new object with the uncertainty map on
    run(app.toggle(key="show_uncertainty").set_value(True))
    run(app.button(key="new_object").click())
    set_tool(app, "Scribble +")
    typed(app, "130 95, 135 105, 138 115")
    assert not errors(app), errors(app)
    ws = ws_of(app)
    assert len(ws.objects) == 2
    r3 = ws.objects[1].result(20)
    assert r3.area_px > 20 and len(r3.strokes) == 1
    assert r3.uncertainty_map is not None and r3.uncertainty_map.shape == (217, 181)
    assert 0.0 <= r3.uncertainty <= 1.0
    assert any("uncertainty" in c.value for c in app.caption)
    # "Sharpen": the zoomed re-encode, stored or declined with the reason; the map stays on the slice grid
    run(app.button(key=f"sharpen-{ws.objects[1].oid}").click())
    assert not errors(app), errors(app)
    assert any(m.value.startswith(("Sharpened", "Kept the current mask")) for m in app.info), [m.value for m in app.info]
    r4 = ws_of(app).objects[1].result(20)
    assert r4.uncertainty_map is not None and r4.uncertainty_map.shape == (217, 181) and r4.area_px > 20


def test_typed_prompt_errors_are_readable(app):
    open_demo(app)
    typed(app, "10 20 30")
    assert any("a box needs 4 numbers" in e for e in errors(app)), errors(app)
    typed(app, "500 500 600 600")
    assert any("lies outside" in e for e in errors(app)), errors(app)
    assert ws_of(app).objects == ()


def test_metadata_flags_an_implausible_size(app):
    open_demo(app)
    tab = app.tabs[1]
    assert tab.label == "Clinical info"
    tab.number_input[0].set_value(5.0)  # expected size: 5 mm
    run(app.button(key="FormSubmitter:metadata_form-Save clinical info").click())
    assert ws_of(app).metadata["expected_size_mm"] == 5.0
    typed(app, DEMO_BOX)
    r = ws_of(app).objects[0].result(20)
    assert any(f.startswith("size:") for f in r.flags), r.flags
    assert any("Check: size" in w.value for w in app.warning)


# -- background work ---------------------------------------------------------------------------------
def _small_study(tmp_path) -> Path:
    """5 slices of a bright ellipsoid: quick to encode, a known 3-D answer."""
    import SimpleITK as sitk

    zz, yy, xx = np.mgrid[:5, :64, :64]
    blob = ((xx - 32) / 14.0) ** 2 + ((yy - 30) / 10.0) ** 2 + ((zz - 2) / 2.2) ** 2 < 1.0
    vox = (20 + 180 * blob).astype(np.float32)
    img = sitk.GetImageFromArray(vox)
    img.SetSpacing((0.5, 0.5, 2.0))
    path = tmp_path / "blob.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def test_propagation_runs_in_the_background(app, tmp_path):
    import time

    app.text_input(key="path").set_value(str(_small_study(tmp_path)))
    run(app.button(key="FormSubmitter:open_path_form-Open path").click())
    ws = ws_of(app)
    assert ws.study.volume.shape == (5, 64, 64) and ws.slice_index == 2
    typed(app, "16 18 48 42")
    assert ws_of(app).objects[0].mask(2).sum() > 200
    # encoding the volume runs in the background (models.precompute) and reports when done
    run(app.button(key="embed_volume").click())
    assert ws_of(app).jobs[-1].kind == "embed"
    _wait_jobs(app)
    assert any("All 5 slices encoded" in s for s in successes(app)), successes(app)
    run(app.button(key="propagate").click())
    job = ws_of(app).jobs[-1]
    assert job.kind == "propagate"
    # the page answers while the job runs: a rerun returns at once with a progress bar
    t0 = time.monotonic()
    while not job.finished and time.monotonic() - t0 < 240:
        run(app)
        time.sleep(1.0)
    assert job.finished and job.error is None, job.error
    run(app)  # applies the finished job's result
    obj = ws_of(app).objects[0]
    assert obj.volume_mask is not None and obj.volume_mask.shape == (5, 64, 64)
    assert obj.volume_mask[1].any() and obj.volume_mask[3].any()  # reached the neighbouring slices
    assert any("3-D mask" in s for s in successes(app))
    assert obj.volume_ml(ws.study.volume) > obj.area_mm2(2, ws.study.volume) * 2.0 / 1000.0


# -- DICOM: SEG and RTSTRUCT exports --------------------------------------------------------------
def test_dicom_study_exports_seg_and_rtstruct(app, tmp_path):
    import pydicom

    from integrations.dicom_seg import read_seg
    from integrations.rtstruct import read_rtstruct
    from tests.dicom_factory import write_series

    zz, yy, xx = np.mgrid[:4, :48, :64]
    body = ((xx - 30) / 16.0) ** 2 + ((yy - 24) / 12.0) ** 2 < 1.0
    for f in write_series(tmp_path / "ct", (1024 + np.where(body, 300, -900)).astype(np.int16)):
        ds = pydicom.dcmread(f)  # the patient/study module attributes a DICOM-SEG copies from its source
        for kw, v in (("PatientBirthDate", ""), ("PatientSex", "O"), ("StudyDate", "20260101"), ("StudyTime", "120000"),
                      ("StudyID", "1"), ("AccessionNumber", ""), ("ReferringPhysicianName", ""), ("Manufacturer", "synthetic")):
            if kw not in ds:
                setattr(ds, kw, v)
        ds.save_as(f)
    app.text_input(key="path").set_value(str(tmp_path / "ct"))
    run(app.button(key="FormSubmitter:open_path_form-Open path").click())
    ws = ws_of(app)
    assert ws.study is not None and ws.study.volume.dicom is not None, errors(app)
    assert not any("PHANTOM" in c.value or "Phantom" in c.value for c in app.caption)  # no patient data shown
    typed(app, "12 10 48 38")
    mask = ws_of(app).objects[0].mask(ws.slice_index)
    assert mask is not None and mask.sum() > 100
    app.text_input(key="export_folder").set_value(str(tmp_path / "out"))
    run(app.button(key="export").click())
    assert not errors(app), errors(app)
    assert sum("written and verified" in s for s in successes(app)) == 4
    vol = ws.study.volume
    seg_ds = pydicom.dcmread(tmp_path / "out" / "clinseg_seg.dcm")
    assert seg_ds.Modality == "SEG"
    back = read_seg(tmp_path / "out" / "clinseg_seg.dcm", vol).masks["object 1"]
    assert np.array_equal(back[ws.slice_index], mask)
    rt_ds = pydicom.dcmread(tmp_path / "out" / "clinseg_rtstruct.dcm")
    assert rt_ds.Modality == "RTSTRUCT" and rt_ds.StructureSetROISequence[0].ROIName == "object 1"
    rt = read_rtstruct(tmp_path / "out" / "clinseg_rtstruct.dcm", vol).masks["object 1"][ws.slice_index]
    assert 2 * (rt & mask).sum() / (rt.sum() + mask.sum()) > 0.9


# -- text -----------------------------------------------------------------------------------------
def _wait_jobs(at, timeout: float = 300.0):
    import time

    t0 = time.monotonic()
    while any(j.running for j in ws_of(at).jobs) and time.monotonic() - t0 < timeout:
        time.sleep(1.0)
        run(at)
    assert not any(j.running for j in ws_of(at).jobs), "background job did not finish"
    return run(at)


def test_text_query_segments_and_says_what_it_did(app):
    open_demo(app)
    app.text_input(key="text_query").set_value("left putamen")
    run(app.button(key="FormSubmitter:text_query_form-Find and segment").click())
    assert ws_of(app).jobs and ws_of(app).jobs[-1].kind == "text"
    _wait_jobs(app)
    ws = ws_of(app)
    assert [o.label for o in ws.objects] == ["Putamen_L"], [s.value for s in app.warning]
    r = ws.objects[0].result(ws.slice_index)
    assert r.area_px > 50 and r.prompt.box is not None
    # AAL truth on the same slice: the mask overlaps the real left putamen
    from integrations.loaders import load_volume

    aal = load_volume(ROOT / "app" / "demo" / "colin27_demo_aal.nii.gz").voxels[ws.slice_index]
    names = (ROOT / "app" / "demo" / "colin27_demo_aal.txt").read_text().splitlines()
    code = next(int(line.split()[0]) for line in names if line.split()[1] == "Putamen_L")
    truth = aal == code
    assert 2 * (truth & r.mask).sum() / (truth.sum() + r.mask.sum()) > 0.5
    assert any("Putamen_L" in s.value and "template registration" in s.value for s in app.success)
    # an unknown word: no mask, a readable explanation
    app.text_input(key="text_query").set_value("flibbertigibbet")
    run(app.button(key="FormSubmitter:text_query_form-Find and segment").click())
    _wait_jobs(app)
    assert len(ws_of(app).objects) == 1
    assert any("Nothing found for 'flibbertigibbet'" in w.value for w in app.warning)
    # an empty object made with 'New' is filled (and named) by the next query, not left behind
    run(app.button(key="new_object").click())
    app.text_input(key="text_query").set_value("right putamen")
    run(app.button(key="FormSubmitter:text_query_form-Find and segment").click())
    _wait_jobs(app)
    objs = ws_of(app).objects
    assert [o.label for o in objs] == ["Putamen_L", "Putamen_R"] and objs[1].result(ws.slice_index).area_px > 50
    xs_l = np.nonzero(objs[0].result(ws.slice_index).mask)[1].mean()
    xs_r = np.nonzero(objs[1].result(ws.slice_index).mask)[1].mean()
    assert abs(xs_l - xs_r) > 30  # the two sides are different places


# -- gaze ---------------------------------------------------------------------------------------------
def _pupil_cloud_export(folder: Path, layout, viewer, looks: list[tuple[float, float, float, float]]) -> Path:
    """A Pupil Cloud style export of someone reading this screen: scene video showing the marker board
    in perspective (800x600), world timestamps, and 200 Hz gaze in scene pixels with small noise.
    looks: (t_start s, t_end s, image x, image y) fixations; saccades/gaps between them."""
    import cv2

    from integrations.screen_mapping import render_marker_board

    folder.mkdir(parents=True)
    board = render_marker_board(layout)
    bh, bw = board.shape
    src = np.float32([[0, 0], [bw, 0], [bw, bh], [0, bh]])
    dst = np.float32([[120, 70], [700, 95], [690, 560], [110, 530]])  # the screen seen a little from the side
    H = cv2.getPerspectiveTransform(src, dst)
    frame = cv2.warpPerspective(board, H, (800, 600), borderValue=90)
    t0 = 1_700_000_000_000_000_000
    writer = cv2.VideoWriter(str(folder / "scene.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (800, 600))
    frames = 12
    for _ in range(frames):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    (folder / "world_timestamps.csv").write_text("timestamp [ns]\n" + "".join(f"{t0 + k * 100_000_000}\n" for k in range(frames)))
    rng = np.random.default_rng(0)
    rows = ["section id,recording id,timestamp [ns],gaze x [px],gaze y [px],worn,fixation id,blink id"]
    for k in range(int(1.1 * 200)):
        t = k / 200.0
        look = next((lk for lk in looks if lk[0] <= t <= lk[1]), None)
        if look is None:  # between fixations: a fast sweep across the screen
            sx, sy = bw * (0.1 + 0.8 * ((k * 7) % 50) / 50.0), bh * 0.5
        else:
            sx, sy = viewer.image_to_screen(look[2], look[3])
        p = H @ np.array([sx, sy, 1.0])
        x, y = p[0] / p[2] + rng.normal(0, 0.5), p[1] / p[2] + rng.normal(0, 0.5)
        rows.append(f"s,r,{t0 + int(t * 1e9)},{x:.2f},{y:.2f},1,,")
    (folder / "gaze.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_gaze_replay_of_a_recording(app, tmp_path):
    from app.views.gaze_panel import current_geometry

    ws = open_demo(app)
    layout, viewer, _ = current_geometry(ws)
    # two dwells on the left putamen (slice 20: around x 67, y 127)
    rec = _pupil_cloud_export(tmp_path / "rec", layout, viewer, [(0.1, 0.45, 66, 124), (0.6, 0.95, 69, 130)])
    run(app.radio(key="gaze_mode").set_value("Replay a recording"))
    app.text_input(key="gaze_recording").set_value(str(rec))
    run(app.button(key="FormSubmitter:gaze_replay_form-Replay").click())
    assert not errors(app), errors(app)
    _wait_jobs(app)
    assert not errors(app), errors(app)
    ws = ws_of(app)
    assert [o.label for o in ws.objects] == ["gaze"], [m.value for m in app.warning]
    r = ws.objects[0].result(20)
    assert r.area_px > 30 and r.mask[127, 67]
    assert any("gaze:" in n for n in r.notes) and any("replayed recording" in n for n in r.notes)
    # a broken recording folder: readable error at once
    app.text_input(key="gaze_recording").set_value(str(tmp_path))
    run(app.button(key="FormSubmitter:gaze_replay_form-Replay").click())
    assert any("Cannot replay the recording" in e and "gaze.csv" in e for e in errors(app)), errors(app)


def _scene_camera(layout):
    """The marker board as a head-worn scene camera sees it (800x600, a little from the side) and the
    board -> scene homography (to aim the fake device's gaze)."""
    import cv2

    from integrations.screen_mapping import render_marker_board

    board = render_marker_board(layout)
    bh, bw = board.shape
    src = np.float32([[0, 0], [bw, 0], [bw, bh], [0, bh]])
    dst = np.float32([[120, 70], [700, 95], [690, 560], [110, 530]])
    H = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(board, H, (800, 600), borderValue=90), H


def _wait_page(at, pred, timeout: float, what: str):
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        run(at)
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {[m.value for m in at.metric]} {[w.value for w in at.warning]}")


def test_live_tracker_drives_the_mask(app):
    """Real pupil_labs client (integrations.pupil_device) against tests/fake_neon.py on 127.0.0.1:
    connect, status, gaze -> fixations -> mask, reject a dwell, the device vanishes -> message.

    The Realtime API streams the scene camera as RTSP video, which the fake cannot serve: a thread
    here plays the scene camera, handing the link real rendered frames of the marker board (the
    same frames the worker would decode), 5 per second."""
    import threading
    import time

    from app.views.gaze_panel import LIVE_KEY, current_geometry
    from tests.fake_neon import FakeNeon

    ws = open_demo(app)
    run(app.radio(key="gaze_mode").set_value("Live tracker"))
    layout, viewer, _ = current_geometry(ws)
    frame, H = _scene_camera(layout)
    rng = np.random.default_rng(1)
    look = {"at": (140.0, 60.0)}  # first a wrong place (right frontal), then the left putamen

    def gaze(t):
        sx, sy = viewer.image_to_screen(*look["at"])
        p = H @ np.array([sx, sy, 1.0])
        return p[0] / p[2] + rng.normal(0, 0.3), p[1] / p[2] + rng.normal(0, 0.3), True

    # mDNS discovery on this network: nothing announces itself here, and the page says so
    run(app.button(key="gaze_discover").click())
    assert any("No Companion device answered" in c.value for c in app.caption), errors(app)
    stop = threading.Event()
    with FakeNeon(gaze=gaze, battery=64, eye_events=False) as dev:
        app.text_input(key="gaze_address").set_value("127.0.0.1")
        app.number_input(key="gaze_port").set_value(dev.port)
        run(app.button(key="gaze_connect").click())
        assert not errors(app), errors(app)
        link = app.session_state[LIVE_KEY]

        def camera():
            while not stop.is_set():
                link.feed_frame(frame, time.time())
                time.sleep(0.2)

        cam = threading.Thread(target=camera, daemon=True)
        cam.start()
        try:
            def mask_at(xy):
                """A mask centred where the user looks (a dwell on one spot covers a structure's core)."""
                o = ws_of(app).active_object
                r = o.result(20) if o is not None else None
                if r is None or not r.mask.any():
                    return False
                ys, xs = np.nonzero(r.mask)
                return bool(np.hypot(xs.mean() - xy[0], ys.mean() - xy[1]) < 10)

            _wait_page(app, lambda: mask_at(look["at"]), 90, "a mask where the user looks")
            metrics = {m.label: m.value for m in app.metric}
            assert metrics["Connection"] == "connected" and metrics["Battery"] == "64 %" and metrics["Worn"] == "yes"
            assert [o.label for o in ws_of(app).objects] == ["gaze"]
            assert link.counts.frames > 0 and link.counts.on_image > 0
            assert any(c.value.startswith("Gaze on the image:") for c in app.caption)
            # "not this": the dwell becomes a negative point; looking at the putamen then segments it
            run(app.button(key="gaze_live_reject").click())
            look["at"] = (67.0, 127.0)
            _wait_page(app, lambda: mask_at(look["at"]), 90, "the mask to follow the gaze")
            r = ws_of(app).objects[0].result(20)
            neg = [p for p in r.prompt.points if not p.positive]
            assert neg and min(np.hypot(p.x - 140, p.y - 60) for p in neg) < 10, r.prompt.points
            assert not r.mask[60, 140]
            # the phone leaves the network: a readable message, and the page keeps working
            dev.vanish()
            _wait_page(app, lambda: any("not answering" in w.value for w in app.warning), 30, "the lost-device message")
            assert not errors(app), errors(app)
            kept = ws_of(app).objects[0].result(20).mask.copy()
            run(app.radio(key="gaze_mode").set_value("Off"))
            run(app.button(key="new_object").click())
            typed(app, DEMO_BOX)
            assert len(ws_of(app).objects) == 2 and np.array_equal(ws_of(app).objects[0].result(20).mask, kept)
            run(app.radio(key="gaze_mode").set_value("Live tracker"))
            run(app.button(key="gaze_stop").click())
            assert LIVE_KEY not in app.session_state and not link.worker.running
            assert link.counts.updates >= 2  # masks at the wrong place, then at the putamen...
            for _ in range(3):  # ...are one undo step: box, new object, then the whole look
                run(app.button(key="undo").click())
            assert ws_of(app).objects == ()
        finally:
            stop.set()
            link.stop()


def test_live_tracker_uses_the_devices_own_fixations(app):
    """Companion >= 2.9 streams its own fixations: the app maps and uses those (not the samples)."""
    import threading
    import time

    from app.views.gaze_panel import LIVE_KEY, current_geometry
    from tests.fake_neon import FakeNeon

    ws = open_demo(app)
    run(app.radio(key="gaze_mode").set_value("Live tracker"))
    layout, viewer, _ = current_geometry(ws)
    frame, H = _scene_camera(layout)

    def scene_of(ix, iy):
        sx, sy = viewer.image_to_screen(ix, iy)
        p = H @ np.array([sx, sy, 1.0])
        return float(p[0] / p[2]), float(p[1] / p[2])

    stop = threading.Event()
    with FakeNeon(gaze=lambda t: (*scene_of(140, 60), True), eye_events=True) as dev:
        app.text_input(key="gaze_address").set_value("127.0.0.1")
        app.number_input(key="gaze_port").set_value(dev.port)
        run(app.button(key="gaze_connect").click())
        link = app.session_state[LIVE_KEY]

        def camera():
            while not stop.is_set():
                link.feed_frame(frame, time.time())
                time.sleep(0.2)

        threading.Thread(target=camera, daemon=True).start()
        try:
            _wait_page(app, lambda: link.counts.on_image > 0, 60, "gaze on the image")
            assert ws_of(app).objects == ()  # samples alone do not segment when the device gives fixations
            now = time.time()
            dev.send_fixation(now - 0.45, now - 0.2, *scene_of(66, 125))
            dev.send_fixation(now - 0.15, now, *scene_of(68, 129))

            def segmented():
                o = ws_of(app).active_object
                r = o.result(20) if o is not None else None
                return r is not None and r.mask.any()

            _wait_page(app, segmented, 60, "a mask from the device's fixations")
            r = ws_of(app).objects[0].result(20)
            ys, xs = np.nonzero(r.mask)
            assert np.hypot(xs.mean() - 67, ys.mean() - 127) < 12
            assert any(c.value.startswith("Gaze on the image:") and "fixations from the device" in c.value for c in app.caption)
            run(app.button(key="gaze_stop").click())
        finally:
            stop.set()
            link.stop()


def test_mouse_as_gaze_clicks_become_fixations(segmenter):
    """Each click is a 300 ms dwell: clicks -> MouseGaze samples -> fixations -> a gaze box proposal."""
    from app.views.gaze_panel import CLICK_DWELL_S, mouse_click
    from app.views.study import DEMO, load_study
    from app.pipeline import SliceSession
    from app.state import Workstation, open_study
    from integrations.gaze_recording import MouseGaze
    from prompting.gaze import LiveGazeSession, ViewingGeometry

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    image01 = SliceSession.open(ws.study.volume, ws.slice_index).image01
    cur = {"mouse": MouseGaze(), "live": LiveGazeSession(segmenter, image01, ViewingGeometry(zoom=2.76)), "t": 0.0}
    updates = [mouse_click(ws, cur, xy) for xy in ((66, 124), (69, 130))]
    last = [u for u in updates if u is not None][-1]
    # two clicks 0.5 deg apart, 0.1 s between: one fixation (I-VT merges them) holding both dwells
    assert sum(f.duration for f in last.fixations) >= 2 * CLICK_DWELL_S - 0.05
    assert last.cluster.dwell_s >= 2 * CLICK_DWELL_S - 0.05
    b = last.prompt.box
    assert b.x0 <= 66 <= b.x1 and b.y0 <= 130 <= b.y1 and last.segmentation.mask.any()


# -- mixed prompts: fusion ----------------------------------------------------------------------------
def test_inputs_of_one_object_merge_by_kind():
    from app.combine import input_kind, is_mixed, merged_inputs, raw_click
    from prompting.promptset import PromptSet, PromptSource

    box = PromptSet.from_box(1, 2, 30, 40)
    text = PromptSet.from_box(5, 5, 20, 20, source=PromptSource.TEXT)
    c1, c2 = raw_click(10, 10, True), raw_click(12, 12, False)
    assert [input_kind(p) for p in (box, text, c1)] == ["box", "text", "click"]
    assert merged_inputs((c1,), c2) == (c1, c2) and not is_mixed((c1, c2))  # clicks add up
    redrawn = PromptSet.from_box(2, 2, 31, 41)
    assert merged_inputs((box, c1), redrawn) == (c1, redrawn)  # a redrawn box replaces the old one
    assert is_mixed(merged_inputs((text,), c1))


def test_negative_click_at_the_edge_moves_the_edge(app):
    """A negative click 2 px inside the mask's edge (within a hand's aim of it) is honoured there: the
    box stays, the edge moves in past the click, the rest of the mask stays."""
    open_demo(app)
    typed(app, DEMO_BOX)
    box_only = ws_of(app).objects[0].result(20)
    ys, xs = np.nonzero(box_only.mask)
    i = int(np.argmax(xs))
    nx, ny = int(xs[i]) - 2, int(ys[i])
    set_tool(app, "Click −")
    typed(app, f"{nx} {ny}")
    assert not errors(app), errors(app)
    r = ws_of(app).objects[0].result(20)
    assert not r.mask[ny, nx] and 0 < box_only.area_px - r.area_px <= 0.05 * box_only.area_px
    assert not any("still inside the mask" in n for n in r.fusion), r.fusion


def test_box_and_negative_click_are_fused(app):
    ws = open_demo(app)
    typed(app, DEMO_BOX)
    box_only = ws_of(app).objects[0].result(20)
    assert box_only.fusion == ()  # one kind of input: no fusion
    ys, xs = np.nonzero(box_only.mask)
    i = int(np.argmax(xs))
    nx, ny = int(xs[i]) - 8, int(ys[i])  # inside the mask's right edge, beyond an edge correction: "not this part"
    assert box_only.mask[ny, nx]
    set_tool(app, "Click −")
    typed(app, f"{nx} {ny}")
    assert not errors(app), errors(app)
    r = ws_of(app).objects[0].result(20)
    # the fused prompt was decoded: the drawn box kept, the negative click inside it kept
    assert r.prompt.box is not None and (r.prompt.box.x0, r.prompt.box.y0, r.prompt.box.x1, r.prompt.box.y1) == (60, 80, 120, 140)
    assert [(p.x, p.y, p.positive) for p in r.prompt.points] == [(nx, ny, False)]
    assert r.fusion and r.fusion[0].startswith("box + click: kept the drawn box (60, 80, 120, 140), 0 positive / 1 negative")
    # LiteMedSAM is box-trained: the fused box is decoded alone (feeding it the click lowers Dice,
    # app/combine.py), so the mask is the box's, and the notes say why and what to do instead
    assert np.array_equal(r.mask, box_only.mask)
    assert any("decoded from the fused box alone" in n for n in r.fusion), r.fusion
    assert any(f"negative click point at ({nx}, {ny}) is still inside the mask" in n and "Scribble −" in n
               for n in r.fusion), r.fusion
    # the notes are on the page, beside the object
    assert any("Prompts fused" in i.value and "still inside the mask" in i.value for i in app.info), [i.value for i in app.info]
    # ...and the advice works: a background stroke over that part cuts it (fused with the box and click)
    set_tool(app, "Scribble −")
    typed(app, f"{nx} {ny - 6}, {nx} {ny}, {nx} {ny + 6}")
    r_cut = ws_of(app).objects[0].result(20)
    assert not r_cut.mask[ny, nx] and r_cut.area_px < box_only.area_px
    assert r_cut.fusion[0].startswith("box + click + scribble: kept the drawn box"), r_cut.fusion
    # a positive click far outside the box: fusion rejects it and says why (the box is not stretched)
    set_tool(app, "Click +")
    typed(app, "170 20")
    r2 = ws_of(app).objects[0].result(20)
    assert any("rejected the click point at (170, 20)" in n for n in r2.fusion), r2.fusion
    assert r2.prompt.box.x1 == r_cut.prompt.box.x1 <= 120 and not r2.mask[20, 170]
    assert any("rejected the click point" in i.value for i in app.info)


def test_text_box_and_gaze_fuse_with_clicks(segmenter):
    """The other mixes, straight through app.actions: a text query's box + a click inside it; a gaze
    proposal + a click just outside its box (fusion widens the box and says so)."""
    from dataclasses import replace as dc_replace

    from app import actions
    from app.combine import input_kind
    from app.prompts import DrawnPrompt
    from app.state import Workstation, add_object, open_study
    from app.views.study import DEMO, load_study
    from prompting.promptset import Point, PromptSet, PromptSource

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    text_box = PromptSet.from_box(58, 108, 80, 142, source=PromptSource.TEXT, confidence=0.8, label="Putamen_L")
    first = actions.run_prompt(ws, segmenter, text_box, label="Putamen_L", new_object=True)
    assert first.fusion == ()
    r = actions.apply_drawn(ws, segmenter, DrawnPrompt("click", True, ((68.0, 126.0),)))
    assert r.prompt.box.source == PromptSource.TEXT and (r.prompt.box.x0, r.prompt.box.x1) == (58, 80)
    assert [(p.x, p.y, p.positive) for p in r.prompt.points] == [(68, 126, True)]
    assert r.fusion[0].startswith("text + click: kept the text box") and r.area_px > 0

    # gaze first (as the gaze panel stores it), then a click a little outside the gaze box
    add_object(ws, "gaze")
    session = actions.slice_session(ws)
    emb = segmenter.embed(session.image01)
    gaze = PromptSet.from_box(60, 112, 76, 138, source=PromptSource.GAZE, confidence=0.6).with_points(
        Point(67, 126, True, PromptSource.GAZE))
    actions.apply_gaze(ws, segmenter, gaze, segmenter.decode(emb, gaze), label="gaze")
    assert ws.active_object.result(ws.slice_index).fusion == ()
    r = actions.apply_drawn(ws, segmenter, DrawnPrompt("click", True, ((80.0, 126.0),)))
    assert any("widened the gaze box to take in the click point at (80, 126)" in n for n in r.fusion), r.fusion
    assert r.prompt.box.x1 >= 80 and {p.source for p in r.prompt.points} == {PromptSource.GAZE, PromptSource.CLICK}
    # a newer gaze proposal replaces the old one and is fused with the click again
    newer = dc_replace(gaze, box=dc_replace(gaze.box, x0=62.0))
    r2 = actions.apply_gaze(ws, segmenter, newer, segmenter.decode(emb, newer))
    assert [input_kind(p) for p in r2.inputs] == ["click", "gaze"]
    assert r2.fusion and r2.prompt.box.x1 >= 80


def test_a_click_is_decoded_from_its_box_alone_as_benchmarked(segmenter, monkeypatch):
    """A single click through the app's path (app.actions) by box proposals (without a click decoder, as
    for a small structure): the stored prompt keeps the click and the chosen proposal's logits as
    evidence, but LiteMedSAM (box-trained) decodes the box alone, the decode bench/prompts.py measures;
    box + click + previous logits gives another mask."""
    from app import actions
    from app.prompts import DrawnPrompt
    from app.state import Workstation, open_study
    from app.views.study import DEMO, load_study
    from prompting.promptset import PromptSet

    monkeypatch.setattr(segmenter, "click_decoder", None)
    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    r = actions.apply_drawn(ws, segmenter, DrawnPrompt("click", True, ((68.0, 126.0),)))
    assert [(p.x, p.y) for p in r.prompt.points] == [(68, 126)] and r.prompt.mask_input is not None
    emb = segmenter.embed(actions.slice_session(ws).image01)
    b = r.prompt.box
    box_only = segmenter.decode(emb, PromptSet.from_box(b.x0, b.y0, b.x1, b.y1))
    assert r.area_px > 0 and np.array_equal(r.mask, box_only.mask)
    assert r.predicted_iou == pytest.approx(box_only.predicted_iou, abs=1e-6)
    with_evidence = segmenter.decode(emb, r.prompt)  # what the app decoded before: not the same
    assert not np.array_equal(with_evidence.mask, r.mask) or with_evidence.predicted_iou != pytest.approx(r.predicted_iou, abs=1e-6)
    # 3-D propagation starts from the same decode
    seeds = actions.propagation_seeds(ws, segmenter)
    assert list(seeds) == [ws.slice_index] and seeds[ws.slice_index].box == b
    assert seeds[ws.slice_index].points == () and seeds[ws.slice_index].mask_input is None


def test_a_click_the_click_decoder_answers_through_the_app(segmenter):
    """The left putamen clicked (app.actions): the click decoder's reading is the result (no box), a
    second click is read with the first, Sharpen keeps it and says why, and 3-D propagation starts from
    the box around the mask."""
    from app import actions
    from app.prompts import DrawnPrompt
    from app.state import Workstation, open_study
    from app.views.study import DEMO, load_study
    from prompting.promptset import PromptSet

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    r = actions.apply_drawn(ws, segmenter, DrawnPrompt("click", True, ((68.0, 126.0),)))
    assert r.prompt.box is None and any("read by the click decoder" in n for n in r.prompt.notes), r.prompt.notes
    emb = segmenter.embed(actions.slice_session(ws).image01)
    assert np.array_equal(r.mask, segmenter.decode(emb, PromptSet(points=r.prompt.points)).mask) and r.mask[126, 68]
    kept, why = actions.sharpen(ws, segmenter)
    assert kept is None and why.startswith("kept the current mask: the click decoder read"), why
    ys, xs = np.nonzero(r.mask)
    seeds = actions.propagation_seeds(ws, segmenter)
    b = seeds[ws.slice_index].box
    assert (b.x0, b.y0, b.x1, b.y1) == (xs.min(), ys.min(), xs.max(), ys.max())
    r2 = actions.apply_drawn(ws, segmenter, DrawnPrompt("click", False, ((60.0, 140.0),)))
    assert [p.positive for p in r2.prompt.points] == [True, False] and r2.area_px > 0 and not r2.mask[140, 60]


SMALL_RULE = 8_000  # model-frame px: makes the putamen (~1,000 px read) a "small structure" for these tests


def test_a_click_on_a_small_structure_is_previewed_then_answered_by_the_proposals(segmenter):
    """A first click whose reading is under the size rule (app.actions.preview_click): the click
    decoder's reading is shown at once, the box proposals' answer (computed off the script thread in
    the app) replaces it while it is still what the object shows, and never after the user moved on."""
    from app import actions
    from app.prompts import DrawnPrompt
    from app.state import Workstation, open_study, undo
    from app.views.study import DEMO, load_study
    from prompting.clicks import ClickConfig

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    small = ClickConfig(read_min_area=SMALL_RULE)
    click = DrawnPrompt("click", True, ((68.0, 126.0),))
    assert actions.preview_click(ws, segmenter, click) is None  # the default rule answers the putamen outright
    assert actions.preview_click(ws, segmenter, DrawnPrompt("click", False, ((68.0, 126.0),)), small) is None
    preview, refine = actions.preview_click(ws, segmenter, click, small)
    assert preview.prompt.box is None and preview.mask[126, 68] and "preview" in preview.notes[-1]
    assert ws.active_object.result(ws.slice_index) is preview
    assert actions.preview_click(ws, segmenter, click, small) is None  # not a first click any more
    answer = refine()
    assert answer.box is not None and "chosen among proposals" in answer.notes[-1]
    refined = actions.apply_click_refinement(ws, segmenter, preview, ws.slice_index, answer)
    assert refined is not None and ws.active_object.result(ws.slice_index) is refined and refined.mask[126, 68]
    assert refined.inputs == preview.inputs
    undo(ws)  # one step back: the preview
    assert ws.active_object.result(ws.slice_index) is preview
    # the user moved on: another slice on screen, or another result on this one -> nothing changes
    ws.slice_index += 1
    assert actions.apply_click_refinement(ws, segmenter, preview, ws.slice_index - 1, answer) is None
    ws.slice_index -= 1
    actions.apply_drawn(ws, segmenter, DrawnPrompt("click", False, ((60.0, 140.0),)))
    assert actions.apply_click_refinement(ws, segmenter, preview, ws.slice_index, answer) is None


def test_a_previewed_click_is_refined_in_the_background_through_the_app(app, monkeypatch):
    from functools import partial

    from app import actions
    from prompting.clicks import ClickConfig

    monkeypatch.setattr(actions, "preview_click", partial(actions.preview_click, cfg=ClickConfig(read_min_area=SMALL_RULE)))
    open_demo(app)
    set_tool(app, "Click +")
    typed(app, "68 126")
    assert not errors(app), errors(app)
    ws = ws_of(app)
    first = ws.objects[0].result(20)
    assert first.prompt.box is None and first.mask[126, 68]
    assert ws.jobs[-1].kind == "click" and ws.jobs[-1].payload["preview"] is first
    at = _wait_jobs(app)
    r = ws_of(at).objects[0].result(20)
    assert r is not first and r.prompt.box is not None and r.mask[126, 68]
    assert any(m.startswith("Click refined by box proposals") for m in successes(at)), successes(at)


def test_sharpen_replaces_a_small_mask_by_the_zoomed_decode_and_undo_reverts_it(segmenter):
    """The app's "Sharpen" (app.actions.sharpen): the one-shot path's zoomed re-encode for the active
    object's box, stored only when rated clearly better; refused, with the reason, without a
    result or for a box that is already large."""
    from app import actions
    from app.state import Workstation, open_study, undo
    from app.views.study import DEMO, load_study
    from integrations.errors import InvalidPromptError
    from models.zoom import ZOOM_IOU_MARGIN
    from prompting.promptset import PromptSet

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    with pytest.raises(InvalidPromptError, match="nothing to sharpen"):
        actions.sharpen(ws, segmenter)
    first = actions.run_prompt(ws, segmenter, PromptSet.from_box(58, 108, 80, 142), label="Putamen_L", new_object=True)
    r, what = actions.sharpen(ws, segmenter)
    assert r is not None and what.startswith("sharpened"), what
    assert r.predicted_iou >= first.predicted_iou + ZOOM_IOU_MARGIN and r.area_px > 0
    assert "zoomed: re-encoded" in r.notes[-1] and r.prompt.box == first.prompt.box
    ys, xs = np.nonzero(r.mask)  # inside the 2.5x crop around the box
    assert xs.min() >= 58 - 30 and xs.max() <= 80 + 30 and ys.min() >= 108 - 30 and ys.max() <= 142 + 30
    assert r.low_res_logits.shape == (1, 256, 256)  # whole-slice frame, as every stored result's
    assert ws.active_object.result(ws.slice_index) is not None
    undo(ws)
    assert np.array_equal(ws.active_object.result(ws.slice_index).mask, first.mask)
    actions.run_prompt(ws, segmenter, PromptSet.from_box(5, 5, 200, 170), label="brain", new_object=True)
    with pytest.raises(InvalidPromptError, match="already large"):
        actions.sharpen(ws, segmenter)


def test_sharpen_reads_a_stroke_again_on_the_zoomed_crop(segmenter):
    """Sharpen on a result of one foreground stroke (models.reading_zoom): the stroke is read again on
    the crop and a crop proposal, the better mask here, replaces the result; undo brings the first back."""
    from app import actions
    from app.prompts import DrawnPrompt
    from app.state import Workstation, open_study, undo
    from app.views.study import DEMO, load_study
    from bench import simulated_users as su
    from integrations.loaders import load_volume

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    truth = load_volume(ROOT / "app" / "demo" / "colin27_demo_aal.nii.gz").voxels[ws.slice_index] == 37  # Hippocampus_L
    line = su.scribble(truth, np.random.default_rng(0))
    first = actions.apply_drawn(ws, segmenter, DrawnPrompt("scribble", True, tuple(map(tuple, line.tolist()))))
    r, what = actions.sharpen(ws, segmenter)
    assert r is not None and "strokes read again" in what, what
    dice = lambda m: 2 * (m & truth).sum() / (m.sum() + truth.sum())  # noqa: E731
    assert dice(r.mask) > dice(first.mask) + 0.05  # measured 0.66 -> 0.80
    assert r.strokes == first.strokes and r.prompt.box.source.value == "scribble"
    assert any("zoomed reading" in n for n in r.notes) and r.low_res_logits.shape == (1, 256, 256)
    undo(ws)
    assert np.array_equal(ws.active_object.result(ws.slice_index).mask, first.mask)


def test_sharpen_reads_clicks_again_on_the_zoomed_crop(segmenter, monkeypatch):
    """Sharpen on a result of one click by box proposals (models.reading_zoom.sharpen_clicks): the click
    is read again on the whole slice and the crop; a crop proposal won here and replaced the result
    (undo reverts it). Every click on this slice's parcels is answered by the click decoder (Sharpen
    then keeps it: test_a_click_the_click_decoder_answers_through_the_app), so the proposals are
    reached as without one."""
    from app import actions
    from app.prompts import DrawnPrompt
    from app.state import Workstation, open_study, undo
    from app.views.study import DEMO, load_study
    from bench import simulated_users as su
    from integrations.loaders import load_volume

    monkeypatch.setattr(segmenter, "click_decoder", None)
    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    # AAL region 10 (249 px on this slice): one where a crop proposal wins
    truth = load_volume(ROOT / "app" / "demo" / "colin27_demo_aal.nii.gz").voxels[ws.slice_index] == 10
    c = su.click(truth, np.random.default_rng(0))
    first = actions.apply_drawn(ws, segmenter, DrawnPrompt("click", True, ((round(c.x), round(c.y)),)))
    r, what = actions.sharpen(ws, segmenter)
    assert r is not None and "clicks read again" in what, what
    assert r.prompt.points == first.prompt.points and r.prompt.box.source.value == "click"
    assert any("zoomed reading" in n for n in r.notes) and r.low_res_logits.shape == (1, 256, 256)
    undo(ws)
    assert np.array_equal(ws.active_object.result(ws.slice_index).mask, first.mask)


def test_box_and_background_scribble_are_fused(segmenter):
    """A drawn box + a background stroke through part of its mask: fused, the stroke frames the box
    (prompting.scribbles) and the stroke's pixels leave the mask."""
    from app import actions
    from app.prompts import DrawnPrompt
    from app.state import Workstation, open_study
    from app.views.study import DEMO, load_study

    ws = Workstation()
    open_study(ws, load_study(DEMO, "demo", "demo"))
    first = actions.apply_drawn(ws, segmenter, DrawnPrompt("box", True, ((60.0, 80.0), (120.0, 140.0))))
    ys, xs = np.nonzero(first.mask)
    right = int(xs.max()) - 4
    stroke = tuple((float(right), float(y)) for y in range(int(ys.min()), int(ys.max()) + 1, 6))
    r = actions.apply_drawn(ws, segmenter, DrawnPrompt("scribble", False, stroke))
    assert r.fusion and r.fusion[0].startswith("box + scribble: kept the drawn box"), r.fusion
    assert any("background scribble" in n for n in r.fusion)
    assert len(r.strokes) == 1 and not r.strokes[0].positive
    assert all(not p.positive for p in r.prompt.points)
    assert not r.mask[:, right].any() and r.area_px < first.area_px


def test_a_runtime_fallback_is_shown_not_silent(monkeypatch):
    # Streamlit calls recorded directly: AppTest.from_function would leave its temporary script as
    # the process's __main__, which the batch tests' spawned Dask workers then try to re-run.
    from app.views import segment as view
    from models.runtime import RuntimeReport

    shown = []
    monkeypatch.setattr(view.st, "caption", lambda text, **kw: shown.append(("caption", text)))
    monkeypatch.setattr(view.st, "warning", lambda text, **kw: shown.append(("warning", text)))

    class Segmenter:
        runtime_report = RuntimeReport("onnx", "torch", "ONNX export in /x failed validation: encoder differs from PyTorch")

    view.render_runtime(Segmenter())
    assert shown[0][0] == "caption" and "failed validation" in shown[0][1]
    assert shown[1][0] == "warning" and "runs on torch" in shown[1][1]
    shown.clear()
    Segmenter.runtime_report = RuntimeReport("auto", "openvino", "OpenVINO encoder (bf16) + OpenVINO decoder (f32), validated")
    view.render_runtime(Segmenter())
    assert [k for k, _ in shown] == ["caption"]  # no warning when nothing fell back
