"""Tables with more than 10 classes (the authors' benchmark has up to 100). Labels are scored as the token
sequences the model writes: the embedded tokenizer writes 0..99 as single tokens, Qwen's one digit per token,
and each label gets the exact probability that decoding constrained to the task's labels writes it. A
26-class table is predicted and evaluated end to end; a model that cannot write a label says so before work."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import make_classification
from typer.testing import CliRunner

from mllm.cli import app
from mllm.core.errors import InputError
from mllm.inference.classifier import MLLMClassifier
from mllm.inference.predict import Predictor
from mllm.inference.scoring import check_labels, label_capacity, label_tokens
from mllm.model.loading import TINY_BASE_DIR
from mllm.text import prompt
from mllm.text.tokenizer import build_qwen25_tokenizer, build_tokenizer
from tests.conftest import ROOT


def _letters(n=1200, seed=0):
    """A letter-like table: 16 features, 26 classes."""
    X, y = make_classification(n_samples=n, n_features=16, n_informative=12, n_redundant=2, n_classes=26,
                               n_clusters_per_class=1, class_sep=2.0, random_state=seed)
    return X, np.array([chr(ord("A") + k) for k in y])


@pytest.fixture(scope="module")
def qwen():
    return build_qwen25_tokenizer()


class _NoSevens:
    """A tokenizer that drops the digit 7: it cannot write label 7."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, text, add_special_tokens=False):
        return self.inner.encode(text.replace("7", ""), add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self.inner.decode(ids)


def test_label_capacity_of_the_tokenizers(qwen):
    assert label_capacity(build_tokenizer("whole")) == 100
    assert label_capacity(qwen) == 100
    check_labels(qwen, 100)
    with pytest.raises(InputError, match="cannot write label 7 .*at most 7 classes"):
        check_labels(_NoSevens(build_tokenizer("whole")), 26)
    assert label_capacity(_NoSevens(build_tokenizer("whole"))) == 7
    with pytest.raises(InputError, match="at most 100 are supported"):
        check_labels(build_tokenizer("whole"), 101)


def test_label_tokens_of_qwen(qwen):
    """Qwen writes 12 as "1", "2": labels 1 and 2 of a 26-class task are prefixes with a choice (probes);
    the embedded tokenizer writes every label as one token (no probes)."""
    labels = label_tokens(qwen, 26)
    assert not labels.single and labels.width == 2 and len(labels.probes) == 2
    assert [qwen.decode(list(p)) for p in labels.probes] == ["1", "2"]
    whole = label_tokens(build_tokenizer("whole"), 26)
    assert whole.single and whole.probes == [] and whole.width == 1


def _constrained(labels, logits_after, last):
    """The reference: each label's probability under decoding constrained to the labels, by enumeration
    (``logits_after(prefix)``: the model's next-token logits after the label tokens ``prefix``)."""
    end = labels.end_last if last else labels.end_next
    scores = []
    for seq in labels.seqs:
        lp = 0.0
        for j in range(len(seq) + 1):
            node = seq[:j]
            allowed = sorted({s[j] for s in labels.seqs if len(s) > j and s[:j] == node})
            allowed += [end] if j and node in labels.seqs else []
            if len(allowed) > 1:
                ls = torch.log_softmax(logits_after(node)[allowed].double(), dim=0)
                lp += float(ls[allowed.index(seq[j] if j < len(seq) else end)])
        scores.append(lp)
    return torch.softmax(torch.tensor(scores), dim=0).numpy()


def test_label_probabilities_are_the_constrained_decoding_probabilities(qwen):
    labels = label_tokens(qwen, 26)
    g = torch.Generator().manual_seed(0)
    root = torch.randn(3, 152000, generator=g)
    probes = [torch.randn(3, 152000, generator=g) for _ in labels.probes]
    last = np.array([False, True, False])
    got = labels.proba(root, probes, last).numpy()
    for r in range(3):
        after = {(): root[r], **{p: probes[i][r] for i, p in enumerate(labels.probes)}}
        want = _constrained(labels, lambda node, r=r, after=after: after[node], last[r])
        np.testing.assert_allclose(got[r], want, atol=1e-5)
    assert np.allclose(got.sum(axis=1), 1.0)


@pytest.fixture(scope="module")
def tiny_qwen(qwen):
    """A tiny random Qwen2 with Qwen2.5's tokenizer. Its logits favour the digit 1 at even positions, so
    that its greedy answers mix one- and two-token labels (a random model alone always picks one digit)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    one = qwen.convert_tokens_to_ids("1")

    class Ones(Qwen2ForCausalLM):
        def forward(self, input_ids=None, position_ids=None, cache=None, **kw):
            out = super().forward(input_ids=input_ids, position_ids=position_ids, cache=cache, **kw)
            pos = position_ids if position_ids is not None else torch.arange(input_ids.shape[1])[None]
            out.logits[..., one] += 4.0 * (pos[:, -out.logits.shape[1]:] % 2 == 0)
            return out

    config = Qwen2Config(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768)
    torch.manual_seed(0)
    return Ones(config).eval(), qwen


@pytest.mark.parametrize("decoder", [{"batch": 2}, {}, {"decode": "sequential"}, {"decode": "parallel"}])
def test_multi_token_labels_score_exactly(tiny_qwen, decoder):
    """A 26-class table through a Qwen-tokenized model: every decoder's probabilities equal the constrained
    probabilities computed from uncached forward passes over the full text, with the decoder's own earlier
    choices (one- and two-token labels both among them)."""
    model, tok = tiny_qwen
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(26), rng.integers(0, 26, 14)])
    ctx = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    qry = pd.DataFrame(rng.normal(size=(8, 3)), columns=["a", "b", "c"])
    qry.loc[5, "a"] = ctx.a.mean() - 3.9 * ctx.a.std()  # a two-digit code: the second chunk is one token shorter
    pred = Predictor(model, tok, max_queries=4, **decoder)
    enc = pred.encode(ctx, y, qry)
    probs = pred.predict_proba_encoded(enc)
    labels = label_tokens(tok, 26)
    chosen = probs.argmax(axis=1)
    assert len(labels.seqs[chosen[0]]) == 2 and len(labels.seqs[chosen[4]]) == 1  # side by side: different lengths

    def after(ids):
        with torch.no_grad():
            return model(input_ids=torch.as_tensor([ids]), logits_to_keep=1).logits[0, -1]

    prefix = pred._ids(pred._prefix_text(enc.shots, enc.shot_ids))
    for start in (0, 4):
        ids = prefix + pred._ids(pred._suffix_text(enc.queries[start:start + 4]))
        for i in range(4):
            ids += pred._ids(prompt.answer_piece(i))
            want = _constrained(labels, lambda node, ids=ids: after(ids + list(node)), i == 3)
            np.testing.assert_allclose(probs[start + i], want, atol=2e-4)
            ids += list(labels.seqs[chosen[start + i]])


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
                "evaluate.include_base=false", "evaluate.compare_champion=false", "evaluate.synthetic.tasks=0"]
    metrics = tmp_path / "evaluate.json"
    res = CliRunner().invoke(app, ["evaluate", "--params", str(ROOT / "params.yaml"), "--model", str(TINY_BASE_DIR),
                                   "--out", str(tmp_path / "eval"), "--metrics", str(metrics),
                                   "--curve", str(tmp_path / "curve.csv"),
                                   "--training-curve", str(tmp_path / "training_curve.csv"), *[a for s in settings for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    summary = json.loads(metrics.read_text())
    assert summary["tables"] == ["letter26"] and summary["skipped"] == {}
    assert summary["mean_accuracy"]["trained"] > summary["mean_accuracy"]["majority"]
