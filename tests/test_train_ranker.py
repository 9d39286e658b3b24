"""bench/train_ranker.py's choice of training cases: which sets and which deformed subjects."""
from __future__ import annotations

import pytest

from bench.train_ranker import _training_sets, training_cases


def test_only_the_asked_sets_and_subjects_are_collected():
    got = training_cases(sets=("deformed",), deformed_seeds=(3,))
    assert list(got) == ["deformed"]
    groups = {c.group for c in got["deformed"]}
    assert groups and all(g.startswith("deformed3-z") for g in groups)
    # the brain mask of those slices is a whole-organ case of the same subject
    assert any(c.name.startswith("brain@deformed3-z") for c in got["deformed"])


def test_an_unknown_training_set_is_refused_by_name():
    assert _training_sets(" colin27,nuclei ") == ("colin27", "nuclei")
    with pytest.raises(SystemExit, match="organs"):
        _training_sets("colin27,organs")
    with pytest.raises(SystemExit, match="choose from"):
        _training_sets(" , ")
