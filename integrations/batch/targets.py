"""What to segment in a study: the query's targets, and where they are (a box per slice).

A batch query is "brain; left hippocampus": targets separated by ';'. Each target is localised
in the volume by the first localiser that understands it:
- `ForegroundLocaliser` (built in, needs no model): "foreground" / "body" / "largest object": the
  largest bright connected object of the volume (Otsu threshold, 3-D largest component). It is
  what a phantom, a QA run or a whole-body/whole-head mask needs.
- the text localiser of `prompting/` (query -> concept -> template localisation), when installed,
  for anatomical names.
A target nobody understands fails on its own with a reason; the study's other targets go on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from integrations.errors import ClinsegInputError, InvalidPromptError
from integrations.volume import Volume
from integrations.windowing import apply_window, volume_window
from prompting.promptset import Box, PromptSource


class TargetNotFoundError(ClinsegInputError):
    """The target is understood but is not in this study (nothing to segment: not an error of the
    input, a finding). The batch records it as 'not_found'."""

    exit_code = 4


class UnknownTargetError(ClinsegInputError):
    """No localiser understands the target's name."""


def parse_query(query: str) -> tuple[str, ...]:
    """'brain; left hippocampus' -> ('brain', 'left hippocampus'): trimmed, de-duplicated in order."""
    if query is None:
        raise InvalidPromptError("no query: give targets separated by ';', e.g. --query \"brain; left hippocampus\".")
    out: list[str] = []
    for part in query.split(";"):
        t = " ".join(part.split())
        if t and t.lower() not in (o.lower() for o in out):
            out.append(t)
    if not out:
        raise InvalidPromptError("the query names no target: give targets separated by ';', e.g. \"brain; left hippocampus\".")
    return tuple(out)


def target_slug(target: str) -> str:
    """A file name for a target's outputs: 'Left hippocampus' -> 'left-hippocampus'."""
    slug = re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-")
    return slug[:60] or "target"


@dataclass
class VolumeLocalisation:
    """Where a target is: a box per slice (slices without a box are outside the target)."""

    target: str
    boxes: dict[int, Box]
    method: str
    confidence: float = 1.0
    notes: list[str] = field(default_factory=list)


class Localiser(Protocol):
    name: str

    def handles(self, target: str) -> bool:
        ...

    def localise(self, volume: Volume, target: str) -> VolumeLocalisation:
        """Raises TargetNotFoundError when the target is not in the volume."""
        ...


FOREGROUND_NAMES = ("foreground", "body", "largest object", "bright object", "object")


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0, dtype=float), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0, dtype=float), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


@dataclass
class ForegroundLocaliser:
    """The largest bright 3-D connected object, boxed per slice with a small margin.

    The margin matters: LiteMedSAM was trained on boxes a few pixels larger than the object.
    """

    name: str = "foreground"
    margin_px: int = 2
    min_area_px: int = 4  # a slice touching the object's pole by a few pixels is not worth an encode
    window: str | None = None

    def handles(self, target: str) -> bool:
        return target.lower() in FOREGROUND_NAMES

    def localise(self, volume: Volume, target: str) -> VolumeLocalisation:
        from scipy import ndimage

        vox = volume.voxels if not volume.is_color else volume.voxels.mean(axis=-1)
        img = apply_window(vox, volume_window(volume, self.window))
        if float(img.max()) - float(img.min()) < 1e-6:
            raise TargetNotFoundError(f"'{target}': the volume is uniform; there is no object to segment.")
        fg = img > _otsu(img.reshape(-1))
        labels, n = ndimage.label(fg)
        if n == 0:
            raise TargetNotFoundError(f"'{target}': no bright object above the Otsu threshold.")
        sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
        obj = labels == int(np.argmax(sizes)) + 1
        h, w = obj.shape[1:]
        boxes: dict[int, Box] = {}
        for z in range(obj.shape[0]):
            sl = obj[z]
            if int(sl.sum()) < self.min_area_px:
                continue
            ys, xs = np.nonzero(sl)
            m = self.margin_px
            boxes[z] = Box(max(0, xs.min() - m), max(0, ys.min() - m), min(w - 1, xs.max() + m), min(h - 1, ys.max() + m),
                           source=PromptSource.LOCALISER)
        if not boxes:
            raise TargetNotFoundError(f"'{target}': the largest object is smaller than {self.min_area_px} pixels on every slice.")
        return VolumeLocalisation(target, boxes, method=self.name,
                                  notes=[f"largest bright object: {int(obj.sum())} voxels on {len(boxes)} slices"])


@dataclass
class LocaliserChain:
    """The first localiser that understands a target localises it."""

    localisers: Sequence[Localiser]

    @property
    def names(self) -> list[str]:
        return [loc.name for loc in self.localisers]

    def localise(self, volume: Volume, target: str) -> VolumeLocalisation:
        for loc in self.localisers:
            if loc.handles(target):
                return loc.localise(volume, target)
        raise UnknownTargetError(
            f"no localiser understands '{target}' (available: {', '.join(self.names)}; built-in names: "
            f"{', '.join(FOREGROUND_NAMES)})."
        )


def default_localisers(template: str | None = None, window: str | None = None) -> LocaliserChain:
    """The localisers this installation has, most specific last (the built-in names never reach
    the text localiser, which would otherwise try to match 'body' to an atlas structure)."""
    return LocaliserChain([ForegroundLocaliser(window=window)])
