"""Held-out synthetic tasks: drawn from the training prior on a seed stream no corpus uses, kept by the
teacher, and scored through the same predict functions as the real tables."""

import numpy as np
import pandas as pd
import pytest

from mllm.core.errors import InputError
from mllm.core.params import parse_params
from mllm.data.prior.sampler import generate_task
from mllm.evaluation.suite import baseline
from mllm.evaluation.synthetic import _tables, heldout_accuracy, heldout_tasks
from tests.training_helpers import raw_params


@pytest.fixture(scope="module")
def params():
    return parse_params(raw_params(generate={"shots": {"min": 16, "max": 64}, "queries": 20}))


def test_heldout_tasks_are_seeded_kept_and_not_the_corpus(params):
    tasks = heldout_tasks(params, 8, shots=32)
    again = heldout_tasks(params, 8, shots=32)
    assert [t.X.tobytes() for t in tasks] == [t.X.tobytes() for t in again]  # the same params, the same tasks
    corpus = [generate_task(params.seed, i, params.generate) for i in range(64)]  # what the generate stage draws
    assert not {t.X.tobytes() for t in tasks} & {t.X.tobytes() for t in corpus}
    for t in tasks:
        ctx, y, qry, _ = _tables(t, 32, 5)
        assert len(ctx) == min(32, t.n_shots) and len(qry) == 5 and np.unique(y).size >= 2
        text = [not pd.api.types.is_numeric_dtype(ctx[c]) for c in ctx]
        assert text == list(t.categorical)  # categories reach a model as text, as a table's do


def test_heldout_accuracy_scores_the_query_rows(params):
    tasks = heldout_tasks(params, 12, shots=32)

    answers = iter([_tables(t, 32, 10)[3] for t in tasks])

    def oracle(ctx, y, qry):  # knows the answers (tasks are scored in order): every row right
        truth = next(answers)
        classes = np.unique(np.concatenate([y, truth]))
        return classes, np.eye(len(classes))[np.searchsorted(classes, truth)]

    assert heldout_accuracy(oracle, tasks, 32, 10) == 1.0
    rf = heldout_accuracy(baseline("random_forest", 0), tasks, 32, 10)
    majority = heldout_accuracy(baseline("majority", 0), tasks, 32, 10)
    assert rf > majority  # the teacher kept tasks that a forest can learn from their shots


def test_a_filter_that_keeps_nothing_is_named(params):
    strict = params.model_copy(update={"filter": params.filter.model_copy(update={"kappa_min": 0.999})})
    with pytest.raises(InputError, match="held-out synthetic tasks passed the teacher"):
        heldout_tasks(strict, 2, shots=32)


def test_heldout_label_loss_reads_the_labels_the_shots_give(params):
    """The compiled base reads each answer off the shots: its teacher-forced label loss is lower on the tasks
    as they are than on the same tasks with their labels permuted (the features no longer say the label)."""
    import dataclasses

    from mllm.evaluation.synthetic import heldout_label_loss
    from mllm.model.loading import TINY_BASE_DIR, load_trained_with_tokenizer

    model, tok = load_trained_with_tokenizer(TINY_BASE_DIR, device="cpu")
    tasks = heldout_tasks(params, 6, shots=32)
    rng = np.random.default_rng(0)
    shuffled = [dataclasses.replace(t, y=rng.permutation(t.y)) for t in tasks]
    real = heldout_label_loss(model, tok, tasks, params.encode, 32, 10, params.seed)
    control = heldout_label_loss(model, tok, shuffled, params.encode, 32, 10, params.seed)
    assert np.isfinite(real) and real + 0.2 < control
