"""research/score_corpus.py: teacher-forced label scoring of corpus sequences (a research diagnostic)."""

import numpy as np
import pytest
import torch

from mllm.core.params import parse_params
from mllm.inference.scoring import label_token_ids
from mllm.model.loading import load_base
from mllm.text.corpus import read_corpus
from mllm.text.prompt import parse_answer, parse_user_prompt
from mllm.text.tokenizer import build_tokenizer
from research.score_corpus import evaluate_corpus, score_sequence, shot_label_accuracy
from tests.training_helpers import make_corpus, raw_params


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    _, corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    return read_corpus(corpus / "full" / "shard-00000.parquet").slice(0, 3).to_pylist()


class _Out:
    def __init__(self, logits):
        self.logits = logits


class Oracle:
    """Puts all mass on the next token: right only where the scored positions are the label positions."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def eval(self):
        return self

    def __call__(self, input_ids):
        ids = input_ids[0]
        logits = torch.zeros(1, ids.numel(), self.vocab)
        logits[0, torch.arange(ids.numel() - 1), ids[1:]] = 1.0
        return _Out(logits)


class AlwaysZero(Oracle):
    def __init__(self, vocab: int, zero_id: int):
        super().__init__(vocab)
        self.zero_id = zero_id

    def __call__(self, input_ids):
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[0, :, self.zero_id] = 1.0
        return _Out(logits)


def _truth(row):
    table = parse_user_prompt(row["messages"][1]["content"])
    return table, parse_answer(row["messages"][2]["content"], table["queries"].shape[0], row["n_classes"])


def test_label_scoring_reads_label_positions(rows, tok):
    row = rows[0]
    model = load_base(parse_params(raw_params()).model, tok, seed=0)
    probs = score_sequence(model, tok, row["messages"], row["n_classes"])
    assert probs.shape == (row["n_queries"], row["n_classes"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert len(set(label_token_ids(tok, 10))) == 10

    assert evaluate_corpus(Oracle(len(tok)), tok, rows)["accuracy"] == 1.0
    zero = evaluate_corpus(AlwaysZero(len(tok), label_token_ids(tok, 2)[0]), tok, rows)
    truths = [_truth(r) for r in rows]
    answers = np.concatenate([t for _, t in truths])
    assert zero["queries"] == answers.size == sum(r["n_queries"] for r in rows)
    assert zero["accuracy"] == pytest.approx(np.mean(answers == 0))
    majority = np.concatenate([t == np.bincount(tab["shot_labels"], minlength=r["n_classes"]).argmax()
                               for (tab, t), r in zip(truths, rows)])
    assert zero["majority"] == pytest.approx(majority.mean())


def test_shot_label_accuracy_reads_each_shot_label_from_the_rows_before_it(rows, tok):
    res = shot_label_accuracy(Oracle(len(tok)), tok, rows)
    assert sum(r["labels"] for r in res) == sum(parse_user_prompt(r["messages"][1]["content"])["shots"].shape[0] - 1
                                                for r in rows)
    assert all(r["model"] == 1.0 for r in res if r["labels"])
    zero = shot_label_accuracy(AlwaysZero(len(tok), label_token_ids(tok, 2)[0]), tok, rows)
    labels = [parse_user_prompt(r["messages"][1]["content"])["shot_labels"] for r in rows]
    n = np.array([r["labels"] for r in zero])
    got = sum(r["model"] * c for r, c in zip(zero, n) if c) / n.sum()
    assert got == pytest.approx(np.mean(np.concatenate([y[1:] for y in labels]) == 0))
    # the majority column is the running majority of the labels before each shot
    running = np.concatenate([[np.bincount(y[:i]).argmax() == y[i] for i in range(1, y.size)] for y in labels])
    got = sum(r["majority"] * c for r, c in zip(zero, n) if c) / n.sum()
    assert got == pytest.approx(running.mean())
