"""MLP-SCM: causes pushed through random MLP layers with diverse activations and per-layer noise."""

from __future__ import annotations

import numpy as np

from mllm.data.prior.activations import ACTIVATIONS, apply_activation

_MIXABLE = tuple(a for a in ACTIVATIONS if a != "fourier")


def sample_mlp_hyperparams(rng: np.random.Generator, min_width: int) -> dict:
    n_layers = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05]))  # shallow more often: deep random nets turn into noise
    width = int(np.exp(rng.uniform(np.log(4), np.log(64))))
    width = min(max(width, -(-min_width // n_layers) + 1), 128)
    acts = []
    for _ in range(n_layers):
        # One activation per layer usually; sometimes each unit gets its own (a "mixed" layer).
        acts.append("mixed" if rng.random() < 0.2 else ACTIVATIONS[rng.integers(len(ACTIVATIONS))])
    return {
        "n_layers": n_layers,
        "width": width,
        "activations": acts,
        "init_std": float(np.exp(rng.uniform(np.log(0.2), np.log(3.0)))),
        "noise_std": float(np.exp(rng.uniform(np.log(1e-4), np.log(0.3)))),
        "dropout": float(rng.uniform(0.0, 0.8)) if rng.random() < 0.5 else 0.0,
        "bias_std": float(rng.uniform(0.0, 1.0)),
    }


def _linear(rng: np.random.Generator, z: np.ndarray, width: int, hp: dict) -> np.ndarray:
    m = z.shape[1]
    w = rng.normal(0.0, 1.0, size=(m, width))
    if hp["dropout"] > 0:
        keep = rng.random((m, width)) >= hp["dropout"]
        keep[rng.integers(0, m, size=width), np.arange(width)] = True  # every unit keeps one parent
        w *= keep
    pre = z @ w
    # Standardised pre-activations scaled by init_std: the scale decides which regime of the activation
    # (linear, saturated, oscillating) the layer works in, and keeps deep stacks finite.
    pre -= pre.mean(axis=0)
    pre *= hp["init_std"] / (pre.std(axis=0) + 1e-8)
    pre += rng.normal(0.0, hp["bias_std"] * hp["init_std"], size=width)
    return pre


def _activate(rng: np.random.Generator, name: str, pre: np.ndarray) -> np.ndarray:
    if name != "mixed":
        return apply_activation(name, pre, rng)
    out = np.empty_like(pre)
    per_unit = rng.integers(0, len(_MIXABLE), size=pre.shape[1])
    for a in np.unique(per_unit):
        cols = per_unit == a
        out[:, cols] = apply_activation(_MIXABLE[a], pre[:, cols], rng)
    return out


def mlp_scm_layers(rng: np.random.Generator, causes: np.ndarray, hp: dict) -> list[np.ndarray]:
    """Outputs of every layer (each (n, width)), noise included; layer 0 reads the causes."""
    z = causes
    layers = []
    for name in hp["activations"]:
        out = _activate(rng, name, _linear(rng, z, hp["width"], hp))
        out += rng.normal(0.0, hp["noise_std"], size=out.shape) * (out.std(axis=0) + 1e-8)
        layers.append(out)
        z = out
    return layers
