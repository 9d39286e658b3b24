"""Understanding a typed query: which targets, which side, which modifiers, or "not found".

    parser = QueryParser(load_vocabulary(), encoder=None)   # encoder: optional sentence encoder
    q = parser.parse("segment the left and right putamen; brain")
    [t.display for t in q.targets]   # ['Putamen_L', 'Putamen_R', 'brain']

Steps for each part of the query (parts are split on ';', ',' and new lines, then on 'and'/'&'/'plus'
only when the whole part does not name one thing, so "portal vein and splenic vein" stays one):
1. laterality words are taken out ("left", "L", "rt", "bilateral", "left and right"); laterality is
   the PATIENT's side, as in AAL's _L/_R labels (never the screen side);
2. modifiers are taken out ("lesion", "tumour", "enhancing", "cyst", ...) and kept on the target;
3. filler words go ("segment", "the", "of", "in", ...);
4. what remains is looked up: exact surface form (name, synonym, abbreviation, adjective, AAL code),
   then simple plural forms, then spelling correction (difflib ratio >= FUZZY_CUTOFF), then, if an
   encoder is given, MiniLM cosine similarity >= EMBED_THRESHOLD and ahead of the next concept by
   EMBED_MARGIN. Calibrated with MiniLM on 20 paraphrases absent from the vocabulary (0.60-1.00) and
   30 unknown words, mostly other body parts (0.26-0.60; 'knee' 0.59, 'nose' 0.60): 0.65 keeps every
   unknown word out. Embedding matches are the least reliable route ('motor gyrus' is closest to
   'angular gyrus'), so they come last and say so in the explanation.
Nothing good enough -> the part is reported unmatched; a query with no target is "not found", and
callers must then return no mask (never a confident mask for a word we do not know).
A lateral structure named without a side ("hippocampus") means both sides: two targets.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

from integrations.errors import InvalidPromptError

from .vocabulary import Concept, Surface, Vocabulary, load_vocabulary, normalise

FUZZY_CUTOFF = 0.88
EMBED_THRESHOLD = 0.65
EMBED_MARGIN = 0.02  # the best concept must beat the next concept by this much, else it is a guess
FILLER = frozenset("""segment segmentation segmented contour contours outline delineate delineation show find highlight
mark draw label select please me the a an of in on within at to for my this that patient patients patient's its
want would like can could you give get""".split())
# Filler words that are also parts of real names ("supplementary motor AREA", "hippocampal REGION"):
# removed only if the phrase does not match with them.
SOFT_FILLER = frozenset({"region", "area", "structure", "structures", "whole"})
CONJUNCTIONS = frozenset({"and", "&", "plus", "+", "or", "with"})


@dataclass(frozen=True)
class Target:
    """One thing to segment, as understood."""

    concept: Concept
    side: str | None  # "L" / "R" (patient) or None for a midline / non-lateral target
    modifiers: tuple[str, ...]
    phrase: str  # the user's words for it, normalised
    matched: str  # the vocabulary form it matched
    via: str  # "AAL name" | "name" | "synonym" | "abbreviation" | "adjective" | "spelling" | "embedding"
    score: float  # 1.0 exact, else the similarity that passed the threshold
    notes: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.concept.template_labels(self.side)

    @property
    def display(self) -> str:
        return self.concept.display(self.side)

    def explain(self) -> str:
        side_word = {"L": "left ", "R": "right "}.get(self.side or "", "")
        if self.via == "AAL name":
            how = f"AAL name '{self.matched}'"
        elif self.via == "spelling":
            how = f"spelling correction of '{self.phrase}' to '{self.matched}' (similarity {self.score:.2f})"
        elif self.via == "embedding":
            how = f"text-embedding similarity {self.score:.2f} between '{self.phrase}' and '{self.matched}'"
        else:
            how = f"{self.via} '{side_word}{self.matched}'"
        s = f"matched '{self.display}' via {how}"
        if self.modifiers:
            s += f", modifiers: {', '.join(self.modifiers)}"
        return s


@dataclass(frozen=True)
class ParsedQuery:
    text: str
    targets: tuple[Target, ...]
    unmatched: tuple[str, ...] = ()  # parts of the query that named nothing we know
    notes: tuple[str, ...] = field(default=())

    @property
    def found(self) -> bool:
        return bool(self.targets)

    def explain(self) -> str:
        parts = [t.explain() for t in self.targets]
        parts += [f"'{u}' matches no known structure" for u in self.unmatched]
        return "; ".join(parts + list(self.notes)) or "empty query"


class QueryParser:
    """Parses queries against a vocabulary; `encoder` (with .encode(list[str]) -> unit vectors) is optional."""

    def __init__(self, vocabulary: Vocabulary | None = None, encoder=None, threshold: float = EMBED_THRESHOLD,
                 fuzzy_cutoff: float = FUZZY_CUTOFF):
        self.vocab = vocabulary or load_vocabulary()
        self.encoder = encoder
        self.threshold = threshold
        self.fuzzy_cutoff = fuzzy_cutoff
        self._side_words = {normalise(w): s for s, ws in self.vocab.laterality.items() for w in ws}
        self._modifiers = {normalise(m) for m in self.vocab.modifiers}
        # Candidates for fuzzy/embedding matching: forms without a built-in side ("hippocampus l" excluded).
        self._keys = sorted({k for k, s in self.vocab.surfaces() if s.side is None})
        self._key_vectors: np.ndarray | None = None

    # ---- public -------------------------------------------------------------------------------
    def parse(self, text: str) -> ParsedQuery:
        if not isinstance(text, str) or not text.strip():
            raise InvalidPromptError("the text query is empty: name a structure, e.g. 'left hippocampus' or 'brain'.")
        targets: list[Target] = []
        unmatched: list[str] = []
        for chunk in re.split(r"[;,\n]+|\bas well as\b", text):
            if not normalise(chunk):
                continue
            side = self._only_side(normalise(chunk).split())
            if side and targets and targets[-1].concept.lateral:
                # "amygdala, right": a side on its own refines the previous part's lateral target(s).
                last = targets[-1]
                while targets and targets[-1].concept.id == last.concept.id:
                    targets.pop()
                sides = ("L", "R") if side == "both" else (side,)
                targets += [Target(last.concept, s, last.modifiers, last.phrase, last.matched, last.via, last.score) for s in sides]
                continue
            t, u = self._parse_chunk(chunk)
            targets += t
            unmatched += u
        uniq: list[Target] = []
        for t in targets:  # "brain; brain" -> once
            if all((t.concept.id, t.side) != (x.concept.id, x.side) for x in uniq):
                uniq.append(t)
        return ParsedQuery(text, tuple(uniq), tuple(unmatched))

    def similarity(self, phrase: str) -> tuple[str, float, float]:
        """Best vocabulary form, its embedding cosine similarity, and the best similarity of any OTHER
        concept (needs an encoder; ("", 0, 0) without one)."""
        if self.encoder is None:
            return "", 0.0, 0.0
        if self._key_vectors is None:
            self._key_vectors = np.asarray(self.encoder.encode(self._keys), dtype=np.float32)
            self._key_concepts = [self.vocab.lookup(k)[0].concept_id for k in self._keys]
        v = np.asarray(self.encoder.encode([phrase]), dtype=np.float32)[0]
        sims = self._key_vectors @ v
        i = int(np.argmax(sims))
        others = [s for s, c in zip(sims, self._key_concepts) if c != self._key_concepts[i]]
        return self._keys[i], float(sims[i]), float(max(others, default=0.0))

    # ---- internals ----------------------------------------------------------------------------
    def _parse_chunk(self, chunk: str) -> tuple[list[Target], list[str]]:
        tokens = normalise(chunk).split()
        whole = self._resolve(tokens)
        if whole is not None:
            return whole, []
        # Split on conjunctions; a part that is only a side ("left" in "left and right putamen" is
        # caught above, but "putamen left and right" is not) borrows the neighbouring part's concept.
        parts, cur = [], []
        for tok in tokens:
            if tok in CONJUNCTIONS:
                if cur:
                    parts.append(cur)
                cur = []
            else:
                cur.append(tok)
        if cur:
            parts.append(cur)
        resolved = [self._resolve(p) for p in parts]
        targets: list[Target] = []
        unmatched: list[str] = []
        for i, (p, r) in enumerate(zip(parts, resolved)):
            if r is not None:
                targets += r
                continue
            side = self._only_side(p)
            neighbour = next((resolved[j] for j in (i + 1, i - 1) if 0 <= j < len(parts) and resolved[j]), None)
            if side and neighbour:
                base = neighbour[0]
                sides = ("L", "R") if side == "both" else (side,)
                targets += [Target(base.concept, s, base.modifiers, " ".join(p), base.matched, base.via, base.score)
                            for s in sides if base.concept.lateral]
            elif [t for t in p if t not in FILLER]:
                unmatched.append(" ".join(p))
        return targets, unmatched

    def _only_side(self, tokens: list[str]) -> str | None:
        rest = [t for t in tokens if t not in FILLER]
        phrase = " ".join(rest)
        return self._side_words.get(phrase)

    def _extract_sides(self, tokens: list[str]) -> tuple[list[str], set[str]]:
        sides: set[str] = set()
        out: list[str] = []
        i = 0
        multi = sorted((w for w in self._side_words if " " in w), key=len, reverse=True)
        while i < len(tokens):
            hit = None
            for w in multi:
                n = len(w.split())
                if tokens[i:i + n] == w.split():
                    hit = (w, n)
                    break
            if hit:
                sides.add(self._side_words[hit[0]])
                i += hit[1]
            elif tokens[i] in self._side_words:
                sides.add(self._side_words[tokens[i]])
                i += 1
            else:
                out.append(tokens[i])
                i += 1
        return out, sides

    def _resolve(self, tokens: list[str]) -> list[Target] | None:
        words = [t for t in tokens if t not in FILLER]
        if not words:
            return None
        phrase_all = " ".join(words)
        # An exact form that contains side or modifier words ("lung_middle_lobe_right", "enhancing tumour",
        # "Hippocampus_L") wins before those words are taken out.
        direct = self._exact(phrase_all)
        if direct is not None:
            return self._targets(direct[0], direct[1], set(), (), phrase_all)
        rest, sides = self._extract_sides(words)
        mods = tuple(t for t in rest if t in self._modifiers)
        core = [t for t in rest if t not in self._modifiers]
        if not core:  # only modifiers: the lesion term itself is the target ("enhancing tumour")
            core, mods = list(mods), ()
        if not core:
            return None
        phrase = " ".join(core)
        match = self._match(phrase)
        if match is None:
            soft = " ".join(t for t in core if t not in SOFT_FILLER)
            match = self._match(soft) if soft and soft != phrase else None
        if match is None:
            return None
        surface, score, via = match
        return self._targets(surface, score, sides, mods, phrase, via)

    def _exact(self, phrase: str) -> tuple[Surface, float] | None:
        hits = self.vocab.lookup(phrase)
        return (hits[0], 1.0) if hits else None

    def _match(self, phrase: str) -> tuple[Surface, float, str] | None:
        hit = self._exact(phrase)
        if hit:
            return hit[0], 1.0, hit[0].via
        for variant in _plural_variants(phrase):
            hit = self._exact(variant)
            if hit:
                return hit[0], 1.0, hit[0].via
        if len(phrase) >= 5:  # short strings are too easy to "correct" into something else
            close = difflib.get_close_matches(phrase, self._keys, n=1, cutoff=self.fuzzy_cutoff)
            if close:
                ratio = difflib.SequenceMatcher(None, phrase, close[0]).ratio()
                return self.vocab.lookup(close[0])[0], ratio, "spelling"
        key, sim, runner_up = self.similarity(phrase)
        if key and sim >= self.threshold and sim - runner_up >= EMBED_MARGIN:
            return self.vocab.lookup(key)[0], sim, "embedding"
        return None

    def _targets(self, surface: Surface, score: float, sides: set[str], mods: tuple[str, ...], phrase: str,
                 via: str | None = None) -> list[Target]:
        concept = self.vocab.concepts[surface.concept_id]
        via = via or surface.via
        notes: tuple[str, ...] = ()
        if surface.side:
            chosen: tuple[str | None, ...] = (surface.side,)
        elif not concept.lateral:
            chosen = (None,)
            if sides:
                notes = (f"'{concept.name}' has no sides; the side word was ignored",)
        elif not sides or "both" in sides or sides == {"L", "R"}:
            chosen = ("L", "R")
            if not sides:
                notes = ("no side given: both sides",)
        else:
            chosen = (next(iter(sides)),)
        return [Target(concept, s, mods, phrase, surface.text, via, score, notes) for s in chosen]


def _plural_variants(phrase: str) -> list[str]:
    """'hippocampi' -> 'hippocampus', 'kidneys' -> 'kidney', 'thalami' -> 'thalamus'."""
    words = phrase.split()
    last = words[-1]
    out = []
    if last.endswith("i"):
        out.append(last[:-1] + "us")
    if last.endswith("es"):
        out.append(last[:-2])
    if last.endswith("s"):
        out.append(last[:-1])
    if last.endswith("ae"):
        out.append(last[:-1])
    return [" ".join(words[:-1] + [v]) for v in out]
