"""Label scoring on encoded sequences: read the model's probability of every label at each answer
position instead of parsing generated text (so every query gets a full probability vector).

This module scores sequences whose answer is present (teacher-forced: each query's label is scored
given the rows, the shots and the answer up to that query), which is how held-out synthetic tasks are
measured during pretraining. Labels must be single tokens (true of 0..9 in the embedded tokenizer and in
Qwen's).
"""

from __future__ import annotations

import re

import numpy as np

_LABEL = re.compile(r'"label":(\d+)')


def label_token_ids(tokenizer, n_classes: int) -> list[int]:
    ids = []
    for k in range(n_classes):
        toks = tokenizer.encode(str(k), add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"label {k} is {len(toks)} tokens in this tokenizer; scoring needs single-token labels")
        ids.append(toks[0])
    return ids


def score_sequence(model, tokenizer, messages: list[dict], n_classes: int) -> np.ndarray:
    """(n_queries, n_classes) label probabilities at the answer's label positions."""
    import torch

    full = tokenizer.apply_chat_template(messages, tokenize=False)
    answer_at = full.rfind(messages[2]["content"])
    spans = [(answer_at + m.start(1), answer_at + m.end(1)) for m in _LABEL.finditer(messages[2]["content"])]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"]).reshape(-1, 2)
    starts = {int(a): i for i, (a, b) in enumerate(offsets) if b > a}
    positions = [starts[a] for a, _ in spans]
    cand = label_token_ids(tokenizer, n_classes)
    with torch.no_grad():
        ids = torch.as_tensor([enc["input_ids"]])
        logits = model(input_ids=ids).logits[0]
    sel = logits[torch.as_tensor(positions) - 1][:, cand].float()
    return torch.softmax(sel, dim=-1).numpy()


def evaluate_corpus(model, tokenizer, rows: list[dict]) -> dict:
    """Accuracy of argmax label scores vs the majority class of each task's shots, over corpus rows
    (dicts with ``messages`` and ``n_classes``)."""
    from mllm.prompt import parse_answer, parse_user_prompt

    correct = majority = total = 0
    model.eval()
    for row in rows:
        msgs, k = row["messages"], row["n_classes"]
        table = parse_user_prompt(msgs[1]["content"])
        truth = parse_answer(msgs[2]["content"], table["queries"].shape[0], k)
        probs = score_sequence(model, tokenizer, msgs, k)
        correct += int((probs.argmax(axis=1) == truth).sum())
        majority += int((truth == np.bincount(table["shot_labels"], minlength=k).argmax()).sum())
        total += truth.size
    return {"queries": total, "accuracy": correct / max(total, 1), "majority": majority / max(total, 1)}
