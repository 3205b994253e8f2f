"""Tables with more than 10 classes (the authors' benchmark has up to 100): the embedded model scores labels
0..99 as single tokens, so a 26-class table is predicted and evaluated end to end; a model whose tokenizer
splits labels past 9 (Qwen: one digit per token) says so before any work."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from typer.testing import CliRunner

from mllm.cli import app
from mllm.core.errors import InputError
from mllm.inference.classifier import MLLMClassifier
from mllm.inference.scoring import check_labels, label_capacity
from mllm.model.loading import TINY_BASE_DIR
from mllm.text.tokenizer import build_qwen25_tokenizer, build_tokenizer
from tests.conftest import ROOT


def _letters(n=1200, seed=0):
    """A letter-like table: 16 features, 26 classes."""
    X, y = make_classification(n_samples=n, n_features=16, n_informative=12, n_redundant=2, n_classes=26,
                               n_clusters_per_class=1, class_sep=2.0, random_state=seed)
    return X, np.array([chr(ord("A") + k) for k in y])


def test_label_capacity_of_the_tokenizers():
    assert label_capacity(build_tokenizer("whole")) == 100
    assert label_capacity(build_qwen25_tokenizer()) == 10
    with pytest.raises(InputError, match="at most 10 classes with this model"):
        check_labels(build_qwen25_tokenizer(), 26)
    with pytest.raises(InputError, match="at most 100 are supported"):
        check_labels(build_tokenizer("whole"), 101)


def test_a_26_class_table_is_predicted():
    X, y = _letters()
    clf = MLLMClassifier(model=str(TINY_BASE_DIR)).fit(X[:128], y[:128])
    proba = clf.predict_proba(X[128:188])
    assert proba.shape == (60, len(np.unique(y[:128]))) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    assert (clf.predict(X[128:188]) == y[128:188]).mean() > 0.3  # chance is 1/26


@pytest.mark.slow  # end to end: the evaluate flow
def test_a_26_class_table_evaluates_end_to_end(tmp_path, prefect_harness):
    X, y = _letters()
    (tmp_path / "tables").mkdir()
    pd.DataFrame(X, columns=[f"f{i}" for i in range(16)]).assign(label=y).to_csv(tmp_path / "tables" / "letter26.csv",
                                                                                index=False)
    settings = ["evaluate.sklearn_datasets=[]", f"evaluate.csv_dir={tmp_path / 'tables'}", "evaluate.shots=[128]",
                "evaluate.seeds=[0]", "evaluate.max_test=40", "evaluate.baselines=[majority,knn]",
                "evaluate.include_base=false", "evaluate.compare_champion=false"]
    metrics = tmp_path / "evaluate.json"
    res = CliRunner().invoke(app, ["evaluate", "--params", str(ROOT / "params.yaml"), "--model", str(TINY_BASE_DIR),
                                   "--out", str(tmp_path / "eval"), "--metrics", str(metrics),
                                   "--curve", str(tmp_path / "curve.csv"), *[a for s in settings for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    summary = json.loads(metrics.read_text())
    assert summary["tables"] == ["letter26"] and summary["skipped"] == {}
    assert summary["mean_accuracy"]["trained"] > summary["mean_accuracy"]["majority"]
