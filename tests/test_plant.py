"""The compiled kernel-vote base: deterministic, a real in-context classifier, the committed base is it."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from mllm import MLLMClassifier
from mllm.core.errors import StageFailed
from mllm.core.params import ParamsError
from mllm.model.loading import TINY_BASE_DIR
from mllm.model.plant import save_planted
from mllm.text.tokenizer import build_tokenizer
from tests.conftest import ROOT, section

SETTINGS = section("plant")  # params.yaml's: the settings the committed base is built with


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("plant") / "base"
    return out, save_planted(out, build_tokenizer("whole"), SETTINGS)


def _task(n_features, n_shots, n_test, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_shots + n_test, n_features))
    y = (X[:, :3].sum(axis=1) > 0).astype(int)        # a rule on three of the columns
    return X[:n_shots], y[:n_shots], X[n_shots:], y[n_shots:]


def test_same_settings_same_bytes(planted, tmp_path):
    _, record = planted
    again = save_planted(tmp_path / "again", build_tokenizer("whole"), SETTINGS)
    assert again["model_sha256"] == record["model_sha256"]
    other = save_planted(tmp_path / "other", build_tokenizer("whole"), section("plant", seed=7))
    assert other["model_sha256"] != record["model_sha256"]


def test_same_bytes_whatever_the_thread_count(planted, tmp_path):
    """The construction's linear algebra must not depend on how the BLAS splits it (float32 QR did)."""
    import torch

    _, record = planted
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if before > 1 else 2)
        again = save_planted(tmp_path / "threads", build_tokenizer("whole"), SETTINGS)
    finally:
        torch.set_num_threads(before)
    assert again["model_sha256"] == record["model_sha256"]


@pytest.mark.parametrize("n_features", [3, 12])
def test_classifies_in_context_untrained(planted, n_features):
    """No training at all: the forward pass is a kernel vote over the shots, column by column."""
    out, _ = planted
    Xs, ys, Xq, yq = _task(n_features, 96, 40, seed=n_features)
    acc = (MLLMClassifier(model=str(out)).fit(Xs, ys).predict(Xq) == yq).mean()
    majority = (yq == np.bincount(ys).argmax()).mean()
    assert acc >= majority + 0.2 and acc >= 0.75, (acc, majority)


def test_a_row_summary_does_not_drift_across_the_window(planted):
    """The same row's summary at 16,000 tokens equals the one at the start: the content match, sinks and
    flags sit on rotary pairs that do not turn over the window (on the pair next to the offsets', the sink
    lost its margin and the summary at the window's end was off by 270 %)."""
    import torch

    from mllm.model import plant
    from mllm.model.loading import load_trained_with_tokenizer
    from mllm.text.prompt import shot_lines

    out, _ = planted
    model, tok = load_trained_with_tokenizer(out)
    assert model.config.max_position_embeddings == 16384
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 999, size=(2000, 3)), rng.integers(0, 3, size=2000)
    X[-1], y[-1] = X[0], y[0]
    ids = tok("<|im_start|>" + "\n".join(shot_lines(X, y)) + "\n", add_special_tokens=False)["input_ids"]
    assert 15000 < len(ids) <= 16384
    bar = tok.convert_tokens_to_ids("|")
    labels = [i + 1 for i, t in enumerate(ids) if t == bar]
    with torch.no_grad():
        summary = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[9][0][:, plant.KS]
    first, last = summary[labels[0]], summary[labels[-1]]
    assert float((first - last).norm() / first.norm()) < 1e-3


def test_each_column_has_summary_dims_of_its_own(planted):
    """A shot's key is its values' codes side by side, the last value first: 30 columns compare without
    crosstalk, so two rows' similarity is exactly the sum of their per-column kernels (with columns
    superposed under random rotations, a 30-column row's key was off by about the size of a column's code)."""
    import torch

    from mllm.model import plant
    from mllm.model.loading import load_trained_with_tokenizer
    from mllm.text.prompt import shot_lines

    out, _ = planted
    model, tok = load_trained_with_tokenizer(out)
    rng = np.random.default_rng(1)
    X, y = rng.integers(0, 999, size=(3, 30)), np.array([0, 1, 0])
    ids = tok("<|im_start|>" + "\n".join(shot_lines(X, y)) + "\n", add_special_tokens=False)["input_ids"]
    bar = tok.convert_tokens_to_ids("|")
    labels = [i + 1 for i, t in enumerate(ids) if t == bar]
    with torch.no_grad():
        keys = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[9][0][:, plant.KS] / plant.A
    code = plant.value_code(SETTINGS.nfreq, SETTINGS.sigma_f)
    w = code.shape[1]
    for row, at in zip(X, labels):
        expected = torch.zeros(plant.D)
        expected[:30 * w] = code[torch.tensor(row[::-1].copy())].reshape(-1)
        assert float((keys[at] - expected).abs().max()) < 0.02
    sim = float(keys[labels[0]] @ keys[labels[1]])
    assert sim == pytest.approx(float((code[torch.tensor(X[0])] * code[torch.tensor(X[1])]).sum()), rel=0.03)
    others = [i for i in range(len(ids)) if i not in labels]
    assert float(keys[others].abs().max()) < 0.02          # no other token is a key


@pytest.mark.slow
def test_classifies_across_the_whole_window(planted):
    """1,800 shots (13k tokens) in one context, no retrieval, and the last queries answered from all of them."""
    from mllm.inference.predict import Predictor
    from mllm.model.loading import load_trained_with_tokenizer

    out, _ = planted
    Xs, ys, Xq, yq = _task(2, 1800, 30, seed=5)
    pred = Predictor(*load_trained_with_tokenizer(out))
    classes, proba = pred.predict_proba(pd.DataFrame(Xs), ys, pd.DataFrame(Xq))
    assert pred.stats["retrieval_chunks"] == 0 and pred.stats["prefixes"] == 1
    assert (classes[proba.argmax(1)] == yq).mean() >= 0.9


def test_a_column_shuffle_breaks_it(planted):
    """It reads each test row's own values: with the test rows' labels permuted it cannot agree."""
    out, _ = planted
    Xs, ys, Xq, yq = _task(3, 96, 40, seed=3)
    pred = MLLMClassifier(model=str(out)).fit(Xs, ys).predict(Xq)
    shuffled = np.random.default_rng(0).permutation(yq)
    assert (pred == yq).mean() > (pred == shuffled).mean() + 0.15


def test_settings_are_checked():
    with pytest.raises(ParamsError, match="plant.tau"):
        section("plant", tau=0)
    with pytest.raises(ValueError, match="whole numbers"):
        save_planted("/nonexistent/never", build_tokenizer("digits"), SETTINGS)


def test_committed_base_is_the_one_params_yaml_builds(tmp_path):
    from flows.plant import run_plant

    record = json.loads((TINY_BASE_DIR / "plant.json").read_text())
    weights = (TINY_BASE_DIR / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == record["model_sha256"]
    assert record["settings"] == SETTINGS.model_dump()
    fresh = run_plant(str(ROOT / "params.yaml"), str(tmp_path / "fresh"), check=str(TINY_BASE_DIR))
    assert fresh["model_sha256"] == record["model_sha256"]
    with pytest.raises(StageFailed, match="differs from the committed"):  # other settings: the check fails
        run_plant(str(ROOT / "params.yaml"), str(tmp_path / "other"), check=str(TINY_BASE_DIR),
                  overrides={"plant": {"tau": 2.0}})


def _answer_state(model_dir, X, y, Xq):
    """The residual where the first answer's label comes next, after the layer that weighs the columns."""
    import torch

    from mllm.model import plant
    from mllm.model.loading import load_trained_with_tokenizer
    from mllm.text.prompt import messages

    model, tok = load_trained_with_tokenizer(model_dir)
    text = tok.apply_chat_template(messages(X, y, Xq, np.zeros(len(Xq), dtype=int)), tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    at = len(tok(text[:text.rindex('"label": ') + len('"label": ')], add_special_tokens=False)["input_ids"]) - 1
    with torch.no_grad():
        h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[plant.VOTE_LAYER][0][at]
    s1, s1w = (h[plant.S1] / plant.A).reshape(-1, 2), (h[plant.S1W] / plant.A2).reshape(-1, 2)  # nfreq 1
    return (s1w * s1).sum(1) / (s1 * s1).sum(1).clamp_min(1e-9), h[plant.RQ] / plant.A2


def test_the_vote_weighs_each_column_by_its_relevance_among_the_shots(planted, tmp_path):
    """Two columns decide the label, four are noise: estimated from the shots alone, the deciding columns'
    between-class share of variance is high and theirs weigh several times more in the vote; with
    relevance_gain 0 every column weighs 1 (the plain kernel vote)."""
    out, _ = planted
    rng = np.random.default_rng(3)
    X = rng.integers(200, 800, size=(97, 6))
    y = (X[:, 0] + X[:, 1] > 1000).astype(int)
    deciding, noise = [5, 4], [3, 2, 1, 0]                  # slots: the last value first
    w, r = _answer_state(out, X[:96], y[:96], X[96:])
    assert float(r[deciding].min()) > 0.3, r[:6]
    assert float(r[noise].max()) < 0.1, r[:6]
    assert float(w[deciding].min()) > 3 * float(w[noise].max()), w[:6]
    off = tmp_path / "off"
    save_planted(off, build_tokenizer("whole"), section("plant", relevance_gain=0.0))
    w0, _ = _answer_state(off, X[:96], y[:96], X[96:])
    assert w0[:6].numpy() == pytest.approx(np.ones(6), abs=0.02)
