"""Root causes of an SCM: the independent inputs every other node is computed from."""

from __future__ import annotations

import numpy as np

CAUSE_SAMPLINGS = ("normal", "uniform", "mixed")
_MIXED_KINDS = ("normal", "uniform", "multinomial", "zipf")


def sample_causes(rng: np.random.Generator, n: int, c: int, sampling: str) -> tuple[np.ndarray, list[str]]:
    """``n`` i.i.d. draws of ``c`` causes; returns the (n, c) matrix and each column's kind.

    ``normal`` and ``uniform`` give columns with random location and scale; ``mixed`` draws each column's
    kind among normal, uniform, multinomial (a categorical with Dirichlet weights, coded 0..k-1) and Zipf
    (heavy-tailed counts), as in the TabICL prior.
    """
    if sampling == "mixed":
        kinds = [_MIXED_KINDS[i] for i in rng.integers(0, len(_MIXED_KINDS), size=c)]
    elif sampling in ("normal", "uniform"):
        kinds = [sampling] * c
    else:
        raise ValueError(f"unknown cause sampling {sampling!r}; expected one of {CAUSE_SAMPLINGS}")

    out = np.empty((n, c))
    loc = rng.normal(0.0, 1.0, size=c)
    scale = np.exp(rng.normal(0.0, 0.5, size=c))
    for j, kind in enumerate(kinds):
        if kind == "normal":
            out[:, j] = rng.normal(loc[j], scale[j], size=n)
        elif kind == "uniform":
            out[:, j] = rng.uniform(loc[j] - scale[j], loc[j] + scale[j], size=n)
        elif kind == "multinomial":
            k = int(rng.integers(2, 11))
            out[:, j] = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k)))
        else:  # zipf: heavy-tailed counts, clipped so one draw cannot dominate every statistic
            out[:, j] = np.minimum(rng.zipf(rng.uniform(2.0, 4.0), size=n), 100)
    return out, kinds
