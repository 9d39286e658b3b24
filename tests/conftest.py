"""Shared fixtures. The real LiteMedSAM weights load once per test session."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A developer's own ONNX exports (~/.cache/clinseg/onnx) must not change which runtime the tests
# get: the suite sees what a clean CI machine sees (PyTorch), and exports where a test asks for one.
os.environ["CLINSEG_ONNX_DIR"] = tempfile.mkdtemp(prefix="clinseg-test-onnx-")
atexit.register(shutil.rmtree, os.environ["CLINSEG_ONNX_DIR"], True)

MRICRON = Path("/usr/share/mricron/templates")


@pytest.fixture(scope="session")
def segmenter():
    from models.registry import build_segmenter

    return build_segmenter("litemedsam")


@pytest.fixture(scope="session")
def colin27():
    """(Volume of Colin27 T1, AAL label Volume) from Debian's mricron-data (installed by `make test`)."""
    from integrations.loaders import load_volume

    if not (MRICRON / "ch2.nii.gz").exists():
        pytest.fail("mricron-data is missing: `make test` installs it (apt-get install mricron-data)")
    t1 = load_volume(MRICRON / "ch2.nii.gz")
    aal = load_volume(MRICRON / "aal.nii.gz")
    return t1, aal


@pytest.fixture
def disc_image():
    """A bright disc on a dark, slightly noisy background, and its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:200, :240]
    mask = (yy - 100) ** 2 + (xx - 120) ** 2 < 40 ** 2
    img = 0.1 + 0.8 * mask + rng.normal(0, 0.02, mask.shape)
    return np.clip(img, 0, 1).astype(np.float32), mask
