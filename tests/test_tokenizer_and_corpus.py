import numpy as np
import pytest

from mllm.data.prior import generate_task
from mllm.data.shards import tasks_to_table, write_shard
from mllm.text import prompt
from mllm.text.corpus import (
    ContextTooLong,
    count_tokens,
    encode_shard,
    encode_task,
    fit_to_budget,
    read_corpus,
)
from mllm.text.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from tests.conftest import section


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("whole")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok, d, "whole")
    return d


def test_every_number_is_one_token(tok):
    for i in range(1000):
        assert tok.tokenize(str(i)) == [str(i)], i


def test_digit_mode_splits_numbers():
    t = build_tokenizer("digits")
    assert t.tokenize("512,7") == ["5", "1", "2", ",", "7"]


def test_template_words_are_single_tokens(tok):
    toks = tok.tokenize(prompt.SYSTEM_PROMPT)
    assert toks[:4] == ["You", "Ġare", "Ġan", "ĠAI"] and "Ġsupervised" in toks and "Ġclassification" in toks
    assert len(tok.tokenize("[Training set]")) <= 4
    # the answer as the model writes it: 11 tokens per query row, each label one token
    assert tok.tokenize('[{"id": 0, "label": 1}, {"id": 1, "label": 0}]') == [
        '[{"', "id", '":', "Ġ", "0", ",", 'Ġ"', "label", '":', "Ġ", "1",
        '},', 'Ġ{"', "id", '":', "Ġ", "1", ",", 'Ġ"', "label", '":', "Ġ", "0", "}]"]


def test_any_text_round_trips(tok):
    for text in ["héllo wörld ✓", "feature_name is 3.14159, other is -2", "\t tabs\nand lines  "]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_shot_row_costs_two_tokens_per_cell(tok):
    row = "512,7,999,0|3\n"
    assert len(tok.encode(row, add_special_tokens=False)) == 4 + 3 + 1 + 1 + 1


def test_saved_tokenizer_loads_with_chat_template(tok_dir):
    t = load_tokenizer(tok_dir)
    text = t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert t.convert_tokens_to_ids("<|im_end|>") == t.eos_token_id


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found locally"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        load_tokenizer("no-such-org/no-such-model")


def _arrays(m=200, d=10, n=20, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 1000, (m, d)), rng.integers(0, k, m), rng.integers(0, 1000, (n, d)),
            rng.integers(0, k, n), k)


def test_fit_to_budget_drops_trailing_shots_never_queries(tok):
    shots, sl, q, ql, _ = _arrays()
    full = fit_to_budget(tok, shots, sl, q, ql, 100_000, 8)
    assert full.n_dropped == 0 and full.n_shots == 200
    cutoff = full.n_tokens // 2
    seq = fit_to_budget(tok, shots, sl, q, ql, cutoff, 8)
    assert seq.n_tokens <= cutoff and seq.n_tokens == count_tokens(tok, seq.messages)
    assert seq.n_shots + seq.n_dropped == 200 and seq.n_dropped > 0
    back = prompt.parse_user_prompt(seq.messages[1]["content"])
    np.testing.assert_array_equal(back["shots"], shots[: seq.n_shots])  # the first rows kept, in order
    np.testing.assert_array_equal(back["queries"], q)  # all queries kept
    # one more shot row would not have fitted
    longer = prompt.messages(shots[: seq.n_shots + 1], sl[: seq.n_shots + 1], q, ql)
    assert count_tokens(tok, longer) > cutoff


def test_context_that_cannot_fit_is_refused(tok):
    shots, sl, q, ql, _ = _arrays(d=40, n=50)
    with pytest.raises(ContextTooLong, match="do not fit cutoff_len=2000"):
        fit_to_budget(tok, shots, sl, q, ql, 2000, 8)


def test_encode_task_round_trip_to_the_table(tok):
    p = section("generate", num_tasks=1, shard_size=1, shots={"min": 20, "max": 40}, features={"min": 5, "max": 8})
    task = generate_task(0, 3, p)
    seq = encode_task(task, tok, seed=0, ep=section("encode", cutoff_len=100_000, min_shots=8, max_queries=50))
    back = prompt.parse_user_prompt(seq.messages[1]["content"])
    assert back["n_features"] == task.n_features and back["n_classes"] == task.n_classes
    np.testing.assert_array_equal(back["shot_labels"], task.y[: task.n_shots])
    np.testing.assert_array_equal(prompt.parse_answer(seq.messages[2]["content"], task.n_queries, task.n_classes),
                                  task.y[task.n_shots:])
    # decoded values are the quantised table, up to the seeded column order
    from mllm.text.encoding import column_permutation, quantise

    order = column_permutation(0, task.task_id, task.n_features)
    s, qv = quantise(task.X[: task.n_shots, order], task.X[task.n_shots:, order])
    np.testing.assert_array_equal(back["shots"], s)
    np.testing.assert_array_equal(back["queries"], qv)


def test_encode_shard_writes_a_datasets_loadable_corpus(tmp_path, tok):
    p = section("generate", num_tasks=6, shard_size=6, shots={"min": 8, "max": 200}, features={"min": 15, "max": 45},
                       queries=50)
    tasks = [generate_task(1, i, p) for i in range(6)]
    write_shard(tasks_to_table(tasks), tmp_path / "in.parquet")
    stats = encode_shard(tmp_path / "in.parquet", tmp_path / "out.parquet", tok, 1,
                         section("encode", cutoff_len=4000, min_shots=8, max_queries=50))
    table = read_corpus(tmp_path / "out.parquet")
    assert stats["sequences"] == table.num_rows and stats["sequences"] + sum(stats["skipped"].values()) == 6
    assert stats["skipped"].get("context_too_long", 0) >= 1  # 50 queries x ~40 features exceed 4000 tokens
    assert table.num_rows >= 1 and max(table.column("n_tokens").to_pylist()) <= 4000

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out.parquet"), split="train")
    assert len(ds) == table.num_rows
    assert [m["role"] for m in ds[0]["messages"]] == ["system", "user", "assistant"]


def test_max_queries_keeps_the_first_queries(tok):
    p = section("generate", num_tasks=1, shard_size=1, shots={"min": 20, "max": 40}, features={"min": 5, "max": 8})
    task = generate_task(0, 3, p)
    seq = encode_task(task, tok, seed=0, ep=section("encode", cutoff_len=100_000, max_queries=7))
    back = prompt.parse_user_prompt(seq.messages[1]["content"])
    assert back["queries"].shape[0] == 7
    np.testing.assert_array_equal(prompt.parse_answer(seq.messages[2]["content"], 7, task.n_classes),
                                  task.y[task.n_shots:task.n_shots + 7])


def test_embedded_tokenizer_beside_a_qwen2_config_loads_as_saved(tmp_path, tok):
    """A model dir has a Qwen2 config.json; the embedded tokenizer in it must keep its own number tokens."""
    from mllm.core.params import parse_params
    from mllm.model.loading import load_base
    from tests.training_helpers import raw_params

    load_base(parse_params(raw_params()).model, tok, seed=0).save_pretrained(tmp_path)
    save_tokenizer(tok, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.tokenize("512,7|1") == ["512", ",", "7", "|", "1"]
    assert loaded.get_vocab() == tok.get_vocab()


def test_categorical_columns_are_words_for_a_model_that_reads_text(tok):
    """Training sees text-valued columns when the model reads text (its tokenizer says nothing else); the
    embedded tokenizer's models read codes, so their corpus keeps them numeric."""
    import re

    from mllm.text.corpus import CATEGORY_WORDS
    from mllm.text.tokenizer import build_qwen25_tokenizer

    p = section("generate", num_tasks=1, shard_size=1, shots={"min": 20, "max": 40}, features={"min": 5, "max": 8},
                categorical_task_share=1.0)
    task = next(t for t in (generate_task(0, i, p) for i in range(20)) if t.categorical.any())
    ep = section("encode", cutoff_len=100_000, max_queries=5)
    words = set(CATEGORY_WORDS)
    text_rows = encode_task(task, build_qwen25_tokenizer(), seed=0, ep=ep).messages[1]["content"]
    cells = [c for line in re.findall(r"^([^\n]*)\|\d+$", text_rows, re.MULTILINE) for c in line.split(",")]
    assert any(c in words for c in cells) and any(c.isdigit() for c in cells)
    assert text_rows == encode_task(task, build_qwen25_tokenizer(), seed=0, ep=ep).messages[1]["content"]  # seeded
    code_rows = encode_task(task, tok, seed=0, ep=ep).messages[1]["content"]
    cells = [c for line in re.findall(r"^([^\n]*)\|\d+$", code_rows, re.MULTILINE) for c in line.split(",")]
    assert all(c.isdigit() for c in cells)
