"""Associative-recall tasks in the project's prompt format: a few distinct rows with RANDOM labels, repeated
in the shots (bursty), queries drawn from rows already seen. Only copying a seen row's label beats chance,
so the loss pushes straight toward the lookup circuit (induction), with nothing to gain from class priors.

    python research/tiny-base-experiments/recall_corpus.py OUT N_TASKS DMIN DMAX UMIN UMAX SMIN SMAX SEED [NOISE]

(run from the repo root after `mllm tokenizer --out data/tokenizer`; U = distinct rows, S = shot rows)"""
import sys
from pathlib import Path

import numpy as np

from mllm.text.corpus import corpus_record, fit_to_budget, write_corpus_shard
from mllm.text.tokenizer import load_tokenizer

out, n, dmin, dmax, umin, umax, smin, smax, seed = sys.argv[1], *map(int, sys.argv[2:10])
noise = float(sys.argv[10]) if len(sys.argv) > 10 else 0.0
tok = load_tokenizer("data/tokenizer")
rng = np.random.default_rng(seed)
recs = []
for t in range(n):
    d = int(rng.integers(dmin, dmax + 1)); k = int(rng.integers(2, 11))
    u = int(rng.integers(umin, umax + 1)); m = int(rng.integers(smin, smax + 1)); q = 10
    R = rng.integers(0, 1000, size=(u, d)); yR = rng.integers(0, k, size=u)
    idx = rng.integers(0, u, size=m)
    qi = rng.choice(np.unique(idx), size=q)
    shots = R[idx].copy(); queries = R[qi].copy()
    if noise:
        shots = np.clip(shots + rng.integers(-noise, noise + 1, size=shots.shape), 0, 999)
        queries = np.clip(queries + rng.integers(-noise, noise + 1, size=queries.shape), 0, 999)
    y, yq = yR[idx], yR[qi]
    if len(np.unique(y)) < 2: continue
    seq = fit_to_budget(tok, shots, y, queries, yq, 2048, 8)
    recs.append(corpus_record(t, "recall", d, k, q, seq))
for name in ("full", "warmup"):
    write_corpus_shard(recs, Path(out, name, "shard-00000.parquet"))
print(len(recs), sum(r["n_tokens"] for r in recs))
