"""Template localisation: registration recovers a known transform; labels land where they should."""
from __future__ import annotations

import time

import numpy as np
import pytest

from integrations.metrics import box_iou, box_of, dice
from prompting.template_localiser import (
    RegistrationSettings,
    TemplateError,
    TemplateLocaliser,
    load_template,
    register_affine,
)

FAST = RegistrationSettings(grid_mm=5.0, affine_iterations=60, bspline_iterations=8, bspline_spacing_mm=50.0)


def _sitk2d(a):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.float32))
    img.SetSpacing((1.0, 1.0))
    return img


def test_affine_registration_recovers_a_known_2d_transform(colin27):
    import SimpleITK as sitk

    t1, _ = colin27
    moving = _sitk2d(t1.voxels[80])
    truth = sitk.AffineTransform(2)
    truth.SetCenter((90.0, 108.0))
    c, s = np.cos(np.deg2rad(7.0)), np.sin(np.deg2rad(7.0))
    truth.SetMatrix(tuple((np.array([[c, -s], [s, c]]) @ np.diag([1.06, 0.95])).reshape(-1)))
    truth.SetTranslation((6.0, -5.0))
    fixed = sitk.Resample(moving, moving, truth, sitk.sitkLinear, 0.0)  # fixed(p) = moving(truth(p))

    found = register_affine(fixed, moving, RegistrationSettings(grid_mm=1.0, affine_iterations=200, sampling=0.3))
    ys, xs = np.nonzero(t1.voxels[80] > 40)  # head pixels
    pts = np.stack([xs, ys], 1)[::50].astype(float)
    err = [np.linalg.norm(np.subtract(found.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p)))) for p in pts]
    assert np.mean(err) < 1.0 and np.max(err) < 2.5, (np.mean(err), np.max(err))


@pytest.fixture(scope="module")
def deformed_slab():
    """The bundled 40-slice demo slab, warped by a seeded random affine + B-spline (exact labels)."""
    from bench.deform import deform_volumes
    from integrations.loaders import load_volume

    t1 = load_volume("app/demo/colin27_demo.nii.gz")
    aal = load_volume("app/demo/colin27_demo_aal.nii.gz")
    aal = aal.with_voxels(np.rint(aal.voxels).astype(np.int16))
    brain = aal.with_voxels((aal.voxels > 0).astype(np.uint8))
    t1d, aald, _, _ = deform_volumes(t1, aal, brain, seed=11)
    return t1d, aald


@pytest.fixture(scope="module")
def localiser():
    return TemplateLocaliser(load_template(), FAST)


def test_3d_registration_carries_labels_and_is_cached(localiser, deformed_slab):
    t1, aal = deformed_slab
    t0 = time.perf_counter()
    loc = localiser.localise_volume(t1, ("Putamen_L",))
    first = time.perf_counter() - t0
    gt = aal.voxels == 73  # Putamen_L
    assert dice(loc.mask, gt) > 0.6
    z = int(np.argmax(gt.reshape(gt.shape[0], -1).sum(1)))
    assert abs(loc.best_slice() - z) <= 3
    b = loc.boxes[z]
    assert box_iou(box_of(gt[z]), (b.x0, b.y0, b.x1, b.y1)) > 0.5
    assert 0.5 <= loc.confidence <= 1.0 and 0 < loc.slice_confidence[z] <= loc.confidence
    # Second query on the same study: no new registration.
    t0 = time.perf_counter()
    thal = localiser.localise_volume(t1, ("Thalamus_R",))
    assert time.perf_counter() - t0 < max(1.0, first / 5)
    assert dice(thal.mask, aal.voxels == 78) > 0.6
    assert len(localiser._cache) == 1


def test_localise_slice_reports_absent_structures(localiser, deformed_slab):
    t1, aal = deformed_slab
    sl = localiser.localise_slice(t1, 0, ("Precentral_L",))  # slab bottom: no precentral gyrus there
    assert (aal.voxels[0] == 1).sum() == 0
    assert sl.box is None and sl.confidence == 0.0 and any("not on slice 0" in n for n in sl.notes)


def test_unknown_template_label_is_an_error_before_registration(localiser, deformed_slab):
    with pytest.raises(TemplateError, match="no label 'Nucleus_Banana_L'"):
        localiser.localise_volume(deformed_slab[0], ("Nucleus_Banana_L",))


def test_2d_registration_of_a_lone_slice(colin27):
    t1, aal = colin27
    z = 72
    image = np.roll(t1.voxels[z], (6, -4), axis=(0, 1))  # a shifted axial image with no geometry
    truth = np.roll(aal.voxels[z] == 77, (6, -4), axis=(0, 1))  # Thalamus_L
    loc = TemplateLocaliser(load_template(), RegistrationSettings(grid_mm=2.0, affine_iterations=60, bspline_iterations=5))
    sl = loc.localise_image(image, (1.0, 1.0), ("Thalamus_L",), direction=t1.direction)
    assert sl.box is not None and sl.confidence > 0.3
    assert box_iou(box_of(truth), (sl.box.x0, sl.box.y0, sl.box.x1, sl.box.y1)) > 0.5
    # The same slice shown the other way round (columns towards the patient's left, as a PNG is
    # read): the patient's left thalamus is now on the image's right, and is found there.
    mirrored = np.ascontiguousarray(image[:, ::-1])
    sl = loc.localise_image(mirrored, (1.0, 1.0), ("Thalamus_L",), direction=np.diag([1.0, -1.0, 1.0]))
    assert box_iou(box_of(truth[:, ::-1]), (sl.box.x0, sl.box.y0, sl.box.x1, sl.box.y1)) > 0.5
    with pytest.raises(TemplateError, match="axial"):
        loc.localise_image(image, (1.0, 1.0), ("Thalamus_L",), direction=np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]))


def test_demo_slab_template_loads_with_a_brain_mask():
    from prompting.template_localiser import DEMO

    tpl = load_template(DEMO)
    assert tpl.image.shape == (40, 217, 181) and len(tpl.names) == 116
    # The slab has no brain mask file: the filled parcellation stands in; compare with Colin27's own.
    from integrations.loaders import load_volume

    bet = load_volume("/usr/share/mricron/templates/ch2bet.nii.gz").voxels[50:90] > 0
    assert dice(tpl.masks["brain"], bet) > 0.93 > dice(tpl.labels.voxels > 0, bet)
    with pytest.raises(TemplateError, match="holds no template"):
        load_template("/tmp")


def test_registration_to_a_non_brain_image_has_low_confidence(localiser):
    from integrations.volume import Volume

    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:40, :120, :100]
    blob = ((zz - 20) / 15.0) ** 2 + ((yy - 60) / 45.0) ** 2 + ((xx - 50) / 35.0) ** 2 < 1
    vox = (100 * blob + rng.normal(0, 20, blob.shape)).astype(np.float32)
    vol = Volume(vox, spacing=(1.5, 1.5, 3.0), origin=(-75.0, -90.0, -60.0))
    loc = localiser.localise_volume(vol, ("Hippocampus_L",))
    assert loc.confidence < 0.3, loc.notes
