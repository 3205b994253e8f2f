"""Trivially easy tasks straight into a corpus: d in [dmin,dmax], K=2..kmax, clean rules (a quantile cut of a
random projection, or the nearest of K random centres), no teacher filter.

    python research/tiny-base-experiments/easy_corpus.py OUT N DMIN DMAX KMAX SMIN SMAX SEED [REPEAT_SHARE]
"""
import sys
from pathlib import Path

import numpy as np

from mllm.text.corpus import corpus_record, fit_to_budget, write_corpus_shard
from mllm.text.encoding import quantise
from mllm.text.tokenizer import load_tokenizer

out, n, dmin, dmax, kmax, smin, smax, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
dup = float(sys.argv[9]) if len(sys.argv) > 9 else 0.0
tok = load_tokenizer("data/tokenizer")
rng = np.random.default_rng(seed)
recs = []
for t in range(n):
    d = int(rng.integers(dmin, dmax + 1)); k = int(rng.integers(2, kmax + 1))
    m = int(np.exp(rng.uniform(np.log(smin), np.log(smax)))); q = 10
    X = rng.normal(size=(m + q, d))
    if rng.random() < 0.5:   # linear: k classes by quantiles of a projection
        w = rng.normal(size=d); s = X @ w
    else:                    # nearest of k random centres (in a random subset of the features)
        C = rng.normal(size=(k, d)) * 1.5
        s = None
    if s is not None:
        cuts = np.quantile(s[:m], np.linspace(0, 1, k + 1)[1:-1]); y = np.searchsorted(cuts, s)
    else:
        y = ((X[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
    if len(np.unique(y[:m])) < 2: continue
    y = np.unique(y, return_inverse=True)[1]
    for i in range(4, m + q):
        if rng.random() < dup:
            j = int(rng.integers(0, min(i, m)))
            X[i] = X[j]; y[i] = y[j]
    K = int(y.max()) + 1
    shots, queries = quantise(X[:m], X[m:])
    seq = fit_to_budget(tok, shots, y[:m], queries, y[m:], 2048, 8)
    recs.append(corpus_record(t, "easy", d, K, q, seq))
for name in ("full", "warmup"):
    write_corpus_shard(recs, Path(out, name, "shard-00000.parquet"))
print(len(recs), sum(r["n_tokens"] for r in recs))
