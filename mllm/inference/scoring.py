"""Label scoring: the predictor reads the model's probability of every label at each answer position
instead of parsing generated text, so every query gets a full probability vector. Labels are scored as
single tokens: 0..999 in the embedded tokenizer (whole numbers), 0..9 in Qwen's (digits one by one)."""

from __future__ import annotations

from mllm.core.errors import InputError
from mllm.core.params import MAX_LABELS


def label_capacity(tokenizer) -> int:
    """How many labels 0, 1, 2, ... this tokenizer writes as one token each (at most ``MAX_LABELS``)."""
    for k in range(MAX_LABELS):
        if len(tokenizer.encode(str(k), add_special_tokens=False)) != 1:
            return k
    return MAX_LABELS


def label_token_ids(tokenizer, n_classes: int) -> list[int]:
    """The token of each label 0..n_classes-1; a named error when a table has more classes than the model
    can score. Encodes the n labels only (it runs once per block); the capacity is counted only to say why."""
    if n_classes > MAX_LABELS:
        raise InputError(f"{n_classes} classes; at most {MAX_LABELS} are supported")
    ids = [tokenizer.encode(str(k), add_special_tokens=False) for k in range(n_classes)]
    if any(len(t) != 1 for t in ids):
        cap = label_capacity(tokenizer)
        raise InputError(f"{n_classes} classes, but this model's tokenizer writes only labels 0..{cap - 1} as single "
                         f"tokens and mllm scores single-token labels: at most {cap} classes with this model")
    return [t[0] for t in ids]


def check_labels(tokenizer, n_classes: int) -> None:
    """Before any work: can this model score a table of ``n_classes`` classes? (a named error if not)"""
    label_token_ids(tokenizer, n_classes)
