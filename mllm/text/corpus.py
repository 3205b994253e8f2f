"""The encode stage's work: filtered tasks -> chat-format training sequences within a token budget."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mllm.core.atomic import atomic_path
from mllm.core.params import MAX_CLASSES, EncodeParams
from mllm.data.shards import iter_tasks, read_shard
from mllm.data.task import Task
from mllm.text import prompt
from mllm.text.encoding import column_permutation, quantise
from mllm.text.tokenizer import reads_text

CORPUS_SCHEMA = pa.schema([
    pa.field("task_id", pa.int64(), nullable=False),
    pa.field("prior", pa.string(), nullable=False),
    pa.field("n_features", pa.int32(), nullable=False),
    pa.field("n_classes", pa.int32(), nullable=False),
    pa.field("n_shots", pa.int32(), nullable=False),  # shot rows in the prompt
    pa.field("n_dropped", pa.int32(), nullable=False),  # shot rows dropped to fit cutoff_len
    pa.field("n_queries", pa.int32(), nullable=False),
    pa.field("n_tokens", pa.int32(), nullable=False),  # the whole chat sequence, in the model's tokens
    pa.field("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])), nullable=False),
])


class ContextTooLong(ValueError):
    """Even the minimum number of shot rows plus all query rows does not fit the token budget."""


@dataclass
class Sequence:
    messages: list[dict]
    n_tokens: int
    n_shots: int
    n_dropped: int


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` (no special tokens added); the Rust backend directly when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def count_tokens(tokenizer, messages: list[dict]) -> int:
    return token_lengths(tokenizer, [tokenizer.apply_chat_template(messages, tokenize=False)])[0]


def fit_to_budget(
    tokenizer, shots: np.ndarray, shot_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray | None,
    cutoff_len: int, min_shots: int, chunk: int = 64,
) -> Sequence:
    """Messages for the task with as many shot rows as fit ``cutoff_len`` (trailing rows are dropped,
    queries never). Only about ``cutoff_len`` tokens are ever tokenized, however large the table."""
    m = shots.shape[0]
    fixed = count_tokens(tokenizer, prompt.messages(shots[:0], shot_labels[:0], queries, query_labels))
    room = cutoff_len - fixed
    lines = prompt.shot_lines(shots, shot_labels)
    keep, used = 0, 0
    while keep < m and used <= room:  # row costs chunk by chunk until the budget is spent
        for cost in token_lengths(tokenizer, [ln + "\n" for ln in lines[keep : keep + chunk]]):
            if used + cost > room:
                break
            used += cost
            keep += 1
        else:
            continue
        break
    while keep >= min_shots:  # confirm on the real sequence: merges at row edges may differ
        msgs = prompt.messages(shots[:keep], shot_labels[:keep], queries, query_labels)
        n = count_tokens(tokenizer, msgs)
        if n <= cutoff_len:
            return Sequence(msgs, n, keep, m - keep)
        keep -= 1
    raise ContextTooLong(
        f"{queries.shape[0]} query rows and {min_shots} shot rows of {shots.shape[1]} features do not fit "
        f"cutoff_len={cutoff_len} tokens"
    )


# Words a synthetic categorical column takes as its values when the model reads text (the paper's
# heterogeneous tables): each column draws its own, seeded.
CATEGORY_WORDS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "grey", "north", "south", "east", "west", "urban", "rural", "coastal", "inland", "small", "medium", "large", "tiny", "huge", "low", "high", "mid", "none", "basic", "premium", "standard", "gold", "silver", "bronze", "cash", "card", "online", "store", "mobile", "desktop", "yes", "no", "maybe", "unknown", "single", "married", "divorced", "widowed", "student", "retired", "employed", "self-employed", "manager", "clerk", "engineer", "nurse", "teacher", "farmer", "spring", "summer", "autumn", "winter", "monday", "friday", "morning", "evening", "night", "weekday", "weekend", "apple", "pear", "plum", "cherry", "lemon", "oak", "pine", "birch", "maple", "cedar", "cat", "dog", "horse", "sheep", "goat", "alpha", "beta", "gamma", "delta", "omega", "type-a", "type-b", "type-c", "grade-1", "grade-2", "grade-3", "new", "used", "refurbished", "open", "closed", "pending", "active", "inactive"]


def text_categories(task: Task, order: np.ndarray, shots: np.ndarray, queries: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The task's categorical columns as words (one seeded draw of distinct words per column), for a model
    that reads text; numeric columns keep their codes."""
    s, q = shots.shape[0], queries.shape[0]
    shots, queries = shots.astype(object), queries.astype(object)
    for j, col in enumerate(order):
        if not task.categorical[col]:
            continue
        values = task.X[: s + q, col].astype(np.int64)
        rng = np.random.default_rng(np.random.SeedSequence([seed, task.task_id, 0x7E47, int(col)]))
        words = np.array(CATEGORY_WORDS, dtype=object)[rng.permutation(len(CATEGORY_WORDS))]
        shots[:, j], queries[:, j] = words[values[:s] % words.size], words[values[s:] % words.size]
    return shots, queries


def encode_task(task: Task, tokenizer, seed: int, ep: EncodeParams) -> Sequence:
    """A synthetic task as one training sequence: quantised on its shot rows, columns in seeded order, its
    first ``ep.max_queries`` query rows, as many shot rows as ``ep.cutoff_len`` allows. For a model that reads
    text, its categorical columns are words, as real tables' text columns reach such a model."""
    s, q = task.n_shots, min(task.n_queries, ep.max_queries)
    order = column_permutation(seed, task.task_id, task.n_features)
    shots, queries = quantise(task.X[:s, order], task.X[s : s + q, order])
    if reads_text(tokenizer) and task.categorical.any():
        shots, queries = text_categories(task, order, shots, queries, seed)
    return fit_to_budget(tokenizer, shots, task.y[:s], queries, task.y[s : s + q], ep.cutoff_len,
                         min(ep.min_shots, s))


def corpus_record(task_id: int, prior: str, n_features: int, n_classes: int, n_queries: int, seq: Sequence) -> dict:
    """One corpus row (``CORPUS_SCHEMA``) for an encoded task."""
    return {"task_id": task_id, "prior": prior, "n_features": n_features, "n_classes": n_classes,
            "n_shots": seq.n_shots, "n_dropped": seq.n_dropped, "n_queries": n_queries, "n_tokens": seq.n_tokens,
            "messages": seq.messages}


def write_corpus_shard(records: list[dict], path: str | Path) -> None:
    """Write corpus rows as one Parquet shard, atomically."""
    table = pa.Table.from_pylist(records, schema=CORPUS_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def encode_shard(shard: str | Path, out_path: str | Path, tokenizer, seed: int, ep: EncodeParams) -> dict:
    """Encode one filtered shard into a corpus shard; returns counts (skipped tasks by reason)."""
    records, skipped = [], Counter()
    for task in iter_tasks(read_shard(shard)):
        try:
            seq = encode_task(task, tokenizer, seed, ep)
        except ContextTooLong:
            skipped["context_too_long"] += 1
            continue
        records.append(corpus_record(task.task_id, task.prior, task.n_features, task.n_classes,
                                     min(task.n_queries, ep.max_queries), seq))
    write_corpus_shard(records, out_path)
    tokens = np.array([r["n_tokens"] for r in records], dtype=np.int64)
    cells = sum((r["n_shots"] + r["n_queries"]) * (r["n_features"] + 1) for r in records)
    return {
        "sequences": len(records),
        "tokens": int(tokens.sum()),
        "max_tokens": int(tokens.max()) if tokens.size else 0,
        "cells": int(cells),
        "dropped_shots": int(sum(r["n_dropped"] for r in records)),
        "truncated_sequences": int(sum(r["n_dropped"] > 0 for r in records)),
        "skipped": dict(skipped),
    }


def read_corpus(path: str | Path) -> pa.Table:
    table = pq.read_table(path)
    if not table.schema.equals(CORPUS_SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: not a corpus shard (schema differs from mllm.text.corpus.CORPUS_SCHEMA)")
    return table


def summarise(stats: list[dict]) -> dict:
    seqs = sum(s["sequences"] for s in stats)
    tokens = sum(s["tokens"] for s in stats)
    skipped: Counter = Counter()
    for s in stats:
        skipped.update(s["skipped"])
    return {
        "sequences": seqs,
        "tokens": tokens,
        "mean_tokens": tokens / seqs if seqs else 0.0,
        "max_tokens": max((s["max_tokens"] for s in stats), default=0),
        "tokens_per_cell": tokens / max(1, sum(s["cells"] for s in stats)),
        "dropped_shots": sum(s["dropped_shots"] for s in stats),
        "truncated_sequences": sum(s["truncated_sequences"] for s in stats),
        "skipped": dict(skipped),
    }



# LLaMA-Factory's dataset formats (data/README.md there): sharegpt-style role lists under ``messages`` or
# ``conversations`` (role/content or from/value tags, an optional ``system`` column), or alpaca columns.
_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def _text(value, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: {what} is not a string: {str(value)[:80]}")  # noqa: TRY004 (bad data)
    return value


def llamafactory_messages(record, where: str) -> list[dict]:
    """System (optional), user and assistant messages of one LLaMA-Factory dataset record."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record is a JSON object (sharegpt messages or alpaca columns), got "  # noqa: TRY004
                         f"{json.dumps(record)[:80]}")
    if "instruction" in record and "output" in record:  # alpaca: the user turn is instruction + "\n" + input
        parts = [_text(record["instruction"], "instruction", where), _text(record.get("input") or "", "input", where)]
        turns = [{"role": "user", "content": "\n".join(t for t in parts if t)},
                 {"role": "assistant", "content": _text(record["output"], "output", where)}]
    else:
        raw = record.get("messages", record.get("conversations"))
        if not isinstance(raw, list):
            raise ValueError(f"{where}: neither sharegpt (messages / conversations) nor alpaca (instruction, "
                             f"output) columns; keys {sorted(record)[:8]}")
        turns = []
        for m in raw:
            if not isinstance(m, dict):
                raise ValueError(  # noqa: TRY004 (bad data, as every record error)
                    f"{where}: a message is not an object with role/content (or from/value): {str(m)[:80]}")
            role = _ROLES.get(str(m.get("role", m.get("from"))))
            content = m.get("content", m.get("value"))
            if role is None or not isinstance(content, str):
                raise ValueError(f"{where}: a message is not role/content (or from/value): {str(m)[:80]}")
            turns.append({"role": role, "content": content})
    if record.get("system") and (not turns or turns[0]["role"] != "system"):
        turns.insert(0, {"role": "system", "content": _text(record["system"], "system", where)})
    if [t["role"] for t in turns] not in (["system", "user", "assistant"], ["user", "assistant"]):
        raise ValueError(f"{where}: expected system (optional), user, assistant turns; got "
                         f"{[t['role'] for t in turns]}")
    return turns


def _decode(data: bytes, name: str, first_line: int = 1) -> str:
    """``data`` (the file's lines from ``first_line`` on) as UTF-8; an invalid byte is named by its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise ValueError(f"{name}:{line}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                         "save the dataset as UTF-8") from None


def _llamafactory_records(src: Path):
    if src.suffix == ".jsonl":
        with src.open("rb") as f:
            for i, raw in enumerate(f, 1):
                line = _decode(raw, src.name, i)
                if line.strip():
                    try:
                        yield f"{src.name}:{i}", json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{src.name}:{i}: not JSON (cut short?): {err}") from None
    elif src.suffix == ".json":
        text = _decode(src.read_bytes(), src.name)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{src.name}:{err.lineno}: not JSON (cut short?): {err}") from None
        if not isinstance(data, list):
            raise ValueError(f"{src.name}: a .json dataset is an array of records")
        for i, record in enumerate(data):
            yield f"{src.name}[{i}]", record
    else:
        raise ValueError(f"{src}: a LLaMA-Factory dataset is a .json or .jsonl file")


# Characters per token no tokenizer reaches on a table prompt: a longer record is refused before it is parsed
# or tokenized (a runaway record must not take the memory that tokenizing it would).
MAX_CHARS_PER_TOKEN = 64


def _task(msgs: list[dict], where: str) -> tuple[dict, np.ndarray]:
    """The prompt's table and its answer, checked against each other: one label per test row, in order, each
    an integer of the prompt's label set or a class id the shots miss (the authors' generator, like the
    encode stage, lists the shots' labels: a test row's class can be absent from them). Ids from 0 up to the
    larger of the synthetic prior's class limit and the label set's largest id + 1 are classes; others are
    not."""
    try:
        table = prompt.parse_user_prompt(msgs[-2]["content"], codes=False)  # text values too
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: not a MachineLearningLM task: {err}") from None
    try:
        labels = prompt.parse_answer(msgs[-1]["content"], table["queries"].shape[0],
                                     max(MAX_CLASSES, table["n_classes"]))
    except ValueError as err:
        raise ValueError(f"{where}: not a MachineLearningLM task: {err} (the prompt's label set is "
                         f"{table['label_set']})") from None
    return table, labels


def import_corpus(src: str | Path, out_dir: str | Path, tokenizer, shard_size: int = 4096,
                  max_tokens: int | None = None) -> dict:
    """A LLaMA-Factory dataset file in MachineLearningLM's format (the authors' released corpora) -> corpus
    shards in ``out_dir``, the encode stage's layout, so a training stage can name it. Read as a stream,
    a shard at a time; every record must parse (prompt and answer, one class id per test row: ``_task``) and
    be at most ``max_tokens`` long; the directory is written whole or not at all. ``unlisted_labels`` counts
    the answers whose class the prompt's label set does not list."""
    from mllm.core.atomic import atomic_dir

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no dataset file {src}")
    stats = {"sequences": 0, "tokens": 0, "max_tokens": 0, "shards": 0, "unlisted_labels": 0}

    def flush(batch: list[dict], wheres: list[str], tmp: Path) -> None:
        texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in batch]
        for r, where, n in zip(batch, wheres, token_lengths(tokenizer, texts)):
            if max_tokens is not None and n > max_tokens:
                raise ValueError(f"{where}: {n:,} tokens, over the {max_tokens:,} a sequence may have "
                                 "(--max-tokens; by default encode.cutoff_len)")
            r["n_tokens"] = n
            stats["tokens"] += n
            stats["max_tokens"] = max(stats["max_tokens"], n)
        write_corpus_shard(batch, tmp / f"shard-{stats['shards']:05d}.parquet")
        stats["shards"] += 1

    with atomic_dir(out_dir) as tmp:
        batch: list[dict] = []
        wheres: list[str] = []
        for where, record in _llamafactory_records(src):
            msgs = llamafactory_messages(record, where)
            chars = sum(len(m["content"]) for m in msgs)
            if max_tokens is not None and chars > MAX_CHARS_PER_TOKEN * max_tokens:
                raise ValueError(f"{where}: {chars:,} characters, far over the {max_tokens:,} tokens a sequence may have")
            table, labels = _task(msgs, where)
            stats["unlisted_labels"] += int(np.isin(labels, table["label_set"], invert=True).sum())
            batch.append({"task_id": stats["sequences"], "prior": "imported", "n_features": table["n_features"],
                          "n_classes": max(table["n_classes"], int(labels.max(initial=-1)) + 1),
                          "n_shots": table["shots"].shape[0], "n_dropped": 0,
                          "n_queries": table["queries"].shape[0], "n_tokens": 0, "messages": msgs})
            wheres.append(where)
            stats["sequences"] += 1
            if len(batch) == shard_size:
                flush(batch, wheres, Path(tmp))
                batch, wheres = [], []
        if batch:
            flush(batch, wheres, Path(tmp))
        if not stats["sequences"]:
            raise ValueError(f"{src}: no records")
    return stats
