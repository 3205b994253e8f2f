"""The ``tokenizer`` stage: the embedded default tokenizer, built from params into a Hugging Face directory.
It takes a second and touches no shared service, so it runs as a plain function, not a Prefect flow."""

from __future__ import annotations

from mllm.core.atomic import atomic_dir
from mllm.core.params import load_params
from mllm.text.tokenizer import build_tokenizer, save_tokenizer


def run_tokenizer(params_path: str = "params.yaml", out: str = "data/tokenizer",
                  overrides: dict | None = None) -> dict:
    numbers = load_params(params_path, overrides).tokenizer.numbers
    tok = build_tokenizer(numbers)
    with atomic_dir(out) as tmp:
        save_tokenizer(tok, tmp, numbers)
    return {"numbers": numbers, "tokens": len(tok)}
