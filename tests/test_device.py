"""Where and in what precision models run: a GPU when there is one (bf16 where it computes in it), the CPU
(fp32) otherwise; the predictor follows the model's device and dtype."""

import numpy as np
import pandas as pd
import pytest
import torch

from mllm.inference.predict import Predictor
from mllm.model.loading import load_trained_with_tokenizer, pick_device, resolve_dtype
from tests.training_helpers import save_tiny_model


def test_a_gpu_gets_bf16_and_a_cpu_fp32(monkeypatch):
    assert resolve_dtype("float16", "cpu") == torch.float16  # asked for: given
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_device() == "cuda" and pick_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "cuda:3") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == torch.float32


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    return X, (X.a + 0.3 * X.b > 0).astype(int).to_numpy()


@pytest.mark.parametrize("decode", ["batched", "parallel"])
def test_the_predictor_runs_the_model_in_its_own_dtype(tmp_path, decode):
    """bf16 weights (as on a GPU) give the fp32 answers within bf16's precision: inputs, caches and masks
    follow the model, and scores are read in fp32."""
    model_dir = save_tiny_model(tmp_path / "m")
    X, y = _table()
    out = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_trained_with_tokenizer(model_dir, device="cpu", dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)} and not model.training
        pred = Predictor(model, tok, max_queries=5, decode=decode)
        out[dtype] = pred.predict_proba(X.iloc[:40], y[:40], X.iloc[40:])
    (c32, p32), (c16, p16) = out["float32"], out["bfloat16"]
    assert list(c32) == list(c16) and p16.dtype == np.float64
    np.testing.assert_allclose(p16.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p16, p32, atol=0.02)
