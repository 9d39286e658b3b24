"""Query understanding: targets, patient laterality, modifiers, several targets, and 'not found'."""
from __future__ import annotations

import json

import pytest

from integrations.errors import InvalidPromptError
from prompting.query import QueryParser
from prompting.vocabulary import VocabularyError, load_vocabulary


@pytest.fixture(scope="module")
def parser():
    return QueryParser(load_vocabulary(use_env=False))


def displays(q):
    return [t.display for t in q.targets]


def test_vocabulary_covers_all_116_aal_regions():
    vocab = load_vocabulary(use_env=False)
    names = [line.split()[1] for line in open("app/demo/colin27_demo_aal.txt") if line.strip()]
    assert len(names) == 116
    assert set(names) <= set(vocab.aal_codes())
    for n in names:  # every AAL code is itself a query that resolves to exactly that region
        assert [s.concept_id for s in vocab.lookup(n)], n


@pytest.mark.parametrize("text,expected", [
    ("left hippocampus", ["Hippocampus_L"]),
    ("Hippocampus_L", ["Hippocampus_L"]),
    ("the left hippocampal formation", ["Hippocampus_L"]),
    ("L hippocampus", ["Hippocampus_L"]),
    ("segment the right putamen please", ["Putamen_R"]),
    ("rt thalamus", ["Thalamus_R"]),
    ("amygdala, right", ["Amygdala_R"]),
    ("left SMA", ["Supp_Motor_Area_L"]),
    ("Cerebelum_Crus1_R", ["Cerebelum_Crus1_R"]),
    ("Vermis_4_5", ["Vermis_4_5"]),
    ("the brain", ["brain"]),
    ("whole brain", ["brain"]),
    ("hipocampus left", ["Hippocampus_L"]),  # spelling
    ("left hippocampi", ["Hippocampus_L"]),  # plural
])
def test_single_targets(parser, text, expected):
    assert displays(parser.parse(text)) == expected


def test_laterality_is_the_patients_and_both_sides_when_unsaid(parser):
    assert displays(parser.parse("hippocampus")) == ["Hippocampus_L", "Hippocampus_R"]
    assert "no side given: both sides" in parser.parse("hippocampus").targets[0].notes
    assert displays(parser.parse("bilateral caudate")) == ["Caudate_L", "Caudate_R"]
    # A side word on a midline structure is ignored, with a note saying so.
    q = parser.parse("left vermis lobule VI")
    assert displays(q) == ["Vermis_6"] and "no sides" in q.targets[0].notes[0]


def test_several_targets_in_one_query(parser):
    assert displays(parser.parse("brain; left hippocampus")) == ["brain", "Hippocampus_L"]
    assert displays(parser.parse("left and right putamen")) == ["Putamen_L", "Putamen_R"]
    assert displays(parser.parse("putamen left and right")) == ["Putamen_L", "Putamen_R"]
    assert displays(parser.parse("left caudate and right thalamus")) == ["Caudate_L", "Thalamus_R"]
    # A name that contains "and" stays one target.
    assert displays(parser.parse("portal vein and splenic vein")) == ["portal vein and splenic vein"]


def test_modifiers_are_kept_on_the_target(parser):
    q = parser.parse("lesion in the left kidney")
    assert displays(q) == ["left kidney"] and q.targets[0].modifiers == ("lesion",)
    q = parser.parse("enhancing tumour")  # a lesion term alone is the target
    assert [t.concept.kind for t in q.targets] == ["lesion"]


@pytest.mark.parametrize("text", ["banana", "left banana", "xylophone solo", "qwertyuiop", "the moon", "sky"])
def test_unknown_words_are_not_found(parser, text):
    q = parser.parse(text)
    assert not q.found and q.unmatched
    assert "matches no known structure" in q.explain()


def test_partly_known_query_reports_the_unknown_part(parser):
    q = parser.parse("left putamen; banana")
    assert displays(q) == ["Putamen_L"] and q.unmatched == ("banana",)


def test_empty_query_is_a_readable_error(parser):
    with pytest.raises(InvalidPromptError, match="empty"):
        parser.parse("   ")


def test_explanation_names_concept_and_route(parser):
    assert parser.parse("left hippocampus").targets[0].explain() == "matched 'Hippocampus_L' via name 'left hippocampus'"
    assert "synonym 'left hippocampal formation'" in parser.parse("the left hippocampal formation").explain()
    assert "AAL name 'Hippocampus_L'" in parser.parse("Hippocampus_L").explain()


def test_user_extension_file_adds_and_merges(tmp_path, monkeypatch):
    extra = tmp_path / "mine.json"
    extra.write_text(json.dumps({"concepts": [
        {"id": "Hippocampus", "kind": "aal", "aal": "Hippocampus", "synonyms": ["seahorse"]},
        {"id": "pineal", "kind": "organ", "name": "pineal gland", "synonyms": ["epiphysis cerebri"]},
    ]}))
    monkeypatch.setenv("CLINSEG_VOCABULARY", str(extra))
    p = QueryParser(load_vocabulary())
    assert displays(p.parse("left seahorse")) == ["Hippocampus_L"]
    assert displays(p.parse("epiphysis cerebri")) == ["pineal gland"]
    assert "hippocampal formation" in p.vocab.concepts["Hippocampus"].synonyms  # merged, not replaced


def test_bad_extension_file_is_a_readable_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"concepts": [{"id": "x", "kind": "planet"}]}')
    with pytest.raises(VocabularyError, match="kind 'planet'"):
        load_vocabulary(extra=[bad], use_env=False)
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary(extra=[tmp_path / "missing.json"], use_env=False)
