"""Corpus sequences -> token ids and loss labels.

Only the answer carries loss (the JSON array and the closing ``<|im_end|>``; with ``answer_loss="labels"``
only the label values in it, for a model that is read by label scoring and never writes the JSON), plus,
when ``shot_label_loss`` is on, the label of every shot row (each predicted from the rows before it: the
same skill, learned from every row instead of 50 queries).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mllm.text.prompt import ANSWER_LABEL

IGNORE = -100


def shot_label_spans(user: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the labels of the ``[Training set]`` rows of a user prompt."""
    spans = []
    start = user.find("[Training set]\n")
    if start < 0:
        return spans
    pos = start + len("[Training set]\n")
    end = user.find("\n\n", pos)
    end = len(user) if end < 0 else end
    while pos < end:
        nl = user.find("\n", pos, end)
        line_end = end if nl < 0 else nl
        bar = user.rfind("|", pos, line_end)
        if bar >= 0:
            spans.append((bar + 1, line_end))
        pos = line_end + 1
    return spans


def tokenize_example(tokenizer, messages: list[dict], shot_label_loss: bool, answer_loss: str = "all") -> dict:
    """``input_ids`` and ``labels`` (IGNORE where no loss) of one system/user/assistant sequence;
    ``answer_loss``: "all" (the whole answer) or "labels" (only its label values)."""
    if answer_loss not in ("all", "labels"):
        raise ValueError(f"answer_loss must be 'all' or 'labels', not {answer_loss!r}")
    if [m["role"] for m in messages] != ["system", "user", "assistant"]:
        raise ValueError("a training sequence must be system, user, assistant messages")
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    answer_end = len(prompt) + len(messages[2]["content"])
    eos = tokenizer.eos_token or ""
    if full.startswith(eos, answer_end):
        answer_end += len(eos)  # the model must also learn to stop
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    real = offsets[:, 1] > offsets[:, 0]
    if answer_loss == "all":
        mask = (offsets[:, 0] >= len(prompt)) & (offsets[:, 1] <= answer_end) & real
    else:
        mask = np.zeros(len(ids), dtype=bool)
        for hit in ANSWER_LABEL.finditer(messages[2]["content"]):
            a, b = len(prompt) + hit.start(1), len(prompt) + hit.end(1)
            mask |= (offsets[:, 0] >= a) & (offsets[:, 1] <= b) & real
    if shot_label_loss:
        user_at = full.find(messages[1]["content"])
        for a, b in shot_label_spans(messages[1]["content"]):
            a, b = a + user_at, b + user_at
            mask |= (offsets[:, 0] >= a) & (offsets[:, 1] <= b) & real
    labels = np.where(mask, ids, IGNORE)
    return {"input_ids": ids, "labels": labels}


class CorpusDataset:
    """A map-style dataset over corpus shards, tokenized on access, in a seeded order."""

    def __init__(self, paths: list[str | Path], tokenizer, shot_label_loss: bool, seed: int,
                 max_examples: int | None = None, answer_loss: str = "all"):
        from mllm.text.corpus import read_corpus

        rows = []
        for path in paths:
            rows.extend(read_corpus(path).column("messages").to_pylist())
        if not rows:
            raise ValueError(f"empty corpus: no sequences in {[str(p) for p in paths]}")
        order = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1])).permutation(len(rows))
        if max_examples is not None:
            order = order[:max_examples]
        self.rows = [rows[i] for i in order]
        self.tokenizer = tokenizer
        self.shot_label_loss = shot_label_loss
        self.answer_loss = answer_loss

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return tokenize_example(self.tokenizer, self.rows[i], self.shot_label_loss, self.answer_loss)


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest sequence in the batch (pads carry no loss and no attention)."""
    import torch

    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.as_tensor(b["input_ids"])
        labels[i, :k] = torch.as_tensor(b["labels"])
        attn[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def corpus_lengths(paths: list[str | Path]) -> np.ndarray:
    return np.concatenate([pq.read_table(p, columns=["n_tokens"]).column("n_tokens").to_numpy() for p in paths])
