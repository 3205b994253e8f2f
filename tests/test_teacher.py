"""Each gate rule on constructed predictions, the consensus quota, and degenerate tasks."""

import numpy as np
import pytest
from scipy.stats import binomtest

from mllm.data.task import Task
from mllm.data.teacher import Gates, chance_level, consensus_rows, evaluate_gates, judge_task

G = Gates()


def _labels(*counts):
    return np.concatenate([np.full(c, k) for k, c in enumerate(counts)])


def test_chance_level_is_max_of_two_guessers():
    assert chance_level(_labels(50, 50), 2) == pytest.approx(0.5)
    assert chance_level(_labels(90, 10), 2) == pytest.approx(0.9)  # majority beats 0.81 + 0.01
    assert chance_level(_labels(40, 30, 30), 3) == pytest.approx(0.4)  # max(0.34, 0.4)


def test_good_teacher_is_kept():
    shots = _labels(50, 50)
    y = _labels(25, 25)
    pred = y.copy()
    pred[:3] = 1
    r = evaluate_gates(shots, y, pred, 2, G)
    assert r["failed_rule"] == "" and r["accuracy"] == pytest.approx(47 / 50)
    assert r["p_value"] == pytest.approx(binomtest(47, 50, 0.5, alternative="greater").pvalue)


def test_binomial_rule():
    shots = _labels(50, 50)
    y = _labels(25, 25)
    pred = y.copy()
    pred[:11] = 1 - pred[:11]  # 39/50... still significant; make it 27/50
    pred = y.copy()
    pred[:23] = 1 - pred[:23]  # 27/50 correct: p ~ 0.34 >= 0.2
    r = evaluate_gates(shots, y, pred, 2, G)
    assert r["failed_rule"] == "binomial" and "p=" in r["detail"]


def test_kappa_rule():
    # a lenient binomial threshold lets the kappa rule decide: majority-level accuracy, no agreement
    shots = _labels(80, 20)
    y = _labels(40, 10)
    pred = np.zeros(50, dtype=int)
    r = evaluate_gates(shots, y, pred, 2, Gates(p_value_max=1.0))
    assert r["kappa"] == 0.0 and r["failed_rule"] == "kappa"


def test_balanced_accuracy_rule():
    shots = _labels(34, 33, 33)
    y = _labels(17, 17, 16)
    pred = y.copy()
    pred[17:34] = 0  # class 1 never right: balanced acc = (1 + 0 + 1)/3 = 0.667 > 0.363 -> passes
    assert evaluate_gates(shots, y, pred, 3, Gates(p_value_max=1.0, kappa_min=-1))["failed_rule"] == ""
    r = evaluate_gates(shots, y, pred, 3, Gates(p_value_max=1.0, kappa_min=-1, balanced_accuracy_margin=0.4))
    assert r["failed_rule"] == "balanced_accuracy"


def test_macro_f1_rule():
    shots = _labels(90, 10)
    y = _labels(45, 5)
    pred = np.ones(50, dtype=int)
    pred[:10] = 0  # mostly wrong: macro-F1 below always-majority's
    r = evaluate_gates(shots, y, pred, 2, Gates(p_value_max=1.01, kappa_min=-1.0, balanced_accuracy_margin=0.0))
    assert r["macro_f1"] < r["majority_macro_f1"] and r["failed_rule"] == "macro_f1"


def test_collapse_rule():
    shots = _labels(50, 50)
    y = _labels(49, 1)
    pred = np.zeros(50, dtype=int)
    pred[-1] = 1  # perfect, but 98% one class predicted
    r = evaluate_gates(shots, y, pred, 2, Gates(p_value_max=1.0, kappa_min=-1.0))
    assert r["failed_rule"] == "collapse" and r["dominant_share"] == pytest.approx(0.98)
    assert evaluate_gates(shots, y, pred, 2, Gates(p_value_max=1.0, kappa_min=-1.0, max_dominant_share=0.99))[
        "failed_rule"] == ""


def test_first_failed_rule_is_recorded_in_order():
    shots = _labels(50, 50)
    y = _labels(25, 25)
    pred = np.zeros(50, dtype=int)  # fails binomial, kappa, balanced acc and collapse
    assert evaluate_gates(shots, y, pred, 2, G)["failed_rule"] == "binomial"


def test_consensus_quota_follows_shot_mix():
    rng = np.random.default_rng(0)
    shots = _labels(60, 30, 10)  # shares 0.6 / 0.3 / 0.1
    y = _labels(20, 20, 10)
    correct = np.ones(50, dtype=bool)
    rows = consensus_rows(shots, y, correct, 3, rng)
    got = np.bincount(y[rows], minlength=3)
    # largest total whose shares fit: class 0 limits it to 20/0.6 = 33.3 -> 20, 10, 3
    assert got.tolist() == [20, 10, 3]
    assert np.all(np.diff(rows) > 0)


def test_consensus_only_correct_rows_and_at_least_one_per_label():
    rng = np.random.default_rng(1)
    shots = _labels(95, 5)
    y = _labels(40, 10)
    correct = np.zeros(50, dtype=bool)
    correct[:30] = True  # 30 right of class 0
    correct[45] = True  # 1 right of class 1
    rows = consensus_rows(shots, y, correct, 2, rng)
    assert correct[rows].all()
    got = np.bincount(y[rows], minlength=2)
    assert got[1] == 1 and got[0] == 19  # 1 / 0.05 = 20 total -> 19 + at least 1
    assert consensus_rows(shots, y, np.zeros(50, dtype=bool), 2, rng).size == 0


def _task(x, y, n_shots, k=2):
    return Task(task_id=1, seed=0, prior="mlp", X=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int8),
                n_shots=n_shots, n_queries=len(y) - n_shots, n_classes=k,
                categorical=np.zeros(np.asarray(x).shape[1], dtype=bool))


@pytest.mark.parametrize("x, y, why", [
    (np.random.default_rng(0).normal(size=(30, 3)), [0] * 20 + [0, 1] * 5, "fewer than 2 classes"),
    (np.ones((30, 3)), [0, 1] * 15, "constant"),
    (np.full((30, 3), np.nan), [0, 1] * 15, "constant"),
])
def test_degenerate_tasks_are_rejected_with_a_reason(x, y, why):
    r = judge_task(_task(x, y, 20), G, 5, 0)
    assert not r.kept and r.failed_rule == "degenerate" and why in r.detail


def test_judge_task_keeps_learnable_and_rejects_most_noise():
    rng = np.random.default_rng(3)
    learnable, noise = [], []
    for _ in range(30):
        x = rng.normal(size=(250, 4))
        learnable.append(judge_task(_task(x, (x[:, 0] > 0).astype(int), 200), G, 30, 0).kept)
        noise.append(judge_task(_task(x, rng.integers(0, 2, size=250), 200), G, 30, 0))
    assert all(learnable)
    # p < 0.2 is a lenient gate by design: some noise slips through, most does not
    assert np.mean([r.kept for r in noise]) < 0.35
    assert {r.failed_rule for r in noise if not r.kept} <= {"binomial", "kappa", "balanced_accuracy", "macro_f1"}
