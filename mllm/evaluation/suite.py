"""Evaluation on real tables: the paper's protocol, with the in-context model beside classical baselines.

80/20 split (seed 42), a sweep over the number of context rows (shots) drawn from the training part with
several row-shuffle seeds, test rows in chunks of 50, and sklearn's metrics. Every model sees the same
splits and the same shots.
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


def sklearn_datasets() -> dict[str, tuple[pd.DataFrame, pd.Series]]:
    """scikit-learn's bundled classification tables (they load offline)."""
    from sklearn import datasets

    out = {}
    for name in SKLEARN_DATASETS:
        b = getattr(datasets, f"load_{name}")(as_frame=True)
        out[name] = (b.data, b.target)
    return out


def numeric_features(ctx: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The baselines' view: ordinal-coded categoricals, missing values -> the context mean."""
    c, t, _ = ordinal_encode(ctx, test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing column
        mean = np.nan_to_num(np.nanmean(c, axis=0))
    return np.where(np.isnan(c), mean, c), np.where(np.isnan(t), mean, t)


def baseline(name: str, seed: int) -> PredictFn:
    """RandomForest (30 trees), kNN (k=8, distance), XGBoost (500 trees, depth 4, lr 0.05), logistic
    regression, majority class: fitted on the context rows only."""
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
            est = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(8, len(ids)), weights="distance"))
        elif name == "xgboost":
            from xgboost import XGBClassifier

            est = XGBClassifier(n_estimators=500, max_depth=4, learning_rate=0.05, random_state=seed, n_jobs=1,
                                verbosity=0)
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
    """accuracy, balanced accuracy, macro-F1, ROC AUC (one-vs-rest) and log-loss, from sklearn."""
    pred = classes[proba.argmax(axis=1)]
    with warnings.catch_warnings():
        # a small test split need not hold every predicted class; the score is still defined
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        out = {
            "accuracy": float(accuracy_score(y_true, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
            "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
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


def split(X: pd.DataFrame, y: pd.Series, seed: int = 42):
    strat = y if y.value_counts().min() >= 2 else None
    return train_test_split(X, y, test_size=0.2, random_state=seed, stratify=strat)


def evaluate_dataset(name: str, X: pd.DataFrame, y: pd.Series, models: dict[str, PredictFn], shots: list[int],
                     seeds: list[int], max_test: int | None = None) -> list[dict]:
    """One row per (model, shots, seed) with the metrics on the test part (the same rows for every model)."""
    X_train, X_test, y_train, y_test = split(X, y)
    if max_test is not None:
        X_test, y_test = X_test.iloc[:max_test], y_test.iloc[:max_test]
    rows = []
    for n in [s for s in shots if s <= len(X_train)]:
        for seed in seeds:
            idx = np.random.default_rng(np.random.SeedSequence([seed, n])).permutation(len(X_train))[:n]
            ctx, ctx_y = X_train.iloc[idx], y_train.to_numpy()[idx]
            if np.unique(ctx_y).size < 2:
                continue  # a context of one class says nothing about the others
            for model_name, fn in models.items():
                classes, proba = fn(ctx, ctx_y, X_test)
                rows.append({"dataset": name, "model": model_name, "shots": n, "seed": seed,
                             **metrics(y_test.to_numpy(), classes, proba)})
    return rows


def in_table_order(rows: list[dict], tables: list[str], models: list[str], shots: list[int],
                   seeds: list[int]) -> list[dict]:
    """Rows computed model by model, in the order ``evaluate_dataset`` gives them for all models at once
    (table, shots, seed, model): the results file does not depend on the order of the work."""
    order = [{v: i for i, v in enumerate(vals)} for vals in (tables, shots, seeds, models)]
    keys = ("dataset", "shots", "seed", "model")
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
    """``metrics.json``: mean metrics per model over every (table, shots, seed), the learning curve, the
    per-table means and the quality bar (lift over the majority class at 128 shots)."""
    df = pd.DataFrame(rows)
    out: dict = {"suite": suite, "skipped": skipped, "tables": sorted(df.dataset.unique().tolist())}
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss"):
        out[f"mean_{metric}"] = {m: _num(v) for m, v in df.groupby("model")[metric].mean().items()}
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
