"""Small corpora and tiny models for training tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mllm.core.params import deep_merge, parse_params
from mllm.data.prior import generate_task
from mllm.data.shards import tasks_to_table, write_shard
from mllm.model.loading import load_base
from mllm.text.corpus import encode_shard
from mllm.text.tokenizer import build_tokenizer, save_tokenizer
from tests.conftest import params_dict, section

TINY_MODEL = {"hidden_size": 64, "intermediate_size": 128, "layers": 2, "heads": 4, "kv_heads": 2, "max_positions": 1024}


def raw_params(**over) -> dict:
    """Small, fast params for training tests: params.yaml with a scratch tiny model, one process, short stages."""
    raw = params_dict(
        seed=1,
        generate={"num_tasks": 24, "shard_size": 24, "n_workers": 1, "shots": {"min": 8, "max": 24},
                  "features": {"min": 3, "max": 6}, "queries": 8},
        encode={"cutoff_len": 8192, "max_queries": 50, "n_workers": 1},
        model={"base": "scratch", "adapter": "full", "tiny": TINY_MODEL,
               "lora": {"target_modules": "all-linear"}},  # params.yaml names the tiny base's vote layer
        train={"stages": [{"name": "warmup", "corpus": "warmup", "lr": 1e-3, "epochs": 1, "max_steps": 3,
                           "max_examples": None},
                          {"name": "full", "corpus": "full", "lr": 1e-3, "epochs": 1, "max_steps": 4,
                           "max_examples": None}],
               "grad_accum": 2, "checkpoint_every": 2, "mixed_precision": "no", "weight_decay": 0.0,
               "answer_loss": "all", "num_processes": 1},
    )
    return deep_merge(raw, over)


def make_corpus(root: Path, n_tasks: int = 24, cutoff_len: int = 1024) -> tuple[Path, Path]:
    """A tokenizer dir and a corpus dir with full and warm-up shards of tiny tasks."""
    params = parse_params(raw_params())
    tok = build_tokenizer()
    save_tokenizer(tok, root / "tok", "whole")
    tasks = [generate_task(1, i, params.generate) for i in range(n_tasks)]
    write_shard(tasks_to_table(tasks), root / "tasks.parquet")
    for corpus in ("full", "warmup"):
        (root / "corpus" / corpus).mkdir(parents=True, exist_ok=True)
        encode_shard(root / "tasks.parquet", root / "corpus" / corpus / "shard-00000.parquet", tok, 1,
                     section("encode", cutoff_len=cutoff_len, min_shots=4, max_queries=50))
    return root / "tok", root / "corpus"


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny model + the project tokenizer saved as a trained model dir."""
    tok = build_tokenizer()
    model = load_base(parse_params(raw_params()).model, tok, seed=seed)
    model.save_pretrained(path)
    save_tokenizer(tok, path, "whole")
    return path
