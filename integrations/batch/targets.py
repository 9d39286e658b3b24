"""What to segment in a study: the query's targets, and where they are (a box per slice).

A batch query is "brain; left hippocampus": parts separated by ';'. `resolve_query` turns it into
`TargetSpec`s once, before any study is touched, so a typo fails the command at once instead of
failing 300 studies overnight:
- "foreground" / "body" / "largest object": the built-in `ForegroundLocaliser` (no model, no
  template): the largest bright connected object (Otsu threshold, 3-D largest component). For
  phantoms, QA runs, a whole-body or whole-head mask.
- anything else goes through the text query parser (`prompting.query`: names, synonyms, AAL codes,
  spelling correction; "hippocampus" means both sides: two targets) and is localised by
  registering the labelled template to the study (`prompting.template_localiser`), which gives a
  box on every slice the structure crosses.
A target that parses but that the template cannot localise (an organ outside the head template)
is rejected up front with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from integrations.errors import ClinsegInputError, InvalidPromptError
from integrations.volume import Volume
from integrations.windowing import apply_window, volume_window
from prompting.promptset import Box, PromptSource

FOREGROUND = "foreground"
TEMPLATE = "template"


class TargetNotFoundError(ClinsegInputError):
    """The target is understood but is not in this study (nothing to segment: not an error of the
    input, a finding). The batch records it as 'not_found'."""

    exit_code = 4


class UnknownTargetError(ClinsegInputError):
    """No localiser understands the target's name."""


@dataclass(frozen=True)
class TargetSpec:
    """One resolved target. `name` keys results (manifest, worklist) and names the mask file."""

    name: str  # "foreground", "brain", "Hippocampus_L"
    kind: str  # FOREGROUND | TEMPLATE
    labels: tuple[str, ...] = ()  # template labels ("Hippocampus_L",) or ("mask:brain",)
    phrase: str = ""  # the user's words
    explanation: str = ""


def split_query(query: str | None) -> tuple[str, ...]:
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


def resolve_query(query: str | None, parser=None) -> tuple[TargetSpec, ...]:
    """Every target of the query, understood, or a `UnknownTargetError` saying which part is not."""
    specs: list[TargetSpec] = []
    problems: list[str] = []
    for part in split_query(query):
        if part.lower() in FOREGROUND_NAMES:
            specs.append(TargetSpec(FOREGROUND, FOREGROUND, phrase=part, explanation="built-in: largest bright object"))
            continue
        if parser is None:
            from prompting.query import QueryParser

            parser = QueryParser()  # no sentence encoder: exact, synonym and spelling matches only
        parsed = parser.parse(part)
        problems += [f"'{u}' matches no known structure" for u in parsed.unmatched]
        for t in parsed.targets:
            if not t.labels:
                problems.append(f"'{part}' means {t.display}, which the template does not contain (it localises "
                                "brain structures); use 'foreground' for the largest object")
                continue
            specs.append(TargetSpec(t.display, TEMPLATE, tuple(t.labels), phrase=part, explanation=t.explain()))
    if problems:
        raise UnknownTargetError("; ".join(problems) + ".")
    uniq: dict[str, TargetSpec] = {}
    for sp in specs:
        uniq.setdefault(sp.name, sp)
    return tuple(uniq.values())


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

    def localise(self, volume: Volume, target: TargetSpec) -> VolumeLocalisation:
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

    def localise(self, volume: Volume, target: TargetSpec) -> VolumeLocalisation:
        from scipy import ndimage

        vox = volume.voxels if not volume.is_color else volume.voxels.mean(axis=-1)
        img = apply_window(vox, volume_window(volume, self.window))
        if float(img.max()) - float(img.min()) < 1e-6:
            raise TargetNotFoundError(f"'{target.name}': the volume is uniform; there is no object to segment.")
        fg = img > _otsu(img.reshape(-1))
        labels, n = ndimage.label(fg)
        if n == 0:
            raise TargetNotFoundError(f"'{target.name}': no bright object above the Otsu threshold.")
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
            raise TargetNotFoundError(f"'{target.name}': the largest object is smaller than {self.min_area_px} pixels on every slice.")
        return VolumeLocalisation(target.name, boxes, method=self.name,
                                  notes=[f"largest bright object: {int(obj.sum())} voxels on {len(boxes)} slices"])


def template_folder(name: str | None) -> Path | None:
    """--template NAME: 'demo' (the bundled Colin27 slab), 'colin27' (Debian mricron-data), or a folder."""
    if name is None:
        return None
    from prompting import template_localiser as tl

    named = {"demo": tl.DEMO, "colin27": tl.MRICRON}
    folder = named.get(name.lower(), Path(name).expanduser())
    if not folder.is_dir():
        raise ClinsegInputError(f"template '{name}' not found: give 'demo', 'colin27' (apt-get install mricron-data) "
                                "or a template folder")
    return folder


@dataclass
class TemplateTargetLocaliser:
    """A structure of the labelled template, carried onto the study by registration (3-D)."""

    template: str | None = None
    name: str = "template"
    _localiser: object = field(default=None, repr=False)

    def localiser(self):
        # Built on first use: loading the template costs a second, and a foreground-only batch never needs it.
        if self._localiser is None:
            from prompting.template_localiser import TemplateLocaliser, load_template

            self._localiser = TemplateLocaliser(load_template(template_folder(self.template)))
        return self._localiser

    def localise(self, volume: Volume, target: TargetSpec) -> VolumeLocalisation:
        loc = self.localiser().localise_volume(volume, target.labels)
        if not loc.boxes:
            raise TargetNotFoundError(f"'{target.name}': " + "; ".join(loc.notes))
        return VolumeLocalisation(target.name, dict(loc.boxes), method=loc.method, confidence=float(loc.confidence),
                                  notes=list(loc.notes))


@dataclass
class Localisers:
    """The localiser for each kind of target; one per worker process (the template one caches registrations)."""

    template: str | None = None
    window: str | None = None
    foreground: ForegroundLocaliser = field(init=False)
    anatomy: TemplateTargetLocaliser = field(init=False)

    def __post_init__(self) -> None:
        self.foreground = ForegroundLocaliser(window=self.window)
        self.anatomy = TemplateTargetLocaliser(self.template)

    def localise(self, volume: Volume, target: TargetSpec) -> VolumeLocalisation:
        if target.kind == FOREGROUND:
            return self.foreground.localise(volume, target)
        if target.kind == TEMPLATE:
            return self.anatomy.localise(volume, target)
        raise UnknownTargetError(f"target kind {target.kind!r} is not one of {FOREGROUND}, {TEMPLATE}")
