"""The compact numeric encoding shared by training and prediction.

Per task and column: z-score with the mean and standard deviation of the **shot rows only** (ddof 1,
std floored), missing values -> the shot mean, then ``int(clip(z * 120 + 500, 0, 999))`` (MachineLearningLM's
mapping, truncation included, with an upper clip its code does not have: a code is one token of the embedded
tokenizer, and only values more than 4.2 standard deviations above the shots' mean reach it). Non-numeric columns of user tables
are ordinal-coded first, with their own codes for unseen categories and for missing values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

SCALE, CENTER, LOW, HIGH = 120.0, 500.0, 0, 999
STD_FLOOR = 1e-6
HUGE = 1e150  # beyond this a column is rescaled before its statistics (see quantise)


def quantise(shots: np.ndarray, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer codes 0..999 of ``shots`` (m, d) and ``queries`` (n, d) with shot-only statistics."""
    shots = np.asarray(shots, dtype=np.float64)
    if shots.ndim != 2 or shots.shape[0] < 1:
        raise ValueError(f"shots must be a non-empty 2-D array, got shape {shots.shape}")
    # Columns with values near the float limit (1e308) are scaled down first, so that their mean and
    # standard deviation do not overflow; z-scores do not change with the scale, and ordinary columns are
    # left untouched (the same bytes as ever).
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns
        big = np.nanmax(np.abs(np.where(np.isinf(shots), np.nan, shots)), axis=0)
    scale = np.where(np.isfinite(big) & (big > HUGE), big, 1.0)
    if (scale != 1.0).any():
        shots = shots / scale
        queries = None if queries is None else np.asarray(queries, dtype=np.float64) / scale
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" on all-missing columns
        mean = np.nanmean(shots, axis=0)
        std = np.nanstd(shots, axis=0, ddof=1) if shots.shape[0] > 1 else np.zeros(shots.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)  # an all-missing column is all "mean"
    std = np.maximum(np.where(np.isfinite(std), std, 0.0), STD_FLOOR)

    def codes(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        x = np.where(np.isnan(x), mean, x)
        with np.errstate(over="ignore"):  # a query far beyond the shots' range is clipped to 0 or 999
            z = (x - mean) / std
            return np.floor(np.clip(z * SCALE + CENTER, LOW, HIGH)).astype(np.int16)

    return codes(shots), (None if queries is None else codes(queries))


def ordinal_encode(shots: pd.DataFrame, queries: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Numeric arrays from (possibly mixed-type) frames; returns (shots, queries, categorical mask).

    Numeric columns pass through (NaN kept for ``quantise``; a non-numeric query cell is missing). Other columns are ordinal-coded with the
    shot rows' categories sorted as strings: codes 0..c-1, then c for a category unseen in the shots and
    c+1 for a missing value.
    """
    if queries is not None and list(queries.columns) != list(shots.columns):
        raise ValueError("query columns differ from the context columns")
    n_cols = shots.shape[1]
    out_s = np.empty((len(shots), n_cols))
    out_q = None if queries is None else np.empty((len(queries), n_cols))
    categorical = np.zeros(n_cols, dtype=bool)
    for j, col in enumerate(shots.columns):
        s = shots[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            out_s[:, j] = s.to_numpy(dtype=np.float64, na_value=np.nan)
            if out_q is not None:
                out_q[:, j] = pd.to_numeric(queries[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        categorical[j] = True
        lookup = {c: i for i, c in enumerate(sorted({str(v) for v in s.dropna()}))}
        out_s[:, j] = _ordinal_codes(s, lookup)
        if out_q is not None:
            out_q[:, j] = _ordinal_codes(queries[col], lookup)
    return out_s, out_q, categorical


def _ordinal_codes(series: pd.Series, lookup: dict[str, int]) -> np.ndarray:
    """Codes of ``lookup``; ``len(lookup)`` for a category it has not seen, ``len(lookup) + 1`` for missing."""
    unseen, missing = len(lookup), len(lookup) + 1
    return np.array([missing if pd.isna(v) else lookup.get(str(v), unseen) for v in series], dtype=np.float64)


@dataclass(frozen=True)
class LabelMap:
    """Original label values <-> ids 0..K-1 (sorted order of the context's labels)."""

    classes: np.ndarray

    @classmethod
    def fit(cls, shot_labels) -> LabelMap:
        """The distinct labels, in numeric order when they are all numbers (also when written as strings,
        so "10" follows "9"), else in string order."""
        labels = np.unique(np.asarray(shot_labels))
        try:
            keys = [float(v) for v in labels.tolist()]
        except (TypeError, ValueError):
            return cls(labels)
        order = sorted(range(labels.size), key=lambda i: (keys[i], str(labels[i])))
        return cls(labels[order])

    @property
    def n_classes(self) -> int:
        return int(self.classes.size)

    def to_ids(self, labels) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes.tolist())}
        labels = np.asarray(labels).tolist()
        unseen = sorted({str(v) for v in labels if v not in index})
        if unseen:
            raise ValueError(f"labels never seen in the context: {unseen[:10]}")
        return np.array([index[v] for v in labels], dtype=np.int64)

    def to_labels(self, ids) -> np.ndarray:
        return self.classes[np.asarray(ids, dtype=np.int64)]


def column_permutation(seed: int, task_id: int, n_features: int) -> np.ndarray:
    """The seeded column order of a task (the same task always gets the same order)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, task_id, 0xC01]))
    return rng.permutation(n_features)
