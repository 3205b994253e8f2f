"""Held-out synthetic tasks: how well a model classifies tasks from the training prior that it never saw.

The tasks come from the generate stage's prior and params and pass the filter stage's teacher gates, but
from a seed stream of their own (the pipeline seed and ``HELDOUT_STREAM``), so no corpus task is among
them. Each task's first ``shots`` rows are the context and its query rows are scored, through the same
predict functions as the real tables (categorical columns as text categories, as a user's table has them).
Beside the real tables this says whether training taught what the corpus holds; ``heldout_label_loss``
says it more finely (teacher-forced, the training loss on tasks no corpus holds).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mllm.core.errors import InputError
from mllm.core.params import EncodeParams, Params
from mllm.data.filter import gates_of
from mllm.data.prior.sampler import generate_task
from mllm.data.task import Task
from mllm.data.teacher import judge_task
from mllm.evaluation.suite import PredictFn

HELDOUT_STREAM = 0x4E1D  # mixed with the pipeline seed: a task stream the generate stage never draws
MAX_DRAWS = 20  # tasks drawn per task kept, at most


def heldout_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, HELDOUT_STREAM]).generate_state(1)[0])


def _first(task: Task, shots: int, queries: int) -> Task:
    """The task cut to its first ``shots`` rows and first ``queries`` query rows: what is scored of it."""
    s, q = min(shots, task.n_shots), min(queries, task.n_queries)
    rows = np.r_[0:s, task.n_shots:task.n_shots + q]
    return dataclasses.replace(task, X=task.X[rows], y=task.y[rows], n_shots=s, n_queries=q)


def _tables(task: Task, shots: int, queries: int) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """(context, its labels, queries, their labels): the task's first ``shots`` rows and first ``queries``
    query rows."""
    task = _first(task, shots, queries)
    s = task.n_shots
    frame = pd.DataFrame(task.X, columns=[f"x{j}" for j in range(task.n_features)])
    for j in np.flatnonzero(task.categorical):
        frame[f"x{j}"] = [f"v{int(v)}" for v in task.X[:, j]]
    return frame.iloc[:s], task.y[:s], frame.iloc[s:].reset_index(drop=True), task.y[s:]


def heldout_tasks(params: Params, n: int, shots: int) -> list[Task]:
    """``n`` held-out tasks the teacher keeps and whose first ``shots`` rows hold at least two classes."""
    seed, gates, fp = heldout_seed(params.seed), gates_of(params.filter), params.filter
    tasks: list[Task] = []
    for i in range(MAX_DRAWS * n):
        if len(tasks) == n:
            break
        task = generate_task(seed, i, params.generate)
        if np.unique(task.y[:min(shots, task.n_shots)]).size >= 2 and judge_task(task, gates, fp.n_estimators, seed).kept:
            tasks.append(task)
    if len(tasks) < n:
        raise InputError(f"only {len(tasks)} of {n} held-out synthetic tasks passed the teacher in {MAX_DRAWS * n} "
                         "draws: loosen the filter params or ask for fewer evaluate.synthetic.tasks")
    return tasks


def heldout_accuracy(fn: PredictFn, tasks: list[Task], shots: int, queries: int) -> float:
    """Accuracy over the tasks' scored query rows (every task scores the same number)."""
    right = []
    for task in tasks:
        ctx, y, qry, truth = _tables(task, shots, queries)
        classes, proba = fn(ctx, y, qry)
        right.append(np.asarray(classes)[np.asarray(proba).argmax(axis=1)] == truth)
    return round(float(np.concatenate(right).mean()), 6)


def heldout_label_loss(model, tokenizer, tasks: list[Task], ep: EncodeParams, shots: int, queries: int,
                       seed: int) -> float:
    """Teacher-forced: the mean cross-entropy of the answers' label tokens, each task encoded as a training
    sequence is (its first ``shots`` rows, as many as ``ep.cutoff_len`` allows, and ``queries`` query rows)."""
    import torch

    from mllm.model.train import causal_lm_loss
    from mllm.model.training_data import IGNORE, collate, tokenize_example
    from mllm.text.corpus import encode_task

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for task in tasks:
        cut = _first(task, shots, queries)
        seq = encode_task(cut, tokenizer, seed, ep.model_copy(update={"max_queries": cut.n_queries}))
        ex = tokenize_example(tokenizer, seq.messages, shot_label_loss=False, answer_loss="labels")
        batch = {k: v.to(device) for k, v in collate([ex], tokenizer.pad_token_id).items()}
        n = int((batch["labels"] != IGNORE).sum())
        with torch.no_grad():
            total += float(causal_lm_loss(model, batch)) * n
        count += n
    return round(total / count, 6)
