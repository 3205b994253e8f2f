"""Label scoring: the predictor reads the model's probability of every label at each answer position
instead of parsing generated text, so every query gets a full probability vector. Labels must be single
tokens (true of 0..9 in the embedded tokenizer and in Qwen's)."""

from __future__ import annotations


def label_token_ids(tokenizer, n_classes: int) -> list[int]:
    ids = []
    for k in range(n_classes):
        toks = tokenizer.encode(str(k), add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"label {k} is {len(toks)} tokens in this tokenizer; scoring needs single-token labels")
        ids.append(toks[0])
    return ids
