"""Evaluation on real tables: the authors' protocol, with the in-context model beside classical baselines.

MachineLearningLM's evaluation (src/evaluation/data_prep): an 80/20 split, unstratified, seed 42; the test
part in chunks of ``test_chunk`` rows (50), each chunk with its own draw of ``shots`` context rows from the
training part (``sample(n, random_state=42 + chunk)``); per seed, the context rows shuffled
(``sample(frac=1, random_state=seed)``) and the columns too (``random.Random(seed).shuffle``); every model
sees the same rows. Per (table, shots, model) a row per seed and a ``vote`` row (probabilities averaged over
the seeds), with accuracy, weighted F1 and AUC among sklearn's metrics. An in-context model that cannot hold
the shots in its window answers from their nearest neighbours, and its rows say so (``nn_shots``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from mllm.core.params import BASELINE_NAMES, MAX_LABELS, SKLEARN_DATASETS, EvaluateParams
from mllm.inference.table import TableError, load_table
from mllm.text.encoding import LabelMap, ordinal_encode

# The in-context models an evaluation compares, beside the classical baselines (BASELINE_NAMES).
ROLES = ("trained", "champion", "base")
MODEL_NAMES = (*ROLES, *BASELINE_NAMES)

PredictFn = Callable[[pd.DataFrame, np.ndarray, pd.DataFrame], tuple[np.ndarray, np.ndarray]]
SPLIT_SEED = 42
VOTE = "vote"  # the seed column of the rows that average the seeds' probabilities


def sklearn_datasets() -> dict[str, tuple[pd.DataFrame, pd.Series]]:
    """scikit-learn's bundled classification tables (they load offline)."""
    from sklearn import datasets

    out = {}
    for name in SKLEARN_DATASETS:
        b = getattr(datasets, f"load_{name}")(as_frame=True)
        out[name] = (b.data, b.target)
    return out


def numeric_features(ctx: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The baselines' view (the authors'): ordinal-coded categoricals, missing values -> the context median."""
    c, t, _ = ordinal_encode(ctx, test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing column
        median = np.nan_to_num(np.nanmedian(c, axis=0))
    return np.where(np.isnan(c), median, c), np.where(np.isnan(t), median, t)


def baseline(name: str, seed: int) -> PredictFn:
    """The authors' settings: RandomForest (30 trees), kNN (k=8, distance-weighted, unscaled features), XGBoost
    (500 trees, depth 4, lr 0.05, subsample and column sample 0.8); and logistic regression (scaled), the
    majority class. Fitted on the context rows only."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit_predict(ctx: pd.DataFrame, y: np.ndarray, test: pd.DataFrame):
        lm = LabelMap.fit(y)
        ids = lm.to_ids(y)
        xc, xt = numeric_features(ctx, test)
        if name == "random_forest":
            est = RandomForestClassifier(n_estimators=30, random_state=seed, n_jobs=1)
        elif name == "knn":
            est = KNeighborsClassifier(n_neighbors=min(8, len(ids)), weights="distance")
        elif name == "xgboost":
            from xgboost import XGBClassifier

            est = XGBClassifier(n_estimators=500, max_depth=4, learning_rate=0.05, subsample=0.8, colsample_bytree=0.8,
                                min_child_weight=1, random_state=seed, n_jobs=1, verbosity=0)
        elif name == "logistic_regression":
            est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        elif name == "majority":
            est = DummyClassifier(strategy="prior")
        else:
            raise ValueError(f"unknown baseline {name!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(xc, ids)
            proba = np.zeros((len(xt), lm.n_classes))
            proba[:, est.classes_] = est.predict_proba(xt) if hasattr(est, "predict_proba") else 0
        return lm.classes, proba

    return fit_predict



def metrics(y_true: np.ndarray, classes: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy, macro- and weighted F1 (the authors'), ROC AUC (binary, as the authors
    report it; one-vs-rest beyond) and log-loss, from sklearn."""
    pred = classes[proba.argmax(axis=1)]
    with warnings.catch_warnings():
        # a small test split need not hold every predicted class; the score is still defined
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        out = {
            "accuracy": float(accuracy_score(y_true, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
            "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, pred, average="weighted", zero_division=0)),
        }
    seen = np.isin(y_true, classes)
    p = np.clip(proba, 1e-12, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["log_loss"] = float(log_loss(y_true[seen], p[seen], labels=classes))
        except ValueError:
            out["log_loss"] = float("nan")
        try:
            if len(classes) == 2:
                out["roc_auc"] = float(roc_auc_score(y_true[seen] == classes[1], p[seen, 1]))
            else:
                out["roc_auc"] = float(roc_auc_score(y_true[seen], p[seen], multi_class="ovr", labels=classes))
        except ValueError:
            out["roc_auc"] = float("nan")
    return out


def split(X: pd.DataFrame, y: pd.Series, seed: int = SPLIT_SEED):
    """The authors' split: 80/20, unstratified."""
    return train_test_split(X, y, test_size=0.2, random_state=seed)


def shot_draw(n_train: int, shots: int, chunk: int) -> np.ndarray:
    """Positions of the context rows of test chunk ``chunk``: pandas' ``sample(n=shots,
    random_state=42 + chunk)`` of the training part, as the authors draw them."""
    return pd.RangeIndex(n_train).to_series().sample(n=shots, random_state=SPLIT_SEED + chunk).to_numpy()


def row_order(n: int, seed: int) -> np.ndarray:
    """A seed's order of the context rows (pandas' ``sample(frac=1, random_state=seed)``)."""
    return pd.RangeIndex(n).to_series().sample(frac=1, random_state=seed).to_numpy()


def column_order(d: int, seed: int) -> list[int]:
    """A seed's order of the columns (Python's ``random.seed(seed); random.shuffle``)."""
    import random

    order = list(range(d))
    random.Random(seed).shuffle(order)
    return order


def evaluate_dataset(name: str, X: pd.DataFrame, y: pd.Series, models: dict[str, PredictFn], shots: list[int],
                     seeds: list[int], max_test: int | None = None, test_chunk: int = 50) -> list[dict]:
    """Per (shots, model): one row per seed and a ``vote`` row, with the metrics on the test part (the
    same rows and the same draws for every model). Shot counts above the training part's size are left out."""
    X_train, X_test, y_train, y_test = split(X, y)
    if max_test is not None:
        X_test, y_test = X_test.iloc[:max_test], y_test.iloc[:max_test]
    classes = LabelMap.fit(y.to_numpy()).classes
    where = {c: i for i, c in enumerate(classes.tolist())}
    y_tr, y_te = y_train.to_numpy(), y_test.to_numpy()
    chunks = [np.arange(i, min(i + test_chunk, len(y_te))) for i in range(0, len(y_te), test_chunk)]
    rows = []
    for n in [s for s in shots if s <= len(X_train)]:
        draws = [shot_draw(len(X_train), n, i) for i in range(len(chunks))]
        for model_name, fn in models.items():
            probas, any_nn = [], False
            for seed in seeds:
                proba, nn = np.zeros((len(y_te), len(classes))), False
                cols = column_order(X.shape[1], seed)
                for draw, rows_i in zip(draws, chunks, strict=True):
                    idx = draw[row_order(n, seed)]
                    ctx_y = y_tr[idx]
                    if np.unique(ctx_y).size < 2:  # a context of one class: that class
                        proba[rows_i, where[ctx_y[0]]] = 1.0
                        continue
                    got, p = fn(X_train.iloc[idx, cols], ctx_y, X_test.iloc[rows_i, cols])
                    proba[np.ix_(rows_i, [where[c] for c in got.tolist()])] = p
                    nn = nn or bool(getattr(fn, "retrieved", False))
                probas.append(proba)
                any_nn = any_nn or nn
                rows.append({"dataset": name, "model": model_name, "shots": n, "seed": seed, "nn_shots": nn,
                             **metrics(y_te, classes, proba)})
            rows.append({"dataset": name, "model": model_name, "shots": n, "seed": VOTE, "nn_shots": any_nn,
                         **metrics(y_te, classes, np.mean(probas, axis=0))})
    return rows


def in_table_order(rows: list[dict], tables: list[str], models: list[str], shots: list[int],
                   seeds: list[int]) -> list[dict]:
    """Rows computed model by model, in the order ``evaluate_dataset`` gives them for all models at once
    (table, shots, model, seed): the results file does not depend on the order of the work."""
    order = [{v: i for i, v in enumerate(vals)} for vals in (tables, shots, models, [*seeds, VOTE])]
    keys = ("dataset", "shots", "model", "seed")
    return sorted(rows, key=lambda r: tuple(o[r[k]] for o, k in zip(order, keys, strict=True)))


def load_suite(ep: EvaluateParams, max_classes: int = MAX_LABELS) -> tuple[dict[str, tuple[pd.DataFrame, pd.Series]],
                                                                          dict[str, str]]:
    """The evaluation tables named by params, checked before any model runs. Tables the in-context models
    cannot take (more than ``max_classes`` classes: what every model compared can score; a single class) are
    skipped with the reason; an unreadable CSV is an error that names it."""
    tables: dict[str, tuple[pd.DataFrame, pd.Series]] = {}
    all_sk = sklearn_datasets() if ep.sklearn_datasets else {}
    for name in ep.sklearn_datasets:
        tables[name] = all_sk[name]
    if ep.csv_dir is not None:
        folder = Path(ep.csv_dir)
        if not folder.is_dir():
            raise TableError(f"evaluate.csv_dir {folder} is not a directory")
        paths = sorted(folder.glob("*.csv"))[: ep.max_csv]
        if not paths:
            raise TableError(f"evaluate.csv_dir {folder} holds no .csv files")
        for path in paths:
            tables[path.stem] = load_table(path)
    skipped = {}
    for name, (_, y) in list(tables.items()):
        k = y.nunique()
        if k > max_classes or k < 2:
            skipped[name] = f"{k} classes (the in-context models compared take 2..{max_classes})"
            del tables[name]
    return tables, skipped


def suite_id(ep: EvaluateParams, names: list[str]) -> str:
    """What the figures were measured on; equal ids mean comparable mean accuracies."""
    return (f"tables={','.join(names)};shots={','.join(map(str, ep.shots))};seeds={','.join(map(str, ep.seeds))};"
            f"max_test={ep.max_test};split=80/20@42")


def summarise(rows: list[dict], skipped: dict[str, str], suite: str) -> dict:
    """``metrics.json``: mean metrics per model over every (table, shots, seed), the same over the seeds'
    votes (``*_vote``, the authors' figures), the learning curve, the per-table means and the quality bar
    (lift over the majority class at 128 shots)."""
    everything = pd.DataFrame(rows)
    is_vote = everything.seed.astype(str) == VOTE
    df, votes = everything[~is_vote], everything[is_vote]
    out: dict = {"suite": suite, "skipped": skipped, "tables": sorted(df.dataset.unique().tolist())}
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "roc_auc", "log_loss"):
        out[f"mean_{metric}"] = {m: _num(v) for m, v in df.groupby("model")[metric].mean().items()}
    for metric in ("accuracy", "weighted_f1", "roc_auc"):
        out[f"mean_{metric}_vote"] = {m: _num(v) for m, v in votes.groupby("model")[metric].mean().items()}
    vote_curve = votes.groupby(["model", "shots"]).accuracy.mean()
    out["vote_accuracy_by_shots"] = {m: {str(n): _num(vote_curve[m][n]) for n in vote_curve[m].index}
                                     for m in vote_curve.index.get_level_values(0).unique()}
    out["nn_shots_rows"] = int(df.nn_shots.sum()) if "nn_shots" in df else 0
    curve = df.groupby(["model", "shots"]).accuracy.mean()
    out["accuracy_by_shots"] = {m: {str(n): _num(curve[m][n]) for n in curve[m].index} for m in curve.index.levels[0]}
    per = df.groupby(["dataset", "model"]).accuracy.mean()
    out["accuracy_by_table"] = {d: {m: _num(per[d][m]) for m in per[d].index} for d in per.index.levels[0]}
    if "trained" in out["accuracy_by_shots"]:
        mine = out["accuracy_by_shots"]["trained"]
        ns = sorted(int(n) for n in mine)
        at = "128" if "128" in mine else str(ns[-1])
        out["quality_bar"] = {
            "shots": int(at),
            "lift_over_majority": _num(mine[at] - out["accuracy_by_shots"]["majority"][at]),
            "rising": bool(mine[str(ns[-1])] > mine[str(ns[0])]),
        }
    return out


def _num(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else round(v, 6)
