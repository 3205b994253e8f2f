"""The unit of the data stages: one synthetic classification task (shards, teacher and corpus share it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Task:
    """One synthetic task: the first ``n_shots`` rows are the labelled context, the rest are queries."""

    task_id: int
    seed: int
    prior: str
    X: np.ndarray  # (n_shots + n_queries, d) float32
    y: np.ndarray  # (n_shots + n_queries,) int, 0..n_classes-1
    n_shots: int
    n_queries: int
    n_classes: int
    categorical: np.ndarray  # (d,) bool
    attempts: int = 1
    hyperparams: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])
