"""The 30 shared tables under the authors' evaluation protocol (the evaluate stage's): the default model beside
RandomForest (30 trees), kNN (k=8), XGBoost (500 trees) with the authors' settings and the majority class.

    python benchmarks/protocol.py [--quick] [--model models/tiny-base] [--out results.csv] [--cutoff-len N]

Every table of ../shared/datasets (the model scores up to 100 classes), an 80/20 unstratified split with seed
42, test rows in chunks of 50 (the first 50 test rows: one chunk), each chunk with its own draw of shots
(8/32/128/512) from the training part, rows and columns reordered per seed (0, 1), probabilities voted across
the seeds. Contexts over the model's window (tiny-base: 16,384 tokens; 2,048 before version 2.1), or over
--cutoff-len, are answered from their nearest-neighbour shots (counted). Prints mean voted accuracy and weighted F1 by shots per model; the last line is the model's voted
accuracy at 128 shots over RandomForest's, same run (--quick: 3 tables, 8 and 32 shots, one seed, 20 rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATASETS, machine


def run(model_dir: str, shots: list[int], seeds: list[int], max_test: int, max_tables: int | None,
        cutoff_len: int | None = None):
    import pandas as pd

    from mllm.core.params import MAX_LABELS
    from mllm.evaluation.models import InContext
    from mllm.evaluation.suite import baseline, evaluate_dataset, load_table
    from mllm.inference.predict import Predictor
    from mllm.inference.scoring import label_capacity
    from mllm.model.loading import load_trained_with_tokenizer

    model, tok = load_trained_with_tokenizer(model_dir)
    cap = min(label_capacity(tok), MAX_LABELS)
    models = {"mllm": InContext(Predictor(model, tok, max_queries=10, cutoff_len=cutoff_len)),
              **{b: baseline(b, 0) for b in ("random_forest", "knn", "xgboost", "majority")}}
    rows, used, skipped = [], [], []
    for path in sorted(SHARED_DATASETS.glob("*.csv"))[:max_tables]:
        X, y = load_table(path)
        if y.nunique() > cap:
            skipped.append(f"{path.stem} ({y.nunique()} classes)")
            continue
        t0 = time.perf_counter()
        rows += evaluate_dataset(path.stem, X, y, models, shots, seeds, max_test=max_test, test_chunk=50)
        used.append(path.stem)
        print(f"  {path.stem}: {X.shape[0]} rows x {X.shape[1]} features, {y.nunique()} classes, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return pd.DataFrame(rows), used, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a faithful run in about a minute")
    ap.add_argument("--model", default=str(ROOT / "models" / "tiny-base"), help="model dir")
    ap.add_argument("--out", default=None, help="write every row (table, shots, model, seed) to this CSV")
    ap.add_argument("--cutoff-len", type=int, default=None, help="tokens per sequence (default: the model's window)")
    args = ap.parse_args()
    shots, seeds, max_test, max_tables = ([8, 32], [0], 20, 3) if args.quick else ([8, 32, 128, 512], [0, 1], 50, None)
    print(f"machine: {machine()}; model {args.model}")
    t0 = time.perf_counter()
    df, used, skipped = run(args.model, shots, seeds, max_test, max_tables, args.cutoff_len)
    if args.out:
        df.to_csv(args.out, index=False)
    votes = df[df.seed.astype(str) == "vote"]
    print(f"{len(used)} tables, {len(seeds)} seed(s), the first {max_test} test rows each, "
          f"{time.perf_counter() - t0:.0f} s" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    for metric in ("accuracy", "weighted_f1"):
        print(f"mean voted {metric} by shots:")
        print(votes.groupby(["shots", "model"])[metric].mean().unstack("model").round(3).to_string())
    nn = df[(df.model == "mllm") & (df.seed.astype(str) != "vote")].groupby("shots").nn_shots.mean()
    print("share of (table, seed) runs answered from nearest-neighbour shots: "
          + ", ".join(f"{n} shots {v:.0%}" for n, v in nn.items()))
    at = 128 if 128 in shots else shots[-1]
    acc = votes[votes.shots == at].groupby("model").accuracy.mean()
    print(f"voted accuracy at {at} shots over {len(used)} tables, mllm {acc['mllm']:.3f} vs RandomForest(30) "
          f"{acc['random_forest']:.3f}: ratio {acc['mllm'] / acc['random_forest']:.3f}")


if __name__ == "__main__":
    main()
