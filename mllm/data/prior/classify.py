"""Turn a continuous SCM target into K classes, and discretise some feature columns into categories."""

from __future__ import annotations

import numpy as np

CLASS_MODES = ("rank", "value")


def _random_cuts(rng: np.random.Generator, values: np.ndarray, k: int, mode: str) -> np.ndarray:
    """Codes 0..k-1 from k-1 random cut points: quantiles of the values at Dirichlet-drawn class shares
    (rank) or N(0,1) draws on the standardised values (value)."""
    if mode == "rank":
        # Class shares ~ Dirichlet(alpha): alpha < 1 gives skewed tasks, alpha > 1 balanced ones.
        alpha = float(np.exp(rng.uniform(np.log(0.5), np.log(5.0))))
        quantiles = np.cumsum(rng.dirichlet(np.full(k, alpha)))[:-1]
        cuts = np.quantile(values, quantiles, method="inverted_cdf")
        return np.searchsorted(cuts, values, side="left")
    if mode == "value":
        std = values.std()
        z = (values - values.mean()) / (std if std > 0 else 1.0)
        return np.searchsorted(np.sort(rng.normal(size=k - 1)), z, side="left")
    raise ValueError(f"unknown class mode {mode!r}; expected one of {CLASS_MODES}")


def to_classes(rng: np.random.Generator, target: np.ndarray, k: int, mode: str) -> np.ndarray:
    """Labels 0..K'-1 for a continuous target: K-1 thresholds, a random permutation of the label ids,
    then the ids compacted to the classes that occur (K' <= k), keeping the permuted order."""
    labels = rng.permutation(k)[_random_cuts(rng, target, k, mode)]
    present = np.unique(labels)
    return np.searchsorted(present, labels)


def discretise_columns(
    rng: np.random.Generator, x: np.ndarray, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Replace a random ``share`` of columns by unordered category codes (2..10 categories, cut at
    random rows' values, codes permuted so their order carries no meaning). Returns (x, mask)."""
    mask = rng.random(x.shape[1]) < share
    for j in np.flatnonzero(mask):
        k = int(rng.integers(2, 11))
        x[:, j] = rng.permutation(k)[_random_cuts(rng, x[:, j], k, "rank")]
    return x, mask
