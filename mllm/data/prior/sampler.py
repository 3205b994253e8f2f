"""Sample one classification task: shape, SCM, node selection, classes, categorical columns."""

from __future__ import annotations

import numpy as np

from mllm.core.params import GenerateParams
from mllm.data.prior.causes import CAUSE_SAMPLINGS, sample_causes
from mllm.data.prior.classify import CLASS_MODES, discretise_columns, to_classes
from mllm.data.prior.mlp_scm import mlp_scm_layers, sample_mlp_hyperparams
from mllm.data.prior.tree_scm import sample_tree_hyperparams, tree_scm_layers
from mllm.data.task import Task


class TaskGenerationError(RuntimeError):
    """No valid task after ``max_attempts`` redraws (the params leave too little room)."""


def task_rng(seed: int, task_id: int) -> np.random.Generator:
    """The only source of randomness for task ``task_id``: independent of every other task."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, task_id])))


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return min(hi, int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))))


def _sample_k(rng: np.random.Generator, p: GenerateParams) -> int:
    lo, hi = p.classes.min, p.classes.max
    if lo <= 2 <= hi and (lo == hi or rng.random() < p.binary_share):
        return 2
    return int(rng.integers(max(lo, 3) if hi >= 3 else lo, hi + 1))


def _select_nodes(
    rng: np.random.Generator, layers: list[np.ndarray], d: int, hp: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Causal mode: X and y are intermediate nodes. y is an effect (last layer) or any node, possibly a
    cause of some features; X is a contiguous block of nodes or scattered ones."""
    nodes = np.concatenate(layers, axis=1)
    total = nodes.shape[1]
    last = layers[-1].shape[1]
    y_idx = int(rng.integers(total - last, total) if hp["y_is_effect"] else rng.integers(0, total))
    rest = np.delete(np.arange(total), y_idx)
    if hp["in_clique"]:
        start = int(rng.integers(0, rest.size - d + 1))
        x_idx = rest[start : start + d]
    else:
        x_idx = rng.choice(rest, size=d, replace=False)
    return nodes[:, x_idx], nodes[:, y_idx]


def _draw(rng: np.random.Generator, prior: str, n: int, n_shots: int, d: int, k: int, p: GenerateParams):
    causal = bool(rng.random() < 0.6)
    sampling = CAUSE_SAMPLINGS[rng.integers(len(CAUSE_SAMPLINGS))]
    n_causes = d if not causal else int(rng.integers(2, max(2, d) + 1))
    # Causal mode picks d+1 distinct nodes, so the layers must hold that many.
    min_nodes = d + 1 if causal else 1
    hp_scm = (sample_mlp_hyperparams if prior == "mlp" else sample_tree_hyperparams)(rng, min_nodes)
    hp = {
        "causal": causal,
        "cause_sampling": sampling,
        "n_causes": n_causes,
        "y_is_effect": bool(rng.random() < 0.7),
        "in_clique": bool(rng.random() < 0.5),
        "class_mode": CLASS_MODES[rng.integers(len(CLASS_MODES))],
        "k_requested": k,
        **hp_scm,
    }
    causes, kinds = sample_causes(rng, n, n_causes, sampling)
    # Non-causal tasks read y off a random subset of the causes (the rest are distractor features, as in
    # real tables): a dense function of up to 50 causes is indistinguishable from noise at a few shots.
    relevant = np.arange(n_causes)
    if not causal:
        relevant = np.sort(rng.choice(n_causes, size=_log_uniform_int(rng, 1, n_causes), replace=False))
    hp["n_relevant"] = int(relevant.size)
    layers = (mlp_scm_layers if prior == "mlp" else tree_scm_layers)(rng, causes[:, relevant], hp_scm)
    if causal:
        x, target = _select_nodes(rng, layers, d, hp)
        categorical = np.zeros(d, dtype=bool)
    else:
        x, target = causes, layers[-1][:, int(rng.integers(layers[-1].shape[1]))]
        categorical = np.array([kind == "multinomial" for kind in kinds])

    share = float(rng.uniform(0.1, 0.6)) if rng.random() < p.categorical_task_share else 0.0
    hp["categorical_share"] = share
    x, discretised = discretise_columns(rng, np.array(x, copy=True), share)
    categorical |= discretised

    y = to_classes(rng, target, k, hp["class_mode"])
    # Constant columns on the context carry nothing and break per-column standardisation downstream;
    # judged after the cast to float32, which is what is stored.
    x = x.astype(np.float32)
    keep = np.ptp(x[:n_shots], axis=0) > 0
    order = rng.permutation(int(keep.sum()))
    return x[:, keep][:, order], y, categorical[keep][order], hp


def generate_task(seed: int, task_id: int, p: GenerateParams) -> Task:
    """Task ``task_id`` of the stream defined by ``seed`` and the generate params.

    Prior, shots, d and K are drawn once so their distribution is exactly the configured one; only the
    SCM is redrawn when the result is unusable (fewer than 2 classes in the shots, too few non-constant
    columns, non-finite values).
    """
    rng = task_rng(seed, task_id)
    prior = p.prior if p.prior != "mix" else ("mlp" if rng.random() < p.mlp_share else "tree")
    n_shots = _log_uniform_int(rng, p.shots.min, p.shots.max)
    d = int(rng.integers(p.features.min, p.features.max + 1))
    k = _sample_k(rng, p)
    n = n_shots + p.queries
    for attempt in range(1, p.max_attempts + 1):
        with np.errstate(all="ignore"):
            x, y, categorical, hp = _draw(rng, prior, n, n_shots, d, k, p)
        if (
            x.shape[1] >= p.features.min
            and np.unique(y[:n_shots]).size >= 2
            and np.isfinite(x).all()
        ):
            return Task(
                task_id=task_id,
                seed=seed,
                prior=prior,
                X=x,
                y=y.astype(np.int8),
                n_shots=n_shots,
                n_queries=p.queries,
                n_classes=int(y.max()) + 1,
                categorical=categorical,
                attempts=attempt,
                hyperparams=hp,
            )
    raise TaskGenerationError(
        f"task {task_id}: no valid task after {p.max_attempts} attempts "
        f"(prior={prior}, shots={n_shots}, d={d}, K={k}); widen generate.* ranges or raise max_attempts"
    )
