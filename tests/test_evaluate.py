import numpy as np
import pandas as pd
import pytest

from mllm.evaluate import BASELINES, TableError, baseline, evaluate_dataset, load_table, metrics, sklearn_datasets


def test_load_table_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,label\n")
    (tmp_path / "one.csv").write_text("label\n1\n2\n")
    (tmp_path / "nolabel.csv").write_text("a,label\n1,x\n2,\n")
    for name, msg in [("empty", "not a readable CSV"), ("header", "no data rows"), ("one", "at least one feature"),
                      ("nolabel", "1 rows have no label")]:
        with pytest.raises(TableError, match=msg):
            load_table(tmp_path / f"{name}.csv")
    (tmp_path / "ok.csv").write_text('name,x,label\n"Smith, J",1.5,yes\n"O""Brien",,no\n')
    X, y = load_table(tmp_path / "ok.csv")
    assert list(X.columns) == ["name", "x"] and X.iloc[0, 0] == "Smith, J" and list(y) == ["yes", "no"]


def test_metrics_from_sklearn():
    classes = np.array(["a", "b"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m = metrics(np.array(["a", "b", "b"]), classes, proba)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["roc_auc"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_baselines_on_iris():
    X, y = sklearn_datasets()["iris"]
    models = {b: baseline(b, 0) for b in BASELINES}
    rows = pd.DataFrame(evaluate_dataset("iris", X, y, models, shots=[8, 32, 1024], seeds=[0, 1]))
    assert set(rows.model) == set(BASELINES) and set(rows.shots) == {8, 32}  # 1024 > the 120 training rows
    acc = rows[rows.shots == 32].groupby("model").accuracy.mean()
    assert acc["random_forest"] > 0.8 and acc["knn"] > 0.8 and acc["majority"] < 0.5
