"""``MLLMClassifier``: the in-context model as a scikit-learn estimator.

``fit`` stores the labelled rows (they become the prompt's context); ``predict_proba`` answers new rows
with the predictor. With no arguments it uses the local registry's ``champion`` (``models:/mllm@champion``,
the model the default pipeline trained and promoted).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from mllm.core.params import MAX_QUERIES
from mllm.inference import DEFAULT_MAX_QUERIES
from mllm.inference.table import check_finite
from mllm.model.references import DEFAULT_REF, resolve

_loaded: dict[str, tuple] = {}  # resolved model dir -> (model, tokenizer): clones share one copy


def _load(ref: str):
    from mllm.model.loading import load_trained_with_tokenizer

    path = str(resolve(ref))
    if path not in _loaded:
        _loaded[path] = load_trained_with_tokenizer(path)
    return _loaded[path]


class MLLMClassifier(ClassifierMixin, BaseEstimator):
    """In-context classification with a language model trained by mllm.

    Parameters
    ----------
    model : str or None
        A model reference (see ``mllm.model.references``): a local directory, ``models:/name@alias``, ``name@alias``,
        ``runs:/...``. None means ``mllm@champion`` in the local MLflow registry.
    n_ensemble : int
        Seeded row/column permutations of the context whose probabilities are averaged.
    max_queries : int
        Rows answered per sequence (1..50). 10 matches how the embedded default model was trained; a model
        continued-pretrained with 50 queries per sequence (the paper's recipe) can take 50.
    random_state : int or None
        Seed of the permutations (None: 0).
    cutoff_len : int or None
        Tokens per sequence (None: the model's window); a context over it is answered from the nearest
        context rows of each group of similar queries.
    """

    def __init__(self, model: str | None = None, n_ensemble: int = 1, max_queries: int = DEFAULT_MAX_QUERIES,
                 random_state: int | None = None, cutoff_len: int | None = None):
        self.model = model
        self.n_ensemble = n_ensemble
        self.max_queries = max_queries
        self.random_state = random_state
        self.cutoff_len = cutoff_len

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing values are encoded like the training corpus's
        tags.input_tags.string = True  # string categoricals are ordinal-coded from the context
        tags.input_tags.categorical = True
        tags.non_deterministic = False
        return tags

    def _table(self, X, reset: bool) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, reset=reset, dtype=None, ensure_all_finite=False, skip_check_array=True)
            if X.shape[0] == 0:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
            if X.shape[1] == 0:
                raise ValueError("0 feature(s) (shape=(n, 0)) while a minimum of 1 is required.")
            check_finite(X, "X")
            return X.reset_index(drop=True)
        arr = validate_data(self, X, reset=reset, dtype=None, ensure_all_finite=False)
        out = pd.DataFrame(arr) if arr.dtype == object else pd.DataFrame(np.asarray(arr, dtype=np.float64))
        check_finite(out, "X")  # the same check and message as for a DataFrame or a CSV
        return out

    def fit(self, X, y):
        """Store the labelled rows (the context of every later prediction)."""
        if y is None:
            raise ValueError("MLLMClassifier requires y to be passed, but the target y is None")
        X_ = self._table(X, reset=True)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if len(y) != len(X_):
            raise ValueError(f"X has {len(X_)} rows but y has {len(y)} labels")
        self.classes_ = np.unique(y)
        if not 1 <= self.max_queries <= MAX_QUERIES:
            raise ValueError(f"max_queries must be 1..{MAX_QUERIES}, got {self.max_queries}")
        if self.n_ensemble < 1:
            raise ValueError(f"n_ensemble must be >= 1, got {self.n_ensemble}")
        self._model_ref = self.model or DEFAULT_REF
        from mllm.inference.scoring import check_labels

        # a bad model reference, or more classes than the model can score, fails here, not at predict time
        check_labels(_load(self._model_ref)[1], self.classes_.size)
        self.X_, self.y_ = X_, y
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X_ = self._table(X, reset=False)
        if self.classes_.size == 1:  # nothing to choose between
            return np.ones((len(X_), 1))
        from mllm.inference.predict import Predictor

        model, tok = _load(self._model_ref)
        pred = Predictor(model, tok, max_queries=self.max_queries, n_ensemble=self.n_ensemble,
                         seed=self.random_state or 0, cutoff_len=self.cutoff_len)
        classes, proba = pred.predict_proba(self.X_, self.y_, X_)
        out = np.zeros((len(X_), self.classes_.size))
        out[:, np.searchsorted(self.classes_, classes)] = proba
        return out

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]
