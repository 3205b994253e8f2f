"""Mean accuracy of model dirs on the shared tables at given shots and seeds, with the protocol of
benchmarks/predict.py (the same splits, shots and test rows, the model's whole window), one CSV row per
(table, shots, seed, model).

    python research/tiny-base-experiments/tables_at_shots.py OUT.csv 32,128 0,1 name=models/tiny-base [name=dir ...]

TABLES=a,b limits the tables; NT sets torch threads (default 1, so two runs can share two cores)."""

import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from mllm.evaluation.models import InContext
from mllm.evaluation.suite import VOTE, evaluate_dataset, load_table
from mllm.inference.predict import Predictor
from mllm.model.loading import load_trained_with_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def main() -> None:
    torch.set_num_threads(int(os.environ.get("NT", "1")))
    out, shots, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], [int(s) for s in sys.argv[3].split(",")]
    models = {}
    for spec in sys.argv[4:]:
        name, path = spec.split("=", 1)
        models[name] = InContext(Predictor(*load_trained_with_tokenizer(path), max_queries=10))
    wanted = os.environ.get("TABLES")
    paths = [p for p in sorted(SHARED.glob("*.csv")) if not wanted or p.stem in wanted.split(",")]
    rows = []
    for p in paths:
        X, y = load_table(p)
        t = time.time()
        rows += evaluate_dataset(p.stem, X, y, models, shots, seeds, max_test=50)
        print(p.stem, X.shape, f"{time.time() - t:.0f}s", flush=True)
        pd.DataFrame(rows).to_csv(out, index=False)
    df = pd.DataFrame(rows)
    df = df[df.seed.astype(str) != VOTE]
    print(df.pivot_table(index="shots", columns="model", values="accuracy").round(4).to_string())


if __name__ == "__main__":
    main()
