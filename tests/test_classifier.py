"""MLLMClassifier: scikit-learn's estimator checks, pandas tables with strings and NaN, label types, limits."""

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from mllm import MLLMClassifier
from tests.training_helpers import save_tiny_model

# API contracts, not quality (tests/test_plant.py measures the embedded base in context): a 2-layer random
# model with the project's tokenizer keeps scikit-learn's ~40 checks fast.
_DIR = Path(tempfile.mkdtemp(prefix="mllm-classifier-"))
atexit.register(shutil.rmtree, _DIR, True)
TINY = str(save_tiny_model(_DIR / "model"))

# Checks that do not apply, and why (the README lists them too).
SKIPPED = {
    "check_classifiers_train": "asks for >= 83% training accuracy on a toy problem: a quality bar for the "
                               "model (the random test model fails it), "
                               "measured by the evaluate stage, not an API contract",
    "check_methods_sample_order_invariance": "rows are answered jointly, up to 50 per sequence (the paper's "
                                             "design): a row's probabilities depend on the rows before it",
    "check_methods_subset_invariance": "same reason: predicting a subset changes each row's sequence",
}


@parametrize_with_checks([MLLMClassifier(model=TINY)], expected_failed_checks=lambda est: SKIPPED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _frame(n, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x": rng.normal(size=n), "colour": rng.choice(["red", "blue", None], size=n),
                      "z": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n))})
    y = np.where(X["x"] > 0, "high", "low")
    return X, y


def test_pandas_strings_nan_and_label_types():
    X, y = _frame(60)
    clf = MLLMClassifier(model=TINY).fit(X.iloc[:40], y[:40])
    assert list(clf.classes_) == ["high", "low"] and clf.feature_names_in_.tolist() == ["x", "colour", "z"]
    proba = clf.predict_proba(X.iloc[40:])
    assert proba.shape == (20, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(X.iloc[40:])) <= {"high", "low"}
    assert clf.score(X.iloc[40:], y[40:]) == np.mean(clf.predict(X.iloc[40:]) == y[40:])


def test_random_state_ensembles_are_deterministic():
    X, y = _frame(50)
    a = MLLMClassifier(model=TINY, n_ensemble=2, random_state=3).fit(X[:40], y[:40]).predict_proba(X[40:])
    b = MLLMClassifier(model=TINY, n_ensemble=2, random_state=3).fit(X[:40], y[:40]).predict_proba(X[40:])
    np.testing.assert_array_equal(a, b)


def test_more_classes_than_the_model_scores_is_a_clear_error():
    X = np.arange(404, dtype=float).reshape(-1, 1)
    with pytest.raises(ValueError, match="101 classes; at most 100 are supported"):
        MLLMClassifier(model=TINY).fit(X, np.arange(404) % 101)


def test_default_model_without_a_champion_names_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ValueError, match="no MLflow store at .*dvc repro"):  # and none is made
        MLLMClassifier().fit(np.zeros((4, 1)), [0, 1, 0, 1])
    assert not (tmp_path / "mlflow.db").exists()
    import mlflow

    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_registered_models()  # an empty store
    with pytest.raises(ValueError, match="no alias 'champion'.*dvc repro"):
        MLLMClassifier().fit(np.zeros((4, 1)), [0, 1, 0, 1])
