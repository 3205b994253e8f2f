"""Training throughput of the default tiny model against this machine's own matmul limit.

    python benchmarks/train.py [--quick]

Measured in one run: (1) the machine's dense matmul FLOP/s in bf16 and fp32 (square matmuls, the
physical limit of what training can reach here); (2) training steps of the default tiny model
(the architecture of `model.base` in params.yaml, i.e. the committed embedded base, randomly initialised:
forward, backward, AdamW on all weights) on full-length sequences, in bf16 autocast and in fp32. Achieved FLOP/s = tokens/s x FLOPs per token, counted as 6 x (non-embedding parameters + the tied
output projection) + 12 x layers x (heads x head_dim) x sequence length (attention scores and values,
forward and backward). The last line is achieved training FLOP/s over the matmul FLOP/s of the precision the trainer
picks here (`train.mixed_precision: auto`): bf16 on CPUs with AVX512-BF16 or AMX (target >= 0.5), fp32
elsewhere. Without native bf16, torch emulates bf16 matmuls hundreds of times slower than fp32, so a bf16
training run there would measure only the emulation: it is skipped and said so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine


def matmul_flops(dtype, n: int, seconds: float) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def train_throughput(bf16: bool, seq_len: int, steps: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mllm.core.params import load_params
    from mllm.model.loading import resolve_base, tiny_config
    from mllm.text.tokenizer import build_tokenizer

    params = load_params(ROOT / "params.yaml")
    tok = build_tokenizer(params.tokenizer.numbers)
    torch.manual_seed(0)
    base = params.model.base
    cfg = tiny_config(params.model, tok) if base == "scratch" else AutoConfig.from_pretrained(resolve_base(base))
    model = AutoModelForCausalLM.from_config(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, len(tok), (1, seq_len))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    emb = cfg.vocab_size * cfg.hidden_size
    n_params = sum(p.numel() for p in model.parameters())
    dense = (n_params - emb) + emb  # non-embedding weights + the tied output projection (a real matmul)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    flops_per_token = 6 * dense + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq_len
    tokens_per_s = steps * seq_len / seconds
    return {"tokens_per_s": tokens_per_s, "flops": tokens_per_s * flops_per_token, "params": n_params,
            "flops_per_token": flops_per_token, "base": base}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a faithful run in about a minute")
    args = ap.parse_args()
    seq_len, steps, mm_s = (1024, 4, 2.0) if args.quick else (2048, 12, 5.0)
    torch.set_num_threads(torch.get_num_threads())

    from mllm.model.train import _mixed_precision

    native_bf16 = _mixed_precision("auto") == "bf16"
    # emulated bf16 matmuls are slow: a short timing is enough to show it
    peak_bf16 = matmul_flops(torch.bfloat16, 2048 if native_bf16 else 512, mm_s)
    peak_fp32 = matmul_flops(torch.float32, 2048, mm_s)
    bf16 = train_throughput(True, seq_len, steps) if native_bf16 else None
    fp32 = train_throughput(False, seq_len, steps)
    print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"matmul: bf16 {peak_bf16 / 1e12:.4f} TFLOP/s, fp32 {peak_fp32 / 1e12:.3f} TFLOP/s "
          f"(bf16/fp32 {peak_bf16 / peak_fp32:.2f}x; native bf16: {'yes' if native_bf16 else 'no'})")
    print(f"default base ({fp32['base']}): {fp32['params'] / 1e6:.2f}M params, {fp32['flops_per_token'] / 1e6:.1f} MFLOP/token, "
          f"sequences of {seq_len} tokens")
    if bf16 is not None:
        print(f"train bf16: {bf16['tokens_per_s']:.0f} tokens/s, {bf16['flops'] / 1e12:.3f} TFLOP/s")
    else:
        print("train bf16: skipped (no AVX512-BF16/AMX: the trainer's auto precision is fp32 on this CPU)")
    print(f"train fp32: {fp32['tokens_per_s']:.0f} tokens/s, {fp32['flops'] / 1e12:.3f} TFLOP/s"
          + (f" (bf16 speed-up {bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x)" if bf16 else ""))
    if bf16 is None:
        print(f"fp32 training FLOP/s vs fp32 matmul FLOP/s (no native bf16 here): "
              f"ratio {fp32['flops'] / peak_fp32:.2f}")
        return
    print(f"fp32 training vs fp32 matmul: ratio {fp32['flops'] / peak_fp32:.2f}")
    print(f"bf16 training FLOP/s vs bf16 matmul FLOP/s: ratio {bf16['flops'] / peak_bf16:.2f}")


if __name__ == "__main__":
    main()
