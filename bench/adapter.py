"""Does the multi-sequence adapter learn? Phantoms where the target shows only when two sequences combine.

    .venv/bin/python bench/adapter.py [--epochs 12] [--cases 12]

Writes a BraTS-style phantom folder (bench/phantoms.py) under .bench-data/, embeds every slice and
sequence ONCE with the frozen LiteMedSAM encoder (disk cache: later runs skip the encoder), trains the
cross-attention adapter with the mask decoder FROZEN, then compares validation Dice (tight box from
the label, held-out cases) of: the trained adapter; each single sequence alone; the non-learned
"sequences as channels" fallback. Ends with `RESULT adapter=... best_single=... channels=...`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.phantoms import PhantomSpec, write_phantom_dataset  # noqa: E402
from models.adapter import load_adapter  # noqa: E402
from models.adapter_training import TrainConfig, dice_score, evaluate, prepare, train_adapter  # noqa: E402
from models.cache import EmbeddingCache  # noqa: E402
from models.multisequence import ADAPTER_ENV, MultiSequenceSegmenter  # noqa: E402
from models.registry import build_segmenter  # noqa: E402
from prompting.promptset import PromptSet  # noqa: E402

DATA = ROOT / ".bench-data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="stop training after the epoch that crosses this")
    ap.add_argument("--resume", action="store_true", help="continue the previous run's training (adapter-phantom.pt.last)")
    a = ap.parse_args()

    folder = DATA / f"phantoms-c{a.cases}-s{a.seed}"
    if not folder.exists():
        write_phantom_dataset(folder, a.cases, a.seed, PhantomSpec())
    cache_dir = folder / ".clinseg-embeddings"
    seg = build_segmenter("litemedsam")
    out = DATA / "adapter-phantom.pt"
    if not a.resume:
        for p in (out, out.with_name(out.name + ".last")):
            p.unlink(missing_ok=True)  # train from scratch: the bench measures training too

    t0 = time.perf_counter()
    config = TrainConfig(epochs=a.epochs, seed=a.seed, max_seconds=a.minutes * 60 if a.minutes else None)
    res = train_adapter(seg, folder, out, config, resume=a.resume, cache_dir=cache_dir,
                        log_fn=lambda m: print(m, flush=True))
    train_s = time.perf_counter() - t0
    train_only_s = sum(h["seconds"] for h in res.history)

    sequences, _, val = prepare(seg, folder, config, log_fn=lambda m: None, cache=EmbeddingCache(16 << 20, cache_dir))
    adapter, _ = load_adapter(out, backend=seg.version)
    rows = [("adapter (trained, decoder frozen)", evaluate(seg, adapter, val))]
    singles = {}
    for i, s in enumerate(sequences):
        singles[s] = evaluate(seg, None, val, primary_index=i)
        rows.append((f"{s} alone", singles[s]))
    os.environ.pop(ADAPTER_ENV, None)  # measure the fallback whatever the caller's environment says
    fallback = MultiSequenceSegmenter(seg)
    assert fallback.mode == "channels"
    ch = []
    for e in val:
        s = e.sample
        m = fallback.segment({q: s.images[q] for q in sequences}, PromptSet.from_box(*s.box))
        ch.append(dice_score(m.mask, s.mask))
    channels = float(np.mean(ch))
    rows.append(("sequences as channels (fallback)", channels))

    print()
    print(f"phantom: {a.cases} cases ({res.train_samples} training / {res.val_samples} validation slices), "
          f"sequences {', '.join(sequences)}, primary {res.primary}")
    print(f"training: {len(res.history)} epochs{f' (resumed after epoch {res.resumed_from_epoch})' if res.resumed_from_epoch else ''}, "
          f"{train_only_s:.0f} s of optimisation, this run {train_s:.0f} s including embedding and validation "
          f"(CPU shared with other jobs: timings are noisy)")
    print()
    print(f"{'method':<36} {'val Dice':>8}")
    for name, d in rows:
        print(f"{name:<36} {d:8.3f}")
    print()
    for h in res.history:
        print(f"  epoch {h['epoch']:>2}  loss {h['loss']:.4f}  val Dice {h['val_dice']:.3f}")
    best_single = max(singles.values())
    print(f"RESULT adapter={rows[0][1]:.4f} best_single={best_single:.4f} channels={channels:.4f}")


if __name__ == "__main__":
    main()
