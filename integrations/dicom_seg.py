"""DICOM Segmentation (SEG) objects written and read with highdicom.

A SEG stores the masks themselves (BINARY, one bit per pixel), so unlike an RTSTRUCT nothing is
converted to polygons and the round trip is exact. Frames reference their source images by SOP
Instance UID; reading maps them back onto the `Volume` through those UIDs, and falls back to the
frames' patient positions when the SEG was made on another copy of the series.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import ClinsegInputError, UnreadableFileError
from .volume import Volume

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class DicomSegError(ClinsegInputError):
    """A SEG that cannot be written for, or read onto, the given series."""


@dataclass
class SegSet:
    masks: dict[str, np.ndarray]  # segment label -> (z, y, x) bool on the volume grid
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    missing_frames: int = 0  # frames whose source image is not in the volume


def _source_datasets(volume: Volume) -> list:
    import pydicom

    ref = volume.dicom
    if ref is None or not ref.files:
        raise DicomSegError("a DICOM-SEG must reference its source images: load the series from its DICOM "
                            "files (a NIfTI/PNG volume cannot be exported as SEG; write NIfTI instead)")
    try:
        return [pydicom.dcmread(f) for f in ref.files]
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise DicomSegError(f"the source images of the series can no longer be read ({type(e).__name__}); "
                            "reload the series from its folder") from e


def _rgb_to_cielab(rgb):
    from highdicom.color import CIELabColor
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, float).reshape(1, 1, 3) / 255.0)[0, 0]
    return CIELabColor(float(np.clip(lab[0], 0, 100)), float(np.clip(lab[1], -128, 127)),
                       float(np.clip(lab[2], -128, 127)))


def write_seg(path, volume: Volume, masks: dict[str, np.ndarray],
              colors: dict[str, tuple[int, int, int]] | None = None, algorithm: str = "clinseg",
              algorithm_version: str = "1", manual: bool = False, series_description: str = "clinseg segmentation") -> str:
    """Write binary `masks` ((z, y, x) on `volume`'s grid) as one DICOM-SEG; returns its SOP Instance UID.

    Segments are numbered 1..N in dict order; their labels are the dict keys."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not masks:
        raise DicomSegError("nothing to write: no masks given")
    for name, m in masks.items():
        if np.asarray(m).shape != volume.shape:
            raise DicomSegError(f"mask {name!r} has shape {np.asarray(m).shape}, the volume {volume.shape}")
    sources = _source_datasets(volume)
    if len(sources) != volume.num_slices:
        raise DicomSegError("multi-frame source images are not supported for SEG export here; export RTSTRUCT")
    colors = colors or {}
    descs = []
    algo = None
    if not manual:
        algo = hd.AlgorithmIdentificationSequence(name=algorithm, version=algorithm_version,
                                                  family=codes.cid7162.ArtificialIntelligence)
    for i, name in enumerate(masks, start=1):
        kw = {}
        if name in colors:
            kw["display_color"] = _rgb_to_cielab(colors[name])
        descs.append(hd.seg.SegmentDescription(
            segment_number=i, segment_label=name[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL if manual else
            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, **kw))
    # (frames, rows, cols, segments) in the order of `sources` (= voxel z order)
    arr = np.stack([np.asarray(m, bool) for m in masks.values()], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=arr, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="clinseg",
        manufacturer_model_name=algorithm[:64], software_versions=algorithm_version, device_serial_number="0",
        series_description=series_description[:64], omit_empty_frames=True)
    seg.save_as(os.fspath(path))
    return str(seg.SOPInstanceUID)


def read_seg(path, volume: Volume) -> SegSet:
    """Read every segment of the SEG at `path` onto `volume`'s grid (exact for BINARY SEGs;
    FRACTIONAL ones are thresholded at 0.5)."""
    import highdicom as hd

    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"SEG file not found: {p}")
    try:
        seg = hd.seg.segread(p)
    except Exception as e:
        raise UnreadableFileError(f"cannot read {os.path.basename(p)} as a DICOM Segmentation "
                                  f"({type(e).__name__}); give a SEG object (Modality SEG)") from e
    out = SegSet(masks={})
    nums = list(seg.get_segment_numbers())
    labels = {}
    for n in nums:
        d = seg.get_segment_description(n)
        label = str(d.segment_label)
        labels[n] = label
        out.numbers[label] = n
        out.masks[label] = np.zeros(volume.shape, bool)
        col = getattr(d, "RecommendedDisplayCIELabValue", None)
        if col is not None:
            from skimage.color import lab2rgb

            L, a, b = col[0] / 65535 * 100, col[1] / 65535 * 255 - 128, col[2] / 65535 * 255 - 128
            rgb = lab2rgb(np.array([[[L, a, b]]], float))[0, 0]
            out.colors[label] = tuple(int(round(v * 255)) for v in rgb)
    uids = volume.dicom.sop_instance_uids if volume.dicom is not None else ()
    referenced = {u for _, _, u in seg.get_source_image_uids()}
    present = [u for u in uids if u in referenced]
    if present:
        arr = seg.get_pixels_by_source_instance(present, segment_numbers=nums, dtype=np.float32)
        index = {u: i for i, u in enumerate(uids)}
        for k, u in enumerate(present):
            z = index[u]
            for j, n in enumerate(nums):
                out.masks[labels[n]][z] = arr[k, :, :, j] >= 0.5
        out.missing_frames = len(referenced - set(present))
        return out
    # the SEG was made on another copy of the series: place its frames by patient position
    shared = seg.SharedFunctionalGroupsSequence[0]
    for i in range(1, int(seg.NumberOfFrames) + 1):
        fg = seg.PerFrameFunctionalGroupsSequence[i - 1]
        pos = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        # with one segment the identification may sit in the shared functional groups
        ident = fg if "SegmentIdentificationSequence" in fg else shared
        n = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        xyz = volume.lps_to_index(pos)[0]
        z = int(round(xyz[2]))
        if abs(xyz[2] - z) > 0.25 or not 0 <= z < volume.num_slices or np.abs(xyz[:2]).max() > 1e-3:
            out.missing_frames += 1
            continue
        frame = seg.get_frame(i)
        if frame.shape != volume.shape[1:]:
            raise DicomSegError(f"SEG frames are {frame.shape}, the images {volume.shape[1:]}: another grid")
        out.masks[labels[n]][z] = frame >= 0.5 * max(1, int(getattr(seg, "MaximumFractionalValue", 1)))
    return out
