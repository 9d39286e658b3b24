"""bench/train_stop.py's replay of stop rules: the 'stops knowing the truth' bound of the handover."""
from __future__ import annotations

import itertools

import numpy as np

from bench.train_stop import truth_stops


def _traces(rows: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
    """(case, direction, step, inter, area) rows -> a trace table (only the columns the replay reads)."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return {"case": a[:, 0], "direction": a[:, 1], "step": a[:, 2], "inter": a[:, 3], "area": a[:, 4]}


def _brute_force(tp, tb, info) -> float:
    """Every pair of stops (p decoder slices, then box slices up to b) in both directions."""
    def side(t, d):
        m = (t["direction"] == d)
        order = np.argsort(t["step"][m])
        return list(zip(t["inter"][m][order], t["area"][m][order]))

    best = 0.0
    per_dir = []
    for d in (-1, 1):
        dec, box = side(tp, d), side(tb, d)
        options = []
        for p in range(len(dec) + 1):
            for b in range(p, max(len(box), p) + 1):
                kept = dec[:p] + box[p:b]
                options.append((sum(i for i, _ in kept), sum(a for _, a in kept)))
        per_dir.append(options)
    for (i1, a1), (i2, a2) in itertools.product(*per_dir):
        best = max(best, 2.0 * (info["inter"] + i1 + i2) / (info["area"] + a1 + a2 + info["truth"]))
    return best


def test_the_truth_bound_is_the_best_pair_of_stops_in_each_direction():
    rng = np.random.default_rng(3)
    for _ in range(20):
        rows_p, rows_b = [], []
        for d in (-1, 1):
            for rows, n in ((rows_p, int(rng.integers(0, 7))), (rows_b, int(rng.integers(0, 7)))):
                for step in range(1, n + 1):
                    area = int(rng.integers(1, 200))
                    rows.append((0, d, step, int(rng.integers(0, area + 1)), area))
        tp, tb = _traces(rows_p), _traces(rows_b)
        info = {"inter": int(rng.integers(50, 150)), "area": 160, "truth": int(rng.integers(200, 900))}
        assert abs(truth_stops(tp, 0, tb, 0, info) - _brute_force(tp, tb, info)) < 1e-9


def test_a_leak_past_the_end_is_cut_and_a_better_box_chain_is_taken():
    # decoder: two good slices then a leak; box chain: better slices past the decoder's second
    tp = _traces([(0, 1, 1, 90, 100), (0, 1, 2, 80, 100), (0, 1, 3, 0, 300)])
    tb = _traces([(0, 1, 1, 50, 100), (0, 1, 2, 50, 100), (0, 1, 3, 70, 80), (0, 1, 4, 0, 400)])
    info = {"inter": 100, "area": 100, "truth": 470}
    want = 2.0 * (100 + 90 + 80 + 70) / (100 + 100 + 100 + 80 + 470)
    assert abs(truth_stops(tp, 0, tb, 0, info) - want) < 1e-12
