"""Nearest-neighbour shot retrieval: when the context table does not fit the model's window, each chunk of
query rows gets the context rows closest to it (the paper's suggested extension), as many as fit.

Distances are Euclidean on the encoded values (shot-standardised, 0..999 per column), so every column
weighs the same, as for a standardised kNN.
"""

from __future__ import annotations

import numpy as np


def nearest_shots(shots: np.ndarray, queries: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """Indices (ascending) of the shot rows to keep for ``queries``: each query's nearest rows taken in turn
    (every query's 1st neighbour, then every 2nd, ...) while their token ``costs`` fit ``budget``."""
    from sklearn.neighbors import NearestNeighbors

    m = shots.shape[0]
    if costs.sum() <= budget:
        return np.arange(m)
    nn = NearestNeighbors(n_neighbors=m).fit(shots.astype(np.float64))
    _, ranked = nn.kneighbors(queries.astype(np.float64))  # (n_queries, m) nearest first
    order = ranked.T.ravel()  # round robin over the queries
    _, first = np.unique(order, return_index=True)
    order = order[np.sort(first)]  # each shot once, at its best round
    taken = order[np.cumsum(costs[order]) <= budget]
    return np.sort(taken)
