"""`clinseg` exit codes and outputs, run as a user would (a subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from integrations.loaders import load_volume

DEMO = Path("app/demo/colin27_demo.nii.gz")


def clinseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300)


def test_info_ok_and_json():
    r = clinseg("info", str(DEMO), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["shape_zyx"] == [40, 217, 181] and info["spacing_xyz_mm"] == [1.0, 1.0, 1.0]


def test_info_bad_inputs_exit_2(tmp_path):
    r = clinseg("info", str(tmp_path / "missing.nii.gz"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "no such file" in r.stderr
    (tmp_path / "empty.dcm").write_bytes(b"")
    r = clinseg("info", str(tmp_path / "empty.dcm"))
    assert r.returncode == 2 and "0 bytes" in r.stderr
    assert "Traceback" not in r.stderr


def test_segment_writes_nifti_with_input_geometry_and_png_npy(tmp_path):
    # a box around the left caudate/putamen region of the demo slab
    aal = load_volume("app/demo/colin27_demo_aal.nii.gz")
    z = 20
    ys, xs = np.nonzero(aal.voxels[z] == 73)  # Putamen_L
    box = [str(v) for v in (xs.min(), ys.min(), xs.max(), ys.max())]
    out = tmp_path / "mask.nii.gz"
    r = clinseg("segment", str(DEMO), "--slice", str(z), "--box", *box, "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["area_px"] > 50 and res["slice"] == z
    src, mask = load_volume(DEMO), load_volume(out)
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-5)
    assert mask.voxels[z].sum() == res["area_px"] and mask.voxels.sum() == res["area_px"]
    gt = aal.voxels[z] == 73
    inter = np.logical_and(mask.voxels[z] > 0, gt).sum()
    assert 2 * inter / (gt.sum() + res["area_px"]) > 0.5
    for ext in ("png", "npy"):
        r = clinseg("segment", str(DEMO), "--slice", str(z), "--box", *box, "--out", str(tmp_path / f"m.{ext}"))
        assert r.returncode == 0 and (tmp_path / f"m.{ext}").exists()


def test_segment_bad_prompt_and_options_exit_2(tmp_path):
    r = clinseg("segment", str(DEMO), "--box", "10", "10", "10", "40", "--out", str(tmp_path / "m.nii.gz"))
    assert r.returncode == 2 and "no area" in r.stderr
    r = clinseg("segment", str(DEMO), "--slice", "99", "--box", "1", "1", "40", "40", "--out", str(tmp_path / "m.nii.gz"))
    assert r.returncode == 2 and "slice 99" in r.stderr
    r = clinseg("segment", str(DEMO), "--window", "nope", "--box", "1", "1", "40", "40", "--out", str(tmp_path / "m.nii.gz"))
    assert r.returncode == 2 and "unknown window" in r.stderr
    r = clinseg("segment", str(DEMO), "--box", "1", "1", "40", "40", "--out", str(tmp_path / "m.docx"))
    assert r.returncode == 2 and "unsupported output" in r.stderr


def test_missing_weights_exit_3(tmp_path):
    r = clinseg("segment", str(DEMO), "--backend", "sam_vit_b", "--checkpoint", str(tmp_path / "sam.pth"),
                "--box", "1", "1", "40", "40", "--out", str(tmp_path / "m.nii.gz"))
    assert r.returncode == 3 and "sam.pth" in r.stderr


def test_nothing_found_exit_4(tmp_path):
    # a box in the empty air of the top-left corner: the mask is empty and the CLI says so
    r = clinseg("segment", str(DEMO), "--slice", "20", "--box", "0", "0", "12", "12", "--out", str(tmp_path / "m.nii.gz"))
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert "empty" in r.stderr
