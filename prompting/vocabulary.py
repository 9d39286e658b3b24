"""The vocabulary of targets a text query can name: a data file (`vocabulary.json`), extendable.

Each `Concept` is one thing a clinician can ask for: an AAL region ("Hippocampus", lateral, so
"Hippocampus_L"/"Hippocampus_R" in the template), a group of AAL regions ("basal ganglia"), a
template mask ("brain"), a whole organ (TotalSegmentator-style names) or a lesion term. The lookup
`index` maps every normalised surface form (name, synonyms, abbreviations, adjectives, AAL codes)
to its concept, so exact matching is one dictionary lookup.

Users extend it with their own JSON files in the same format, listed in the environment variable
CLINSEG_VOCABULARY (os.pathsep-separated) or passed to `load_vocabulary(extra=[...])`. An entry
whose id already exists adds its synonyms to that concept; a new id adds a concept.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from integrations.errors import ClinsegInputError

DEFAULT_PATH = Path(__file__).with_name("vocabulary.json")
ENV_VAR = "CLINSEG_VOCABULARY"
KINDS = ("aal", "aal_group", "mask", "organ", "lesion")
SIDES = ("L", "R")


class VocabularyError(ClinsegInputError):
    """A vocabulary file is unreadable or malformed."""


def normalise(text: str) -> str:
    """Lower case, typographic quotes folded, separators (_ - / , ( )) to spaces, single spaces."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r"[_\-/,()\[\]:.?!\"]+", " ", t)
    return " ".join(t.split())


@dataclass(frozen=True)
class Concept:
    id: str
    kind: str
    name: str
    lateral: bool = False
    aal: str | None = None  # AAL base code for kind "aal"
    members: tuple[str, ...] = ()  # AAL base codes (or full codes) for kind "aal_group"
    mask: str | None = None  # template mask name for kind "mask"
    synonyms: tuple[str, ...] = ()
    abbreviations: tuple[str, ...] = ()
    adjectives: tuple[str, ...] = ()

    def template_labels(self, side: str | None) -> tuple[str, ...]:
        """Template label names for this concept on one side (None: a non-lateral concept)."""
        if self.kind == "aal":
            return (f"{self.aal}_{side}",) if self.lateral else (str(self.aal),)
        if self.kind == "aal_group":
            if self.lateral:
                return tuple(f"{m}_{side}" for m in self.members)
            return self.members
        if self.kind == "mask":
            return (f"mask:{self.mask}",)
        return ()

    def display(self, side: str | None) -> str:
        """The name shown to the user: AAL code for AAL regions ("Hippocampus_L"), else plain words."""
        if self.kind == "aal":
            return self.template_labels(side)[0]
        word = {"L": "left ", "R": "right "}.get(side or "", "")
        return f"{word}{self.name}"


@dataclass(frozen=True)
class Surface:
    """One way of writing a concept, and how it relates to the concept (for the explanation)."""

    concept_id: str
    text: str  # as written in the vocabulary
    via: str  # "AAL name" | "name" | "synonym" | "abbreviation" | "adjective"
    side: str | None = None  # when the form itself carries a side ("Hippocampus_L")


@dataclass
class Vocabulary:
    concepts: dict[str, Concept]
    laterality: dict[str, tuple[str, ...]]  # "L"/"R"/"both" -> words
    modifiers: tuple[str, ...]
    index: dict[str, list[Surface]] = field(default_factory=dict)  # normalised form -> surfaces
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.index:
            self.index = build_index(self.concepts)

    def lookup(self, phrase: str) -> list[Surface]:
        return self.index.get(normalise(phrase), [])

    def surfaces(self) -> list[tuple[str, Surface]]:
        """Every (normalised form, surface) pair: the candidates fuzzy and embedding matching rank."""
        return [(k, s) for k, lst in self.index.items() for s in lst]

    def aal_codes(self) -> list[str]:
        """All template AAL label names the vocabulary covers ("Precentral_L", ..., "Vermis_10")."""
        out = []
        for c in self.concepts.values():
            if c.kind == "aal":
                out.extend(c.template_labels("L") + c.template_labels("R") if c.lateral else c.template_labels(None))
        return out


def build_index(concepts: dict[str, Concept]) -> dict[str, list[Surface]]:
    index: dict[str, list[Surface]] = {}

    def add(form: str, s: Surface) -> None:
        key = normalise(form)
        if key and all((x.concept_id, x.side) != (s.concept_id, s.side) for x in index.get(key, [])):
            index.setdefault(key, []).append(s)

    for c in concepts.values():
        # Plain names first: a form shared by name and AAL code ("hippocampus") is explained as a name.
        add(c.name, Surface(c.id, c.name, "name"))
        if c.kind == "aal":
            if c.lateral:
                for side in SIDES:
                    add(f"{c.aal}_{side}", Surface(c.id, f"{c.aal}_{side}", "AAL name", side))
            add(str(c.aal), Surface(c.id, str(c.aal), "AAL name"))
        add(c.id, Surface(c.id, c.id, "name"))
        for s in c.synonyms:
            add(s, Surface(c.id, s, "synonym"))
        for s in c.abbreviations:
            add(s, Surface(c.id, s, "abbreviation"))
        for s in c.adjectives:
            add(s, Surface(c.id, s, "adjective"))
    return index


def _concept_from_entry(e: dict, where: str) -> Concept:
    try:
        cid, kind, name = str(e["id"]), str(e["kind"]), str(e.get("name") or e["id"])
    except KeyError as k:
        raise VocabularyError(f"{where}: a concept lacks the field {k}; each needs 'id' and 'kind'.") from None
    if kind not in KINDS:
        raise VocabularyError(f"{where}: concept {cid!r} has kind {kind!r}; use one of {', '.join(KINDS)}.")
    if kind == "aal" and not e.get("aal"):
        raise VocabularyError(f"{where}: AAL concept {cid!r} needs 'aal' (the base label name, e.g. 'Hippocampus').")
    if kind == "aal_group" and not e.get("members"):
        raise VocabularyError(f"{where}: group {cid!r} needs 'members' (AAL base label names).")
    return Concept(cid, kind, name, bool(e.get("lateral", False)), e.get("aal"), tuple(e.get("members", ())), e.get("mask"),
                   tuple(e.get("synonyms", ())), tuple(e.get("abbreviations", ())), tuple(e.get("adjectives", ())))


def _read(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VocabularyError(f"vocabulary file {path} does not exist (check {ENV_VAR} or the path you gave).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VocabularyError(f"vocabulary file {path} is not readable JSON ({e}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("concepts", []), list):
        raise VocabularyError(f"vocabulary file {path} must be an object with a 'concepts' list.")
    return doc


def load_vocabulary(path: str | Path | None = None, extra: list[str | Path] | None = None, use_env: bool = True) -> Vocabulary:
    """The bundled vocabulary (or `path`), plus extension files from `extra` and $CLINSEG_VOCABULARY."""
    base_path = Path(path) if path else DEFAULT_PATH
    doc = _read(base_path)
    concepts: dict[str, Concept] = {}
    lat = {k: tuple(v) for k, v in doc.get("laterality", {}).items()}
    mods = list(doc.get("modifiers", ()))
    paths = [base_path] + [Path(p) for p in (extra or [])]
    if use_env and os.environ.get(ENV_VAR):
        paths += [Path(p) for p in os.environ[ENV_VAR].split(os.pathsep) if p]
    for i, p in enumerate(paths):
        d = doc if i == 0 else _read(p)
        for e in d.get("concepts", []):
            if not isinstance(e, dict):
                raise VocabularyError(f"{p}: every concept must be an object, got {type(e).__name__}.")
            cid = str(e.get("id", ""))
            if cid in concepts and i > 0:  # extension of an existing concept: merge surface forms
                old = concepts[cid]
                concepts[cid] = Concept(old.id, old.kind, old.name, old.lateral, old.aal, old.members, old.mask,
                                        old.synonyms + tuple(e.get("synonyms", ())),
                                        old.abbreviations + tuple(e.get("abbreviations", ())),
                                        old.adjectives + tuple(e.get("adjectives", ())))
            else:
                concepts[cid] = _concept_from_entry(e, str(p))
        if i > 0:
            mods += [m for m in d.get("modifiers", ()) if m not in mods]
    if not lat.get("L") or not lat.get("R"):
        raise VocabularyError(f"{base_path}: 'laterality' needs word lists for 'L' and 'R'.")
    return Vocabulary(concepts, lat, tuple(mods), sources=tuple(str(p) for p in paths))
