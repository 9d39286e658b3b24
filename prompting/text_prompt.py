"""Text query -> PromptSets: understand the words, find the structure, explain both.

    prompter = TextPrompter(QueryParser(load_vocabulary(), encoder), TemplateLocaliser())
    result = prompter.prompts_for_slice("left hippocampus", volume, z)
    result.prompts[0].notes[0]
    # "matched 'Hippocampus_L' via name 'left hippocampus', localised by template registration (3-D), confidence 0.82"
    segs = segment_text(segmenter, result, image01)     # one Segmentation per localised target

Localisers are tried in order, the first that places the target wins:
  1. template registration (prompting/template_localiser.py) when the template has the target;
  2. the exemplar library (prompting/exemplars.py) when the user accepted segmentations of it;
  3. CLIP dense patch-text similarity when a CLIP model is configured (models/text_encoder.py).
A target that is understood but placed by none (or only below `min_confidence`) is reported in
`result.failures` and gets NO prompt: a typed word never turns into a confident mask by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from integrations.volume import Volume

from .exemplars import ExemplarLibrary
from .promptset import Box, PromptSet, PromptSource
from .query import ParsedQuery, QueryParser, Target
from .template_localiser import MIN_SLICES_3D, TemplateError, TemplateLocaliser

MIN_CONFIDENCE = 0.2


@dataclass
class TextPromptResult:
    query: ParsedQuery
    prompts: list[PromptSet] = field(default_factory=list)  # one per localised target, label = target.display
    targets: list[Target] = field(default_factory=list)  # the target of each prompt, same order
    failures: list[str] = field(default_factory=list)  # understood but not localised, or not understood
    slice_index: int | None = None

    @property
    def found(self) -> bool:
        return bool(self.prompts)

    @property
    def explanation(self) -> str:
        lines = [p.notes[0] for p in self.prompts if p.notes] + self.failures
        return "; ".join(lines) if lines else self.query.explain()


class TextPrompter:
    """Orchestrates parser + localisers. `embedder` (a segmenter with .embed) is needed for exemplars."""

    def __init__(self, parser: QueryParser, template: TemplateLocaliser | None = None,
                 exemplars: ExemplarLibrary | None = None, embedder=None, clip=None,
                 min_confidence: float = MIN_CONFIDENCE):
        self.parser = parser
        self.template = template
        self.exemplars = exemplars
        self.embedder = embedder
        self.clip = clip
        self.min_confidence = min_confidence

    def parse(self, text: str) -> ParsedQuery:
        return self.parser.parse(text)

    def best_slice(self, text: str, volume: Volume) -> int | None:
        """Slice where the first template-localisable target is largest (for 'no slice given')."""
        q = self.parser.parse(text)
        if self.template is None or volume.num_slices < MIN_SLICES_3D:  # a lone slice: nothing to choose
            return None
        for t in q.targets:
            if t.labels and self.template.template.has(t.labels):
                return self.template.localise_volume(volume, t.labels).best_slice()
        return None

    def prompts_for_slice(self, text: str, volume: Volume, z: int, image01: np.ndarray | None = None) -> TextPromptResult:
        """PromptSets for slice z. `image01` (the windowed slice) is needed only by exemplars/CLIP."""
        q = self.parser.parse(text)
        result = TextPromptResult(q, slice_index=z)
        result.failures += [f"'{u}' matches no known structure" for u in q.unmatched]
        for t in q.targets:
            box, how, extra = self._localise(t, volume, z, image01)
            if box is None:
                result.failures.append(f"{t.explain()}, but {how}")
                continue
            if box.confidence < self.min_confidence:
                result.failures.append(f"{t.explain()}, but {how} is unsure (confidence {box.confidence:.2f} "
                                       f"< {self.min_confidence:.2f}); no prompt made")
                continue
            note = f"{t.explain()}, localised by {how}, confidence {box.confidence:.2f}"
            p = PromptSet(box=box, label=t.display).with_note(note)
            for n in t.notes + extra:
                p = p.with_note(n)
            result.prompts.append(p)
            result.targets.append(t)
        return result

    # -- localisers, in order --
    def _localise(self, t: Target, volume: Volume, z: int, image01) -> tuple[Box | None, str, tuple[str, ...]]:
        reasons = []
        extra: tuple[str, ...] = ()
        if t.modifiers:
            extra = (f"modifier(s) {', '.join(t.modifiers)}: the box encloses the {t.concept.name}; the localisers "
                     "find anatomy, not the lesion itself",)
        if self.template is not None and t.labels and self.template.template.has(t.labels):
            try:
                loc = self.template.localise_slice(volume, z, t.labels)
            except TemplateError as e:
                reasons.append(f"template localisation failed ({e})")
            else:
                if loc.box is not None:
                    return loc.box, loc.method, extra + loc.notes
                reasons.append(f"after {loc.method} it is not on slice {z}" +
                               "".join(f" ({n})" for n in loc.notes[1:]))
        if self.exemplars is not None and self.embedder is not None and image01 is not None:
            emb = self.embedder.embed(image01)
            m = self.exemplars.localise(t.display, emb)
            if m is not None and m.box is not None:
                return m.box, f"exemplar matching ({m.exemplars} accepted segmentation(s), similarity {m.peak_similarity:.2f})", extra
            if m is not None:
                reasons.append("its exemplars match nothing in this image")
        if self.clip is not None and image01 is not None:
            box = clip_box(self.clip, image01, t.concept.name if not t.side else f"{'left' if t.side == 'L' else 'right'} {t.concept.name}")
            if box is not None:
                return box, "CLIP patch-text similarity", extra
            reasons.append("CLIP similarity found no region")
        if not reasons:
            reasons.append("no localiser knows it here (the template lacks it, no exemplar was accepted, no CLIP model is "
                           "configured): draw a box, or accept a segmentation of it to make an exemplar")
        return None, "; ".join(reasons), extra


def clip_box(clip, image01: np.ndarray, text: str, min_contrast: float = 0.02) -> Box | None:
    """Box of the connected patch region most similar to `text` (uncalibrated: confidence <= 0.5)."""
    from scipy import ndimage
    from skimage.transform import resize

    sim = clip.dense_similarity(image01, text)
    if float(sim.max() - np.median(sim)) < min_contrast:
        return None
    thr = 0.5 * (float(sim.max()) + float(np.median(sim)))
    lab, _ = ndimage.label(sim >= thr)
    region = lab == lab[np.unravel_index(int(np.argmax(sim)), sim.shape)]
    H, W = image01.shape[:2]
    big = resize(region.astype(np.float32), (H, W), order=0) > 0.5
    ys, xs = np.nonzero(big)
    if len(xs) == 0:
        return None
    conf = float(np.clip((sim.max() - np.median(sim)) * 5, 0.0, 0.5))
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), PromptSource.LOCALISER, conf)


def segment_text(segmenter, result: TextPromptResult, image01: np.ndarray) -> list:
    """Decode every prompt of `result` on the slice (one embedding, a batch decode); notes carried over."""
    if not result.prompts:
        return []
    emb = segmenter.embed(image01)
    segs = segmenter.decode_batch(emb, result.prompts)
    for seg, p in zip(segs, result.prompts):
        seg.label = p.label
        seg.slice_index = result.slice_index
        seg.notes.extend(p.notes)
    return segs
