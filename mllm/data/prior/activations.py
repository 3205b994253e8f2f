"""Elementwise non-linearities of MLP-SCM layers (and random Fourier features)."""

from __future__ import annotations

import numpy as np

ACTIVATIONS = (
    "identity", "tanh", "leaky_relu", "elu", "relu", "sigmoid", "sine", "rbf", "abs", "square",
    "softplus", "step", "log_abs", "fourier",
)


def apply_activation(name: str, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply activation ``name`` to pre-activations ``z`` (n, h); random ones draw from ``rng``."""
    if name == "identity":
        return z
    if name == "tanh":
        return np.tanh(z)
    if name == "leaky_relu":
        return np.where(z > 0, z, rng.uniform(0.01, 0.3) * z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    if name == "sine":
        return np.sin(rng.uniform(0.3, 2.0) * z)
    if name == "rbf":
        return np.exp(-0.5 * z * z)
    if name == "abs":
        return np.abs(z)
    if name == "square":
        return z * z
    if name == "softplus":
        return np.logaddexp(0.0, z)
    if name == "step":
        return (z > rng.normal(0.0, 0.5)).astype(z.dtype)
    if name == "log_abs":
        return np.log(np.abs(z) + 1e-3)
    if name == "fourier":
        # Random Fourier features: a random smooth function of all inputs of the layer, per output unit.
        # Frequencies scaled by fan-in so the function oscillates a few times over the data, not per row.
        h = z.shape[1]
        w = rng.normal(0.0, rng.uniform(0.3, 1.5) / np.sqrt(h), size=(h, h)) / (z.std(axis=0)[:, None] + 1e-8)
        b = rng.uniform(0.0, 2 * np.pi, size=h)
        return np.sqrt(2.0) * np.cos(z @ w + b)
    raise ValueError(f"unknown activation {name!r}")
