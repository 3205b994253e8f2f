"""In-context prediction: a large test table, the prefix cache, and the learning curve on real tables.

    python benchmarks/predict.py [--quick] [--model models/tiny-base]

(0) A large test table: heloc (22 features, so 128 shots do not fit a 2,048-token budget and shot
retrieval is needed) with a 128-row context; every other row (9,872; --quick: 300) predicted as
`mllm predict` does (batched blocks, one prefix per group of similar queries), and the first 1,000
(--quick: 300) by the previous path (one chunk at a time, each chunk with its own retrieved shots and
prefix, Jacobi decoding), same run. Seconds per row and accuracy of each; the last line is the ratio of
per-row times (previous / batched).

(1) Wall time per predicted row on the default model at M = 128 shots (2 features, so that 128 shots and
50 queries fit 2,048 tokens): 50 queries per sequence with the shared prefix's KV cache, vs one query per
prompt (the whole prompt run again for every row), same table, same run. (2) Accuracy vs number of shots on ../shared/datasets (every table with no more classes than the model scores;
contexts over the model's window, or --cutoff-len, get nearest-neighbour shots), next to kNN (k=8, distance),
RandomForest (30 trees) and the majority class, on the same splits and shots; then the same from 128 to 512
shots on the tables whose 512-shot context fits (no retrieval).
The last line is the speed ratio (one-per-prompt time / cached time per row).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATASETS, machine  # noqa: E402


def _model(path: str):
    from mllm.model.loading import load_trained_with_tokenizer

    return load_trained_with_tokenizer(path)


def speed(model, tok, n_rows: int, repeats: int) -> dict:
    import numpy as np
    import pandas as pd

    from mllm.inference.predict import Predictor, encode_tables

    rng = np.random.default_rng(0)
    d = 2  # 128 shots + 50 queries must fit the tiny base's 2048 tokens in one sequence
    ctx = pd.DataFrame(rng.normal(size=(128, d)))
    y = rng.integers(0, 3, size=128)
    qry = pd.DataFrame(rng.normal(size=(n_rows, d)))
    enc = encode_tables(ctx, y, qry)
    out = {}
    for name, pred in (("cached_50", Predictor(model, tok, max_queries=50)),
                       ("one_per_prompt", Predictor(model, tok, max_queries=1, cache_prefix=False, decode="sequential"))):
        pred.predict_proba_encoded(encode_tables(ctx, y, qry.iloc[:2]))  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            pred.predict_proba_encoded(enc)
        out[name] = (time.perf_counter() - t0) / (repeats * n_rows)
    return out


def large_table(model, tok, n_rows: int, previous_rows: int) -> dict:
    import numpy as np

    from mllm.inference.predict import Predictor, encode_tables
    from mllm.inference.table import load_table

    X, y = load_table(SHARED_DATASETS / "heloc.csv")
    order = np.random.default_rng(0).permutation(len(X))
    ctx, test = order[:128], order[128:128 + n_rows]
    out = {"rows": len(test), "previous_rows": min(previous_rows, len(test))}
    for name, pred, rows in (("batched", Predictor(model, tok, cutoff_len=2048), test),
                             ("previous", Predictor(model, tok, decode="parallel", cutoff_len=2048), test[:previous_rows])):
        enc = encode_tables(X.iloc[ctx], y.iloc[ctx], X.iloc[rows])
        t0 = time.perf_counter()
        proba = pred.predict_proba_encoded(enc)
        out[name] = (time.perf_counter() - t0) / len(rows)
        hit = enc.labels.classes[proba.argmax(axis=1)] == y.iloc[rows].to_numpy()
        out[f"{name}_accuracy"] = float(hit.mean())
        out[f"{name}_accuracy_shared"] = float(hit[:previous_rows].mean())
        out[f"{name}_stats"] = dict(pred.stats)
    return out


def learning_curve(model, tok, shots: list[int], seeds: list[int], max_test: int, max_tables: int,
                   cutoff_len: int | None = None) -> "object":
    import pandas as pd

    from mllm.evaluation.models import InContext
    from mllm.evaluation.suite import baseline, evaluate_dataset, load_table
    from mllm.inference.predict import Predictor
    from mllm.inference.scoring import label_capacity

    models = {"mllm": InContext(Predictor(model, tok, max_queries=10, cutoff_len=cutoff_len)),
              "knn": baseline("knn", 0), "random_forest": baseline("random_forest", 0),
              "majority": baseline("majority", 0)}
    rows, used = [], []
    for path in sorted(SHARED_DATASETS.glob("*.csv")):
        X, y = load_table(path)
        if y.nunique() > label_capacity(tok):
            continue  # more classes than the model scores (contexts over the window use shot retrieval)
        used.append(path.stem)
        rows += evaluate_dataset(path.stem, X, y, models, shots, seeds, max_test=max_test)
        if len(used) >= max_tables:
            break
    return pd.DataFrame(rows), used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a faithful run in about a minute")
    ap.add_argument("--model", default=str(ROOT / "models" / "tiny-base"), help="trained model dir")
    ap.add_argument("--only-large", action="store_true", help="only the large-table comparison (0)")
    ap.add_argument("--cutoff-len", type=int, default=None, help="tokens per sequence in (2) (default: the model's window)")
    args = ap.parse_args()
    model, tok = _model(args.model)
    # 200 test rows = 4 chunks of 50 sharing one cached prefix (one chunk alone: reported too)
    n_rows, repeats = (200, 1) if args.quick else (200, 3)
    # Contexts over the window are answered with nearest-neighbour shot retrieval.
    shots, seeds, max_test, max_tables = ([8, 32, 128], [0], 30, 3) if args.quick else ([8, 16, 32, 64, 128, 512], [0, 1], 50, 30)

    big = large_table(model, tok, *((300, 300) if args.quick else (10**6, 1000)))
    print(f"machine: {machine()}; model {args.model}")
    if not args.only_large:
        _report_curve_and_cache(model, tok, shots, seeds, max_test, max_tables, n_rows, repeats, args.cutoff_len,
                                save=not args.quick)
    print(f"large table (heloc, 128-row context, shot retrieval): batched {big['batched'] * 1000:.1f} ms/row over "
          f"{big['rows']} rows (accuracy {big['batched_accuracy']:.3f}; {big['batched_stats']['prefixes']} prefixes), "
          f"previous path {big['previous'] * 1000:.1f} ms/row over the first {big['previous_rows']} "
          f"(accuracy {big['previous_accuracy']:.3f} vs batched {big['batched_accuracy_shared']:.3f} on those rows; "
          f"{big['previous_stats']['sequences']} prefixes)")
    print(f"large-table prediction, batched blocks vs the previous per-chunk path ({big['rows']} rows): ratio "
          f"{big['previous'] / big['batched']:.1f}")


def _report_curve_and_cache(model, tok, shots, seeds, max_test, max_tables, n_rows, repeats, cutoff_len,
                            save: bool) -> None:
    curve, used = learning_curve(model, tok, shots, seeds, max_test, max_tables, cutoff_len)
    if save:  # the full run's figures per table, beside BENCHMARKS.md's means
        curve.to_csv(ROOT / "benchmarks" / "predict_curve.csv", index=False)
    sp = speed(model, tok, n_rows, repeats)
    one = speed(model, tok, 50, repeats)
    print(f"learning curve: mean accuracy over {len(used)} tables ({', '.join(used)}), "
          f"{len(seeds)} seed(s), up to {max_test} test rows each")
    per = curve[curve.seed.astype(str) != "vote"]
    print(per.groupby(["shots", "model"]).accuracy.mean().unstack("model").round(3).to_string())
    retrieved = per[(per.model == "mllm") & per.nn_shots].groupby("shots").dataset.nunique()
    print("tables answered from retrieved shots (context over the window), by shots: "
          + (", ".join(f"{s}: {n}" for s, n in retrieved.items()) or "none"))
    if 512 in shots:
        fits = sorted(set(per[(per.model == "mllm") & (per.shots == 512) & ~per.nn_shots].dataset))
        long = per[per.dataset.isin(fits) & per.shots.isin([128, 512])]
        print(f"128 -> 512 shots on the {len(fits)} tables whose 512-shot context fits ({', '.join(fits)}):")
        print(long.groupby(["shots", "model"]).accuracy.mean().unstack("model").round(3).to_string())
    print(f"per row at M=128, 50 test rows (one chunk): cached {one['cached_50'] * 1000:.1f} ms, one query per "
          f"prompt {one['one_per_prompt'] * 1000:.1f} ms (ratio {one['one_per_prompt'] / one['cached_50']:.1f})")
    print(f"per row at M=128, {n_rows} test rows: cached 50 queries/sequence {sp['cached_50'] * 1000:.1f} ms, "
          f"one query per prompt {sp['one_per_prompt'] * 1000:.1f} ms")
    print(f"prefix cache + 50 queries per sequence vs one query per prompt ({n_rows} rows): ratio "
          f"{sp['one_per_prompt'] / sp['cached_50']:.1f}")


if __name__ == "__main__":
    main()
