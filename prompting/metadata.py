"""Clinical metadata: what the request says about the target, used to constrain prompts and check results.

- expected size in mm ("lesion about 2 cm") -> a size prior for click/gaze box proposals, and a flag
  on a result whose extent is far from it (a "2 cm lesion" mask 9 cm across is flagged, not returned
  silently);
- laterality is the PATIENT's left/right, from the volume's orientation (LPS: +x points to the
  patient's left), never the screen's: on a radiological display the patient's left is on the
  screen's right, and a flipped series reverses even that;
- modality, body part, window preset, urgency, history travel with the request.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from integrations.errors import InvalidPromptError

from .promptset import PromptSet

_SIZE_RE = re.compile(
    r"(?P<a>\d+(?:[.,]\d+)?)\s*(?:(?:x|×|by)\s*(?P<b>\d+(?:[.,]\d+)?)\s*)?(?:(?:x|×|by)\s*(?P<c>\d+(?:[.,]\d+)?)\s*)?"
    r"(?P<unit>mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?)\b",
    re.IGNORECASE,
)
_LEFT_RE = re.compile(r"\b(left|links|gauche|sinist\w*|lt)\b|(?:^|[\s_(])L(?=[\s_)]|$)", re.IGNORECASE)
_RIGHT_RE = re.compile(r"\b(right|rechts|droite?|dext\w*|rt)\b|(?:^|[\s_(])R(?=[\s_)]|$)", re.IGNORECASE)
_BILATERAL_RE = re.compile(r"\b(bilateral|both sides|beidseits)\b", re.IGNORECASE)
_URGENT_RE = re.compile(r"\b(urgent|stat|emergency|acute)\b", re.IGNORECASE)


def parse_size_mm(text: str) -> float | None:
    """The largest dimension mentioned, in mm: "lesion about 2 cm" -> 20.0, "3 x 1.5 cm" -> 30.0, "8mm" -> 8.0."""
    best = None
    for m in _SIZE_RE.finditer(text or ""):
        unit = m.group("unit").lower()
        factor = 10.0 if unit.startswith("c") else 1.0
        vals = [float(v.replace(",", ".")) for v in (m.group("a"), m.group("b"), m.group("c")) if v]
        size = max(vals) * factor
        best = size if best is None else max(best, size)
    return best


def parse_laterality(text: str) -> str | None:
    """"L", "R", "B" (bilateral) or None, from words like "left", "right", "L", "Hippocampus_R"."""
    text = text or ""
    if _BILATERAL_RE.search(text):
        return "B"
    text = text.replace("_", " ")
    left, right = bool(_LEFT_RE.search(text)), bool(_RIGHT_RE.search(text))
    if left and right:
        return "B"
    return "L" if left else "R" if right else None


@dataclass(frozen=True)
class ClinicalMetadata:
    modality: str = ""
    body_part: str = ""
    laterality: str | None = None  # "L" | "R" | "B" | None: the PATIENT's side
    pixel_spacing: tuple[float, float] | None = None  # (x = column, y = row) mm
    expected_size_mm: float | None = None  # largest diameter of the target
    size_factor: float = 2.0  # a result more than this factor off the expected size is flagged
    window: str | None = None  # window preset name (integrations.windowing)
    urgency: str = "routine"  # "routine" | "urgent"
    history: str = ""

    def __post_init__(self) -> None:
        if self.laterality not in (None, "L", "R", "B"):
            raise InvalidPromptError(f"laterality must be 'L', 'R', 'B' or empty, not {self.laterality!r}.")
        if self.expected_size_mm is not None and not (math.isfinite(self.expected_size_mm) and self.expected_size_mm > 0):
            raise InvalidPromptError(f"the expected size must be a positive number of mm, not {self.expected_size_mm}.")
        if self.pixel_spacing is not None and not all(math.isfinite(s) and s > 0 for s in self.pixel_spacing):
            raise InvalidPromptError(f"pixel spacing must be positive mm values, not {self.pixel_spacing}.")
        if not self.size_factor > 1:
            raise InvalidPromptError(f"size_factor must be > 1, not {self.size_factor}.")

    @staticmethod
    def from_text(text: str, **known) -> "ClinicalMetadata":
        """Metadata read from free text (an indication, a request), plus what is known otherwise."""
        fields = dict(history=text, expected_size_mm=parse_size_mm(text), laterality=parse_laterality(text),
                      urgency="urgent" if _URGENT_RE.search(text or "") else "routine")
        fields.update({k: v for k, v in known.items() if v is not None})
        return ClinicalMetadata(**fields)

    @staticmethod
    def from_volume(volume, text: str = "", **known) -> "ClinicalMetadata":
        """Modality, body part and pixel spacing from the study; size, side and urgency from `text`."""
        base = dict(modality=volume.modality, body_part=getattr(volume, "body_part", ""),
                    pixel_spacing=(float(volume.spacing[0]), float(volume.spacing[1])))
        base.update(known)
        return ClinicalMetadata.from_text(text, **base)

    def spacing(self) -> tuple[float, float]:
        return self.pixel_spacing if self.pixel_spacing is not None else (1.0, 1.0)

    def expected_size_px(self) -> tuple[float, float] | None:
        """Expected diameter in (x, y) pixels, or None when no size was given."""
        if self.expected_size_mm is None:
            return None
        sx, sy = self.spacing()
        return self.expected_size_mm / sx, self.expected_size_mm / sy

    def with_size(self, mm: float | None) -> "ClinicalMetadata":
        return replace(self, expected_size_mm=mm)


# -- laterality from orientation -----------------------------------------------------------------

def patient_left_map(direction: np.ndarray, origin, spacing, shape_hw: tuple[int, int], z: int = 0,
                     midline_x_mm: float | None = None) -> np.ndarray:
    """(H, W) bool: pixels of slice z that lie on the patient's LEFT (LPS x greater than the midline).

    The midline defaults to the slice centre's LPS x (the patient is usually centred in the field of
    view; pass `midline_x_mm` when it is known). Uses the full direction matrix, so rotated,
    flipped and oblique series are handled.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    h, w = shape_hw
    m = d @ np.diag(np.asarray(spacing, float))
    ys, xs = np.mgrid[:h, :w]
    lps_x = np.asarray(origin, float)[0] + m[0, 0] * xs + m[0, 1] * ys + m[0, 2] * z
    if abs(m[0, 0]) < 1e-6 * abs(m).max() and abs(m[0, 1]) < 1e-6 * abs(m).max():
        raise InvalidPromptError("this slice has no left-right extent (a sagittal slice): laterality cannot be checked in-plane.")
    if midline_x_mm is None:
        midline_x_mm = float(np.asarray(origin, float)[0] + m[0, 0] * (w - 1) / 2 + m[0, 1] * (h - 1) / 2 + m[0, 2] * z)
    return lps_x > midline_x_mm


def patient_left_columns(volume, z: int = 0, midline_x_mm: float | None = None) -> np.ndarray:
    """(W,) bool: which image columns of slice z are on the patient's left (judged on the middle row)."""
    h, w = volume.shape[1], volume.shape[2]
    lm = patient_left_map(volume.direction, volume.origin, volume.spacing, (h, w), z, midline_x_mm)
    return lm[h // 2]


def screen_side_of_patient_left(volume) -> str:
    """Where the patient's left appears when the slice is shown with column 0 at the screen's left."""
    return "right" if float(np.asarray(volume.direction)[0, 0]) >= 0 else "left"


# -- checks and constraints ------------------------------------------------------------------------

def max_extent_mm(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """Largest distance between two mask pixels in mm (maximum Feret diameter, pixel centres + 1 px)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    pts = np.stack([xs * spacing[0], ys * spacing[1]], 1).astype(np.float64)
    if len(pts) > 3:
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # collinear pixels: the hull is degenerate, use all points
            pass
    if len(pts) > 2000:
        pts = pts[:: len(pts) // 2000 + 1]
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
    return float(d + min(spacing))


def check_result(mask: np.ndarray, meta: ClinicalMetadata, left_map: np.ndarray | None = None) -> list[str]:
    """Flags (sentences for the user) for ways the mask contradicts the metadata; [] when it fits."""
    flags = []
    if not np.asarray(mask).any():
        return ["the result is empty: nothing was segmented."]
    if meta.expected_size_mm is not None:
        got = max_extent_mm(mask, meta.spacing())
        exp = meta.expected_size_mm
        if got > exp * meta.size_factor:
            flags.append(f"size: the result is {got / 10:.1f} cm across but the target was described as about "
                         f"{exp / 10:.1f} cm; check the prompt (it may include neighbouring tissue).")
        elif got < exp / meta.size_factor:
            flags.append(f"size: the result is {got / 10:.1f} cm across but the target was described as about "
                         f"{exp / 10:.1f} cm; it may cover only part of the target.")
    if meta.laterality in ("L", "R") and left_map is not None:
        frac_left = float(left_map[mask].mean())
        if meta.laterality == "L" and frac_left < 0.5:
            flags.append(f"laterality: the target is on the patient's LEFT but {1 - frac_left:.0%} of the result lies on the patient's right.")
        if meta.laterality == "R" and frac_left > 0.5:
            flags.append(f"laterality: the target is on the patient's RIGHT but {frac_left:.0%} of the result lies on the patient's left.")
    return flags


def flag_segmentation(seg, meta: ClinicalMetadata, left_map: np.ndarray | None = None):
    """Add metadata flags to a Segmentation in place (and return it)."""
    for f in check_result(seg.mask, meta, left_map):
        if f not in seg.flags:
            seg.flags.append(f)
    return seg


def check_prompt_side(prompt: PromptSet, meta: ClinicalMetadata, left_map: np.ndarray | None) -> PromptSet:
    """A prompt on the wrong side of the patient is kept (the user pointed there) but noted."""
    if meta.laterality not in ("L", "R") or left_map is None:
        return prompt
    h, w = left_map.shape
    if prompt.box is not None:
        cx, cy = (prompt.box.x0 + prompt.box.x1) / 2, (prompt.box.y0 + prompt.box.y1) / 2
    elif prompt.points:
        pos = [p for p in prompt.points if p.positive] or list(prompt.points)
        cx, cy = float(np.mean([p.x for p in pos])), float(np.mean([p.y for p in pos]))
    else:
        return prompt
    on_left = bool(left_map[int(np.clip(round(cy), 0, h - 1)), int(np.clip(round(cx), 0, w - 1))])
    want_left = meta.laterality == "L"
    if on_left != want_left:
        side = "left" if want_left else "right"
        return prompt.with_note(f"metadata says the patient's {side} side, but the prompt points at the other side; kept as drawn.")
    return prompt


def size_scales(meta: ClinicalMetadata, image_shape: tuple[int, int], spread: tuple[float, ...] = (0.35, 0.5, 0.7, 0.9)) -> tuple[float, ...] | None:
    """Click-proposal half-sizes (fractions of the longest image side) around the expected size.

    A click is ambiguous in scale (a nodule inside a lobe inside a lung); a stated size removes most
    of the ambiguity, so proposals are concentrated around it.
    """
    px = meta.expected_size_px()
    if px is None:
        return None
    diam = max(px)
    side = float(max(image_shape))
    return tuple(sorted({round(f * diam / side, 5) for f in spread}))
