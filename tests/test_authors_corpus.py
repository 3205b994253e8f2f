"""The authors' corpus format: LLaMA-Factory dataset files (sharegpt messages or alpaca) in MachineLearningLM's
prompt format import as corpus shards, and a training stage trains on them."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mllm.cli import app
from mllm.core.params import parse_params
from mllm.data.prior import generate_task
from mllm.model.train import run_training
from mllm.model.training_data import IGNORE, tokenize_example
from mllm.text import prompt
from mllm.text.corpus import import_corpus, llamafactory_messages, read_corpus
from mllm.text.encoding import quantise
from mllm.text.tokenizer import build_tokenizer, save_tokenizer
from tests.training_helpers import raw_params


def _tasks(n: int, seed: int = 3):
    params = parse_params(raw_params())
    for i in range(n):
        t = generate_task(seed, i, params.generate)
        s, q = quantise(t.X[:t.n_shots], t.X[t.n_shots:])
        yield prompt.messages(s, t.y[:t.n_shots], q, t.y[t.n_shots:])


def _write_sharegpt(path, n=6):
    """The authors' prompt generator writes one {"messages": [...]} object per line."""
    with path.open("w", encoding="utf-8") as f:
        for msgs in _tasks(n):
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return path


def test_sharegpt_and_alpaca_records_import(tmp_path):
    tok = build_tokenizer()
    stats = import_corpus(_write_sharegpt(tmp_path / "mlm.jsonl"), tmp_path / "corpus" / "mlm", tok, shard_size=4)
    assert stats["sequences"] == 6 and stats["shards"] == 2
    rows = read_corpus(tmp_path / "corpus" / "mlm" / "shard-00000.parquet").to_pylist()
    first = next(_tasks(1))
    assert rows[0]["messages"] == first
    assert rows[0]["n_tokens"] == len(tok(tok.apply_chat_template(first, tokenize=False), add_special_tokens=False)["input_ids"])
    table = prompt.parse_user_prompt(first[1]["content"])
    assert (rows[0]["n_shots"], rows[0]["n_queries"]) == (table["shots"].shape[0], table["queries"].shape[0])

    # alpaca: the user turn is instruction + "\n" + input (LLaMA-Factory's rule), from/value tags map too
    alpaca = {"instruction": "Classify.", "input": first[1]["content"], "output": first[2]["content"],
              "system": first[0]["content"]}
    msgs = llamafactory_messages(alpaca, "a")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"] == "Classify.\n" + first[1]["content"]
    sharegpt = {"conversations": [{"from": "human", "value": first[1]["content"]},
                                  {"from": "gpt", "value": first[2]["content"]}]}
    assert llamafactory_messages(sharegpt, "s") == first[1:]
    (tmp_path / "a.json").write_text(json.dumps([alpaca]))
    assert import_corpus(tmp_path / "a.json", tmp_path / "corpus" / "alp", tok)["sequences"] == 1

    # a corpus of text-valued tables (for a model that reads text) imports too
    text = prompt.messages(np.array([[1, "red"], [2, "blue, dark"]], dtype=object), np.array([0, 1]),
                           np.array([[3, "red"]], dtype=object), np.array([1]))
    (tmp_path / "t.jsonl").write_text(json.dumps({"messages": text}) + "\n")
    stats = import_corpus(tmp_path / "t.jsonl", tmp_path / "corpus" / "txt", tok)
    row = read_corpus(tmp_path / "corpus" / "txt" / "shard-00000.parquet").to_pylist()[0]
    assert stats["sequences"] == 1 and (row["n_features"], row["n_shots"], row["n_queries"]) == (2, 2, 1)

    # the label-only and shot-label loss masks find their labels in a system-less (two-turn) record
    ex = tokenize_example(tok, first[1:], shot_label_loss=True, answer_loss="labels")
    assert (ex["labels"] != IGNORE).sum() == table["shots"].shape[0] + table["queries"].shape[0]


@pytest.mark.parametrize("line, why", [
    ('{"text": "hi"}', "neither sharegpt"),
    ('{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "[]"}]}',
     "not a MachineLearningLM task"),
    ("{not json", "not JSON"),
])
def test_a_bad_record_is_named_and_nothing_is_written(tmp_path, line, why):
    src = _write_sharegpt(tmp_path / "mlm.jsonl", n=2)
    with src.open("a") as f:
        f.write(line + "\n")
    tok_dir = tmp_path / "tok"
    save_tokenizer(build_tokenizer(), tok_dir, "whole")
    out = CliRunner().invoke(app, ["import-corpus", str(src), "--name", "mlm", "--out", str(tmp_path / "corpus"),
                                   "--tokenizer", str(tok_dir)])
    assert out.exit_code == 2 and "mlm.jsonl:3" in out.output and why in out.output
    assert not (tmp_path / "corpus" / "mlm").exists()


def test_a_training_stage_trains_on_an_imported_corpus(tmp_path):
    tok = build_tokenizer()
    save_tokenizer(tok, tmp_path / "tok", "whole")
    res = CliRunner().invoke(app, ["import-corpus", str(_write_sharegpt(tmp_path / "mlm.jsonl", n=8)),
                                   "--name", "MachineLearningLM_Corpus_Warmup", "--out", str(tmp_path / "corpus"),
                                   "--tokenizer", str(tmp_path / "tok")])
    assert res.exit_code == 0, res.output
    assert "imported 8 sequences" in res.output
    params = parse_params(raw_params(train={"stages": [
        {"name": "warmup", "corpus": "MachineLearningLM_Corpus_Warmup", "lr": 1e-3, "epochs": 1, "max_steps": 2,
         "max_examples": None}]}))
    s = run_training(params, tmp_path / "corpus", str(tmp_path / "tok"), tmp_path / "out")
    assert s["complete"] and s["corpus_sizes"] == {"MachineLearningLM_Corpus_Warmup": 8}
    assert np.isfinite(s["final_loss"])
