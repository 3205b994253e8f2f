import numpy as np
import pandas as pd
import pytest

from mllm.core.params import BASELINE_NAMES as BASELINES
from mllm.evaluation.suite import (
    TableError,
    baseline,
    evaluate_dataset,
    in_table_order,
    load_table,
    metrics,
    sklearn_datasets,
)
from tests.conftest import section


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


def test_metrics_quiet_when_the_test_split_lacks_a_predicted_class():
    import warnings

    classes = np.array([0, 1, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        out = metrics(np.array([0, 1, 1]), classes, proba)  # class 2 predicted, absent from y_true
    assert out["accuracy"] == pytest.approx(2 / 3)


def test_baselines_on_iris():
    X, y = sklearn_datasets()["iris"]
    models = {b: baseline(b, 0) for b in BASELINES}
    rows = pd.DataFrame(evaluate_dataset("iris", X, y, models, shots=[8, 32, 1024], seeds=[0, 1]))
    assert set(rows.model) == set(BASELINES) and set(rows.shots) == {8, 32}  # 1024 > the 120 training rows
    acc = rows[rows.shots == 32].groupby("model").accuracy.mean()
    assert acc["random_forest"] > 0.8 and acc["knn"] > 0.8 and acc["majority"] < 0.5


def test_suite_skips_tables_over_the_class_limit_and_names_bad_dirs(tmp_path):
    import pytest as _pytest

    from mllm.evaluation.suite import load_suite
    from mllm.inference.table import TableError

    (tmp_path / "ok.csv").write_text("a,b,label\n" + "".join(f"{i},x{i % 2},{i % 3}\n" for i in range(30)))
    (tmp_path / "many.csv").write_text("a,label\n" + "".join(f"{i},{i % 12}\n" for i in range(48)))
    tables, skipped = load_suite(section("evaluate", sklearn_datasets=["iris"], csv_dir=str(tmp_path)), max_classes=10)
    assert list(tables) == ["iris", "ok"] and "12 classes" in skipped["many"]
    tables, skipped = load_suite(section("evaluate", sklearn_datasets=[], csv_dir=str(tmp_path)))
    assert list(tables) == ["many", "ok"] and not skipped  # the embedded model scores up to 100 labels
    with _pytest.raises(TableError, match="is not a directory"):
        load_suite(section("evaluate", sklearn_datasets=[], csv_dir=str(tmp_path / "nope")))


def test_mostly_numeric_text_columns_become_numeric_with_missing_cells():
    import pandas as pd

    from mllm.inference.table import coerce_numeric

    df = pd.DataFrame({"x": ["1", "2.5", "?"] + ["3"] * 20, "colour": ["red", "blue", "1"] + ["red"] * 20})
    out = coerce_numeric(df)
    assert out["x"].dtype.kind == "f" and out["x"].isna().sum() == 1
    assert not pd.api.types.is_numeric_dtype(out["colour"])


def test_summary_has_the_quality_bar():
    from mllm.evaluation.suite import summarise

    rows = [{"dataset": "t", "model": m, "shots": n, "seed": seed, "nn_shots": False, "accuracy": acc,
             "balanced_accuracy": acc, "macro_f1": acc, "weighted_f1": acc, "roc_auc": 0.5, "log_loss": 1.0}
            for m, n, acc, seed in [("trained", 8, 0.5, 0), ("trained", 128, 0.8, 0), ("majority", 8, 0.5, 0),
                                    ("majority", 128, 0.6, 0), ("trained", 8, 0.7, "vote"), ("trained", 128, 0.9, "vote"),
                                    ("majority", 8, 0.5, "vote"), ("majority", 128, 0.6, "vote")]]
    s = summarise(rows, {}, "suite")
    assert s["quality_bar"] == {"shots": 128, "lift_over_majority": 0.2, "rising": True}
    assert s["mean_accuracy"] == {"majority": 0.55, "trained": 0.65}  # per seed: the votes kept apart
    assert s["mean_accuracy_vote"] == {"majority": 0.55, "trained": 0.8}
    assert s["vote_accuracy_by_shots"]["trained"] == {"8": 0.7, "128": 0.9}


def test_the_authors_split_draws_and_orders():
    """The rows a model is given are the authors' (data_chunk_prep.py): an unstratified 80/20 split with seed 42,
    per test chunk of 50 a sample of the training part with random_state 42 + chunk, then per seed the rows
    shuffled (random_state seed) and the columns (Python's random with the seed); probabilities voted."""
    import random

    from sklearn.model_selection import train_test_split

    X, y = sklearn_datasets()["wine"]
    calls = []

    def record(ctx, ctx_y, test):
        calls.append((list(ctx.index), list(ctx.columns), list(test.index)))
        return baseline("knn", 0)(ctx, ctx_y, test)

    rows = evaluate_dataset("wine", X, y, {"knn": record}, [16], [0, 3], max_test=None, test_chunk=20)
    train, test = train_test_split(X.assign(label=y), test_size=0.2, random_state=42)
    chunks = [test[i:i + 20] for i in range(0, len(test), 20)]
    expected = []
    for seed in (0, 3):
        cols = list(X.columns)
        order = list(range(len(cols)))
        random.seed(seed)
        random.shuffle(order)
        for i, chunk in enumerate(chunks):
            shots = train.sample(n=16, random_state=42 + i).sample(frac=1, random_state=seed)
            expected.append((list(shots.index), [cols[j] for j in order], list(chunk.index)))
    assert calls == expected
    assert [r["seed"] for r in rows] == [0, 3, "vote"] and not any(r["nn_shots"] for r in rows)
    assert {"accuracy", "weighted_f1", "roc_auc"} <= set(rows[-1])


def test_model_by_model_rows_come_out_in_the_all_at_once_order():
    """The evaluate stage loads one in-context model at a time; its results file is the same as when every
    model answered each table in turn."""
    tables = {n: sklearn_datasets()[n] for n in ("iris", "wine")}
    models = {m: baseline(m, 0) for m in ("knn", "majority", "logistic_regression")}
    shots, seeds = [32, 8], [1, 0]
    together = [r for n, (X, y) in tables.items() for r in evaluate_dataset(n, X, y, models, shots, seeds, 20)]
    apart = [r for m in reversed(models) for n, (X, y) in tables.items()
             for r in evaluate_dataset(n, X, y, {m: models[m]}, shots, seeds, 20)]
    assert apart != together
    assert in_table_order(apart, list(tables), list(models), shots, seeds) == together


def test_the_evaluated_window_is_evaluate_cutoff_len():
    """The committed base reads 16,384 tokens; the evaluate stage answers within evaluate.cutoff_len (2,048
    by default, so the default run stays short), retrieving shots past it, and null means the whole window."""
    from mllm.evaluation.models import in_context

    X, y = sklearn_datasets()["wine"]   # 13 features: 128 shots are about 4,000 tokens
    X, y = X.iloc[:140], y.iloc[:140]
    default = in_context("tiny", section("evaluate"), seed=0)
    default(X.iloc[:128], y.iloc[:128].to_numpy(), X.iloc[128:])
    whole = in_context("tiny", section("evaluate", cutoff_len=None), seed=0)
    whole(X.iloc[:128], y.iloc[:128].to_numpy(), X.iloc[128:])
    assert default.predictor.cutoff_len == 2048 and default.retrieved
    assert whole.predictor.cutoff_len == 16384 and not whole.retrieved
