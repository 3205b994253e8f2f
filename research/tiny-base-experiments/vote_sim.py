"""The tiny base's vote in numpy, to try a mechanism on the 30 shared tables in seconds before compiling it.

Reproduces version 2.2 (softmax(tau sum_c w_c cos(pi |u_c - v_c| / 1998)) over the shots, column c in slot
(F - 1 - c) mod 48) within half a point of the real model on the predict benchmark's protocol, and adds the
candidates research/README.md reports: column weights from the shots' between-class share of variance
(every shot at once, or causally as the compiled version 2.3 does), and the kernel width chosen per task by
the shots' leave-one-out accuracy; then the candidates tried after 2.3 (research/README.md, "After 2.3"): the
weights normalised (``norm``), r less its value for an unrelated column (``debias``), an in-context centroid
classifier (``Centroid`` from all shots, ``CausalCentroid`` as one attention head can compute it) and the mean
of two models' probabilities (``Ens``); then bagged votes over random subsets of the slots (``Subspace``), an
L1-shaped per-column kernel (``Shape``) and rank-normalised inputs (``Quantile``).

    python research/tiny-base-experiments/vote_sim.py OUT.csv 32,128 'rel=Vote(relevance="causal")' ...

Each NAME=EXPR builds a model from this module's names; v22 (the plain vote) and kNN always run; RF=1 adds
RandomForest and logistic regression; TABLES=a,b limits the tables; SUITE=1 runs the evaluate stage's four
scikit-learn tables (60 test rows) instead of the 30."""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mllm.evaluation.suite import VOTE, baseline, evaluate_dataset, load_table, sklearn_datasets
from mllm.model.plant import U_VAR  # variance of a standardised column in U = sin(theta - pi/4)
from mllm.text.encoding import ordinal_encode, quantise

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
SLOTS = 48
SUITE = ("iris", "wine", "breast_cancer", "digits")   # SUITE=1: the evaluate stage's default tables instead


def summaries(codes: np.ndarray) -> np.ndarray:
    """(n, SLOTS, 2): each row's quarter-turn codes, the m-th value from the row's end in slot m mod 48."""
    n, f = codes.shape
    theta = np.pi * codes.astype(float) / 1998
    z = np.stack([np.cos(theta), np.sin(theta)], -1)
    out = np.zeros((n, SLOTS, 2))
    for col in range(f):
        out[:, (f - 1 - col) % SLOTS] += z[:, col]
    return out


U_PROJ = np.array([-np.sqrt(0.5), np.sqrt(0.5)])   # a slot's code -> U = sin(theta - pi/4)


def coded(ctx, y, test):
    """(classes, the shots' label indices, the shots' and the queries' slot summaries), as the base reads them."""
    s, q, _ = ordinal_encode(ctx, test)
    cs, cq = quantise(s, q)
    classes, yi = np.unique(y, return_inverse=True)
    return classes, yi, summaries(cs), summaries(cq)


def class_mean_so_far(U: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """At each shot, per slot: the mean of U over the shots of its class so far minus the mean so far."""
    n, onehot = len(y), np.eye(k)[y]
    mean = np.cumsum(U, 0) / np.arange(1, n + 1)[:, None]
    class_sum = np.cumsum(onehot[:, :, None] * U[:, None], 0)[np.arange(n), y]
    return class_sum / np.cumsum(onehot, 0)[np.arange(n), y][:, None] - mean


def relevance(S: np.ndarray, y: np.ndarray, k: int, how: str, warmup: float) -> np.ndarray:
    """r per slot: between-class variance of U over U_VAR. ``all``: class means of all shots; ``causal``:
    at each shot the mean of its class so far minus the mean so far, squared, averaged over the shots with
    weights exp(-2 warmup / (shots so far + 2)) (what layers 10-11 of version 2.3 compute)."""
    U = S @ U_PROJ
    n, onehot = len(y), np.eye(k)[y]
    if how == "all":
        cnt = onehot.sum(0)
        means = onehot.T @ U / np.maximum(cnt, 1)[:, None]
        return (cnt[:, None] * (means - U.mean(0)) ** 2).sum(0) / n / U_VAR
    weight = np.exp(-2 * warmup / (np.arange(1, n + 1) + 2))
    return ((class_mean_so_far(U, y, k) ** 2) * weight[:, None]).sum(0) / weight.sum() / U_VAR


def column_weights(S, y, k, how, gain=20.0, offset=0.05, warmup=20.0, cap=None, debias=0.0, per_class=False):
    """Per slot: silu(gain (r + offset)) (capped at ``cap``), r from ``relevance``; all ones when ``how`` is None."""
    if not how:
        return np.ones(SLOTS)
    r = relevance(S, y, k, how, warmup)
    # what r is for a column unrelated to the label: about (K - 1) / n (per_class) or 1 / n
    r = r - debias * ((k - 1) if per_class else 1) / len(y)
    x = gain * (r + offset)
    return silu(x) if cap is None else silu(x) - silu(x - cap)


class Vote:
    """The kernel vote; ``relevance`` None/"all"/"causal" weighs slot c by silu(gain (r_c + offset));
    ``taus`` chooses tau per task by the shots' leave-one-out accuracy."""

    def __init__(self, tau=48.0, relevance=None, gain=20.0, offset=0.05, warmup=20.0, taus=None, cap=None,
                 norm=None, debias=0.0, per_class=False):
        self.tau, self.how, self.gain, self.offset, self.warmup, self.taus = tau, relevance, gain, offset, warmup, taus
        self.cap, self.norm, self.debias, self.per_class = cap, norm, debias, per_class

    def __call__(self, ctx, y, test):
        classes, yi, Ss, Sq = coded(ctx, y, test)
        onehot = np.eye(len(classes))[yi]
        w = column_weights(Ss, yi, len(classes), self.how, self.gain, self.offset, self.warmup, self.cap,
                           self.debias, self.per_class)
        active = np.abs(Sq).sum((0, 2)) > 0
        if self.norm == "mean":      # w / the mean weight of the row's columns: the kernel keeps its width
            w = w / w[active].mean()
        elif self.norm == "l2":      # w / the L2 norm of the weighted row (an RMS norm's division): tau / sqrt(F)
            w = w / np.sqrt((w[active] ** 2).sum())
        tau = self.tau
        if self.taus:
            sims = np.einsum("isd,jsd,s->ij", Ss, Ss, w) - 1e9 * np.eye(len(yi))
            tau = max(self.taus, key=lambda t: (softmax(t * sims) @ onehot).argmax(1).__eq__(yi).mean())
        return classes, softmax(tau * np.einsum("qsd,nsd,s->qn", Sq, Ss, w)) @ onehot


class Centroid:
    """Diagonal LDA on U (each slot's centred coordinate): score_k = sum_c (U_c m_kc - m_kc^2 / 2) / v_c * scale
    + log n_k, m the class means and v the pooled within-class variance (``shrink`` toward U_VAR): a head
    whose keys are the class means and whose softmax over the shots adds the class counts."""

    def __init__(self, scale=1.0, shrink=0.1):
        self.scale, self.shrink = scale, shrink

    def __call__(self, ctx, y, test):
        classes, yi, Ss, Sq = coded(ctx, y, test)
        Us, Uq, onehot = Ss @ U_PROJ, Sq @ U_PROJ, np.eye(len(classes))[yi]
        cnt = onehot.sum(0)
        means = onehot.T @ Us / cnt[:, None]
        var = ((Us - means[yi]) ** 2).mean(0)
        var = (1 - self.shrink) * var + self.shrink * U_VAR
        score = ((Uq[:, None] * means[None] - means[None] ** 2 / 2) / var).sum(-1) * self.scale + np.log(cnt)
        return classes, softmax(score)


class CausalCentroid:
    """The centroid score as one attention head can compute it: at shot i the key is d_i = the mean of its class
    so far minus the mean so far (U per slot), scored against the query's U minus the shots' mean, less
    |d_i|^2 / 2, all over ``var`` (U_VAR: every column is standardised before it is coded); the softmax runs over
    the shots, so class k collects its count times its centroid score."""

    def __init__(self, scale=1.0, var=None, warmup=0.0):
        self.scale, self.var, self.warmup = scale, var, warmup

    def __call__(self, ctx, y, test):
        classes, yi, Ss, Sq = coded(ctx, y, test)
        Us, Uq = Ss @ U_PROJ, Sq @ U_PROJ
        d = class_mean_so_far(Us, yi, len(classes))
        so_far = np.arange(1, len(yi) + 1)
        var = self.var or U_VAR
        score = ((Uq - Us.mean(0)) @ d.T - (d ** 2).sum(1) / 2) * self.scale / var
        score = score - self.warmup * 2 / (so_far + 2)      # the first shots' class means are noisy
        return classes, softmax(score) @ np.eye(len(classes))[yi]


class Subspace:
    """The mean of ``heads`` kernel votes, head h over a fixed random subset of the slots (each slot in with
    probability ``frac``, drawn once from ``seed``, as a compiled head's query would select them), the columns
    weighted as in ``Vote``: bagged sub-classifiers, one attention head each."""

    def __init__(self, heads=32, frac=0.5, tau=250.0, relevance="causal", gain=20.0, seed=0):
        self.masks = (np.random.default_rng(seed).random((heads, SLOTS)) < frac).astype(float)
        self.tau, self.how, self.gain = tau, relevance, gain

    def __call__(self, ctx, y, test):
        classes, yi, Ss, Sq = coded(ctx, y, test)
        onehot = np.eye(len(classes))[yi]
        w = column_weights(Ss, yi, len(classes), self.how, self.gain)
        sims = np.einsum("qsd,nsd->qns", Sq, Ss)
        return classes, np.mean([softmax(self.tau * (sims @ (w * m))) @ onehot for m in self.masks], 0)


class Shape:
    """The vote with another per-column log-kernel: -|delta|^p, delta the angle between a slot's two codes
    (the cosine kernel is about 1 - delta^2 / 2, so p = 2 and tau = 24 is version 2.3's tau 48; p = 1 is an L1
    distance, which one far-off column moves less)."""

    def __init__(self, p=1.0, tau=10.0, relevance="causal", gain=20.0):
        self.p, self.tau, self.how, self.gain = p, tau, relevance, gain

    def __call__(self, ctx, y, test):
        classes, yi, Ss, Sq = coded(ctx, y, test)
        w = column_weights(Ss, yi, len(classes), self.how, self.gain)
        on = np.abs(Sq).sum((0, 2)) > 0
        dots = np.einsum("qsd,nsd->qns", Sq[:, on], Ss[:, on])
        # a slot holding two aliased columns is not of unit length: the angle of the normalised codes
        norms = np.linalg.norm(Sq[:, on], axis=-1)[:, None] * np.linalg.norm(Ss[:, on], axis=-1)[None]
        delta = np.arccos(np.clip(dots / np.maximum(norms, 1e-12), -1, 1))
        return classes, softmax(-self.tau * (delta ** self.p) @ w[on]) @ np.eye(len(classes))[yi]


class Quantile:
    """Any model on numeric columns first mapped through the shots' empirical CDF (mid-ranks) and the normal
    quantile: the encoding a rank-based learner would see (the encoder z-scores it again)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, ctx, y, test):
        from scipy.stats import norm

        ctx, test = ctx.copy(), test.copy()
        for col in ctx.columns:
            if not pd.api.types.is_numeric_dtype(ctx[col]) or pd.api.types.is_bool_dtype(ctx[col]):
                continue
            s, q = ctx[col].to_numpy(float), pd.to_numeric(test[col], errors="coerce").to_numpy(float)
            known = np.sort(s[~np.isnan(s)])
            if len(known) < 2:
                continue

            def scores(x, known=known):
                mid = (np.searchsorted(known, x, "left") + np.searchsorted(known, x, "right")) / 2
                return np.where(np.isnan(x), np.nan, norm.ppf((mid + 0.5) / (len(known) + 1)))
            ctx[col], test[col] = scores(s), scores(q)
        return self.model(ctx, y, test)


class Ens:
    """The weighted mean of two models' probabilities."""

    def __init__(self, a, b, wa=0.5):
        self.a, self.b, self.wa = a, b, wa

    def __call__(self, ctx, y, test):
        ca, pa = self.a(ctx, y, test)
        _, pb = self.b(ctx, y, test)
        return ca, self.wa * pa + (1 - self.wa) * pb


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> None:
    out, shots = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    models = {"v22": Vote(), "knn": baseline("knn", 0)}
    if os.environ.get("RF"):
        models |= {"rf": baseline("random_forest", 0), "lr": baseline("logistic_regression", 0)}
    for spec in sys.argv[3:]:
        name, expr = spec.split("=", 1)
        models[name] = eval(expr, globals())
    wanted = os.environ.get("TABLES")
    rows = []
    tables = ({name: xy for name, xy in sklearn_datasets().items() if name in SUITE} if os.environ.get("SUITE")
              else {p.stem: load_table(p) for p in sorted(SHARED.glob("*.csv"))})
    for name, (X, y) in tables.items():
        if not wanted or name in wanted.split(","):
            rows += evaluate_dataset(name, X, y, models, shots, [0, 1], max_test=60 if os.environ.get("SUITE") else 50)
    df = pd.DataFrame(rows)
    df.to_csv(out, index=False)
    df = df[df.seed.astype(str) != VOTE]
    print(df.pivot_table(index="shots", columns="model", values="accuracy").round(4).to_string())


if __name__ == "__main__":
    main()
