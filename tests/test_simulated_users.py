"""The benchmark's simulated users (bench/simulated_users.py) do what DESIGN.md says a user does."""
import numpy as np

from bench import simulated_users as su


def _comb() -> np.ndarray:
    """A bar 140 px long with teeth up and down: a skeleton with many forks, like the brain's."""
    m = np.zeros((120, 160), bool)
    m[50:70, 10:150] = True
    for x in (30, 60, 90, 120):
        m[20:50, x - 6:x + 6] = True
        m[70:105, x - 6:x + 6] = True
    return m


def test_a_scribble_runs_the_length_of_a_branched_structure():
    m = _comb()
    line = su.scribble(m, np.random.default_rng(0), sigma=0.0)
    # one stroke from one end of the structure to the other, not a twig between two forks
    assert np.ptp(line[:, 0]) >= 0.6 * 140
    assert m[line[:, 1].round().astype(int), line[:, 0].round().astype(int)].all()
    steps = np.hypot(*np.diff(line, axis=0).T)
    assert steps.max() <= 140 / 63 * 1.5 + 1.5  # a continuous stroke (64 vertices at most), no jump


def test_the_longest_stroke_of_a_plain_line_is_the_line():
    sk = np.zeros((20, 50), bool)
    sk[10, 5:45] = True
    sk[11, 20] = True  # a one-pixel spur
    line = su._longest_stroke(sk)
    assert {tuple(line[0]), tuple(line[-1])} == {(5.0, 10.0), (44.0, 10.0)}
    assert len(line) == 40
