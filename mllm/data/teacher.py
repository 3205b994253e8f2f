"""Random-forest teacher: task-level quality gates and sample-level consensus (the warm-up corpus).

A task is kept only if a small random forest fitted on its shot rows does measurably better than chance
on its query rows; tasks that are pure noise (or degenerate) would only teach the model to guess.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score

from mllm.data.task import Task

RULES = ("degenerate", "binomial", "kappa", "balanced_accuracy", "macro_f1", "collapse")


@dataclass(frozen=True)
class Gates:
    """Thresholds of the task-level gates (``filter`` section of params.yaml)."""

    p_value_max: float = 0.2
    kappa_min: float = 0.01
    balanced_accuracy_margin: float = 0.03
    min_predicted_classes: int = 2
    max_dominant_share: float = 0.95


@dataclass
class TeacherResult:
    task_id: int
    prior: str
    n_classes: int
    n_shots: int
    n_features: int
    accuracy: float
    balanced_accuracy: float
    kappa: float
    macro_f1: float
    majority_macro_f1: float
    chance: float
    p_value: float
    predicted_classes: int
    dominant_share: float
    kept: bool
    failed_rule: str  # "" when kept; else the first rule (in RULES order) the task failed
    detail: str
    correct: np.ndarray  # (n_queries,) bool: which query rows the teacher got right


def chance_level(shot_labels: np.ndarray, n_classes: int) -> float:
    """p0 = max(sum p_k^2, max p_k) over the shot class shares: the better of two no-skill guessers
    (matching the class mix at random, or always answering the majority class)."""
    shares = np.bincount(shot_labels, minlength=n_classes) / shot_labels.size
    return float(max((shares**2).sum(), shares.max()))


def rf_seed(seed: int, task_id: int) -> int:
    return int(np.random.SeedSequence([seed, task_id, 0x7EAC]).generate_state(1)[0])


def teacher_predict(task: Task, n_estimators: int, seed: int) -> np.ndarray:
    s = task.n_shots
    rf = RandomForestClassifier(n_estimators=n_estimators, random_state=rf_seed(seed, task.task_id), n_jobs=1)
    rf.fit(task.X[:s], task.y[:s])
    return rf.predict(task.X[s:])


def evaluate_gates(
    y_shot: np.ndarray, y_query: np.ndarray, pred: np.ndarray, n_classes: int, gates: Gates
) -> dict:
    """All gate statistics for one task's teacher predictions, and the first failed rule."""
    correct = pred == y_query
    n = int(y_query.size)
    k = int(correct.sum())
    p0 = chance_level(y_shot, n_classes)
    p_value = float(binomtest(k, n, p0, alternative="greater").pvalue)
    labels = np.arange(n_classes)
    majority = np.full_like(y_query, np.bincount(y_shot, minlength=n_classes).argmax())
    macro_f1 = float(f1_score(y_query, pred, labels=labels, average="macro", zero_division=0))
    majority_f1 = float(f1_score(y_query, majority, labels=labels, average="macro", zero_division=0))
    with warnings.catch_warnings():  # undefined kappa, classes missing on one side: expected, handled here
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(y_query, pred, labels=labels))
        bal = float(balanced_accuracy_score(y_query, pred))
    kappa = 0.0 if np.isnan(kappa) else kappa  # a single class on both sides: no agreement beyond chance
    counts = np.bincount(pred, minlength=n_classes)
    predicted_classes = int((counts > 0).sum())
    dominant = float(counts.max() / n)

    checks = [
        ("binomial", p_value < gates.p_value_max, f"p={p_value:.3g} >= {gates.p_value_max}"),
        ("kappa", kappa > gates.kappa_min, f"kappa={kappa:.3f} <= {gates.kappa_min}"),
        ("balanced_accuracy", bal > 1 / n_classes + gates.balanced_accuracy_margin,
         f"balanced_acc={bal:.3f} <= 1/{n_classes}+{gates.balanced_accuracy_margin}"),
        ("macro_f1", macro_f1 >= majority_f1, f"macro_f1={macro_f1:.3f} < majority {majority_f1:.3f}"),
        ("collapse", predicted_classes >= gates.min_predicted_classes and dominant <= gates.max_dominant_share,
         f"{predicted_classes} predicted classes, dominant share {dominant:.2f}"),
    ]
    failed = next(((rule, why) for rule, ok, why in checks if not ok), ("", ""))
    return {
        "accuracy": k / n,
        "balanced_accuracy": bal,
        "kappa": kappa,
        "macro_f1": macro_f1,
        "majority_macro_f1": majority_f1,
        "chance": p0,
        "p_value": p_value,
        "predicted_classes": predicted_classes,
        "dominant_share": dominant,
        "failed_rule": failed[0],
        "detail": failed[1],
        "correct": correct,
    }


def _degenerate(task: Task) -> str:
    s = task.n_shots
    if task.n_queries < 1:
        return "no query rows"
    if np.unique(task.y[:s]).size < 2:
        return "fewer than 2 classes among the shot rows"
    if task.X.shape[1] == 0 or not (np.ptp(task.X[:s], axis=0) > 0).any():
        return "all feature columns constant on the shot rows"
    if not np.isfinite(task.X).all():
        return "non-finite feature values"
    return ""


def judge_task(task: Task, gates: Gates, n_estimators: int, seed: int) -> TeacherResult:
    """Fit the teacher on the shots, predict the queries, apply the gates. Never raises on bad tasks:
    degenerate ones are rejected with the reason recorded."""
    base = dict(task_id=task.task_id, prior=task.prior, n_classes=task.n_classes, n_shots=task.n_shots,
                n_features=task.n_features)
    why = _degenerate(task)
    if why:
        nan = float("nan")
        return TeacherResult(**base, accuracy=nan, balanced_accuracy=nan, kappa=nan, macro_f1=nan,
                             majority_macro_f1=nan, chance=nan, p_value=nan, predicted_classes=0,
                             dominant_share=nan, kept=False, failed_rule="degenerate", detail=why,
                             correct=np.zeros(task.n_queries, dtype=bool))
    s = task.n_shots
    pred = teacher_predict(task, n_estimators, seed)
    stats = evaluate_gates(task.y[:s].astype(np.int64), task.y[s:].astype(np.int64), pred.astype(np.int64),
                           task.n_classes, gates)
    return TeacherResult(**base, **stats, kept=stats["failed_rule"] == "")


def consensus_rows(
    shot_labels: np.ndarray, query_labels: np.ndarray, correct: np.ndarray, n_classes: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices (into the queries, ascending) of the warm-up rows of one kept task.

    Only rows the teacher got right are eligible; per-class quotas follow the shot label mix: the largest
    total whose proportional share fits every class's eligible rows, at least one row per label present.
    """
    shares = np.bincount(shot_labels, minlength=n_classes) / shot_labels.size
    idx = np.flatnonzero(correct)
    if idx.size == 0:
        return idx
    avail = np.bincount(query_labels[idx], minlength=n_classes)
    present = avail > 0
    with np.errstate(divide="ignore"):
        total = np.min(np.where(present & (shares > 0), avail / np.where(shares > 0, shares, 1), np.inf))
    if not np.isfinite(total):  # eligible rows only of classes absent from the shots
        total = 0.0
    quota = np.where(present, np.minimum(avail, np.maximum(1, np.floor(total * shares + 1e-9))), 0).astype(int)
    chosen = [rng.choice(idx[query_labels[idx] == c], size=q, replace=False) for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(chosen)) if chosen else idx[:0]
