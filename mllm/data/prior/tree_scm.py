"""Tree-SCM: layers of random tree ensembles fitted to random targets, with noise.

Trees are grown with random splits (a random feature, thresholded at the value of a random row, as in
totally randomised trees) and their leaves are then fitted to a random target, either independently
(a forest: leaf means, averaged) or sequentially on residuals (boosting). Everything is vectorised over
all trees of a layer, which is what makes this prior cheap enough to sample millions of tasks.
"""

from __future__ import annotations

import numpy as np


def sample_tree_hyperparams(rng: np.random.Generator, min_width: int) -> dict:
    n_layers = int(rng.integers(1, 4))
    width = int(np.exp(rng.uniform(np.log(4), np.log(32))))
    width = min(max(width, -(-min_width // n_layers) + 1), 64)
    n_trees = int(rng.integers(1, 9))
    n_trees = max(1, min(n_trees, 256 // width))  # bound the trees per layer: cost is linear in them
    return {
        "n_layers": n_layers,
        "width": width,
        "n_trees": n_trees,
        "depth": int(rng.integers(2, 7)),
        "ensemble": "boosting" if rng.random() < 0.5 else "forest",
        "learning_rate": float(rng.uniform(0.1, 1.0)),
        "target_signal": float(rng.uniform(0.0, 1.0)),
        "noise_std": float(np.exp(rng.uniform(np.log(1e-4), np.log(0.3)))),
    }


def _leaves(rng: np.random.Generator, z: np.ndarray, n_trees: int, depth: int) -> np.ndarray:
    """Leaf index (n, n_trees) of every row in ``n_trees`` random-split trees of ``depth``."""
    n, m = z.shape
    n_internal = 2**depth - 1
    feats = rng.integers(0, m, size=(n_trees, n_internal))
    thr = z[rng.integers(0, n, size=(n_trees, n_internal)), feats]
    node = np.zeros((n, n_trees), dtype=np.int64)
    tix = np.arange(n_trees)
    rix = np.arange(n)[:, None]
    for _ in range(depth):
        node = 2 * node + 1 + (z[rix, feats[tix, node]] > thr[tix, node])
    return node - n_internal


def _leaf_means(leaf: np.ndarray, target: np.ndarray, n_leaves: int) -> np.ndarray:
    """Per-tree leaf means of ``target`` (n, t) for leaves (n, t), read back per row."""
    n, t = leaf.shape
    flat = leaf + n_leaves * np.arange(t)
    sums = np.bincount(flat.ravel(), weights=target.ravel(), minlength=t * n_leaves)
    counts = np.bincount(flat.ravel(), minlength=t * n_leaves)
    return (sums / np.maximum(counts, 1))[flat]


def _tree_layer(rng: np.random.Generator, z: np.ndarray, hp: dict) -> np.ndarray:
    n = z.shape[0]
    width, n_trees, depth = hp["width"], hp["n_trees"], hp["depth"]
    zs = (z - z.mean(axis=0)) / (z.std(axis=0) + 1e-8)
    # Random targets: partly a random linear signal of the inputs, partly pure noise.
    w = rng.normal(0.0, 1.0, size=(z.shape[1], width)) / np.sqrt(z.shape[1])
    target = hp["target_signal"] * (zs @ w) + (1 - hp["target_signal"]) * rng.normal(size=(n, width))
    # Trees of output unit j are columns j*n_trees .. j*n_trees + n_trees - 1.
    leaf = _leaves(rng, z, width * n_trees, depth).reshape(n, width, n_trees)
    n_leaves = 2**depth
    if hp["ensemble"] == "forest":
        rep = np.repeat(target, n_trees, axis=1)
        vals = _leaf_means(leaf.reshape(n, -1), rep, n_leaves).reshape(n, width, n_trees)
        return vals.mean(axis=2)
    pred = np.zeros((n, width))
    for k in range(n_trees):
        pred += hp["learning_rate"] * _leaf_means(leaf[:, :, k], target - pred, n_leaves)
    return pred


def tree_scm_layers(rng: np.random.Generator, causes: np.ndarray, hp: dict) -> list[np.ndarray]:
    """Outputs of every tree layer (each (n, width)), noise included; layer 0 reads the causes."""
    z = causes
    layers = []
    for _ in range(hp["n_layers"]):
        out = _tree_layer(rng, z, hp)
        out += rng.normal(0.0, hp["noise_std"], size=out.shape) * (out.std(axis=0) + 1e-8)
        layers.append(out)
        z = out
    return layers
