"""A full Hugging Face model directory in the released MachineLearningLM checkpoint's layout (merged Qwen2
weights in safetensors shards with an index, Qwen2.5's tokenizer and chat template) is a model to mllm:
the classifier predicts with it, the evaluate stage measures it and the registry takes it as a version."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_iris
from typer.testing import CliRunner

from mllm.cli import app
from mllm.inference.classifier import MLLMClassifier
from mllm.text.tokenizer import build_qwen25_tokenizer
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("MachineLearningLM-7B-v1-tiny")
    tok = build_qwen25_tokenizer()
    # Qwen2.5-7B-Instruct's config with the sizes cut down (vocabulary and special ids kept)
    config = Qwen2Config(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
                         torch_dtype="bfloat16")
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(path, max_shard_size="8MB")
    tok.save_pretrained(path)
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1 and (path / "model.safetensors.index.json").is_file()
    return path


def test_classifier_predicts_with_a_full_model_directory(released):
    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    clf = MLLMClassifier(model=str(released)).fit(X[idx[:16]], y[idx[:16]])
    proba = clf.predict_proba(X[idx[16:22]])
    assert proba.shape == (6, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)


def test_a_26_class_table_with_the_released_layout(released):
    """Qwen writes labels 10..25 as two digit tokens: the released layout scores all 26 (multi-token labels)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(26), rng.integers(0, 26, 14)])
    X = rng.normal(size=(40, 4))
    clf = MLLMClassifier(model=str(released)).fit(X, y)
    proba = clf.predict_proba(rng.normal(size=(5, 4)))
    assert proba.shape == (5, 26) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow  # end to end: the evaluate flow, the registry and serving
def test_evaluate_and_register_a_full_model_directory(released, tmp_path, prefect_harness):
    settings = ["evaluate.sklearn_datasets=[iris]", "evaluate.shots=[8]", "evaluate.seeds=[0]", "evaluate.max_test=10",
                "evaluate.baselines=[majority]", "evaluate.include_base=false", "evaluate.compare_champion=true",
                "evaluate.synthetic.tasks=2", "evaluate.synthetic.shots=16", "evaluate.synthetic.queries=4"]
    sets = [a for s in settings for a in ("--set", s)]
    metrics = tmp_path / "evaluate.json"
    res = CliRunner().invoke(app, ["evaluate", "--params", str(ROOT / "params.yaml"), "--model", str(released),
                                   "--out", str(tmp_path / "eval"), "--metrics", str(metrics),
                                   "--curve", str(tmp_path / "curve.csv"),
                                   "--training-curve", str(tmp_path / "training_curve.csv"), *sets])
    assert res.exit_code == 0, res.output
    summary = json.loads(metrics.read_text())
    assert summary["models"]["trained"] == str(released)
    assert 0.0 <= summary["mean_accuracy"]["trained"] <= 1.0
    assert set(summary["synthetic"]["accuracy"]) >= {"trained", "majority"}  # held-out SCM tasks, same models
    res = CliRunner().invoke(app, ["register", "--params", str(ROOT / "params.yaml"), "--model", str(released),
                                   "--train", str(tmp_path / "no-train-stage"), "--evaluation", str(metrics),
                                   "--out", str(tmp_path / "registry.json"), *sets])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "registry.json").read_text())
    assert record["version"] == "1"  # promoted or not is the gate's decision on its figures

    import mlflow

    loaded = mlflow.pyfunc.load_model(f"models:/{record['name']}@candidate")
    X = load_iris(as_frame=True).data
    table = X.iloc[[0, 1, 50, 51, 100, 101, 2, 52]].assign(label=[0, 0, 1, 1, 2, 2, None, None])
    out = loaded.predict(table)
    # the request's label column is floats (None beside integers): its labels are the integers
    assert list(out.columns) == ["prediction", "proba_0", "proba_1", "proba_2"] and len(out) == 2


def test_a_text_column_goes_to_a_text_reading_model_as_text(released):
    import pandas as pd

    from mllm.inference.predict import Predictor
    from mllm.model.loading import load_trained_with_tokenizer

    X = pd.DataFrame({"size": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "city": ["Paris", "Rome", "Paris, TX", None, "Rome", "Oslo"]})
    y = [0, 1, 0, 1, 1, 0]
    pred = Predictor(*load_trained_with_tokenizer(released))
    enc = pred.encode(X, y, X.iloc[:2])
    assert list(enc.shot_view[:, 1]) == ["Paris", "Rome", "Paris, TX", "nan", "Rome", "Oslo"]
    classes, proba = pred.predict_proba(X, y, X.iloc[:2])
    assert list(classes) == [0, 1] and proba.shape == (2, 2)
