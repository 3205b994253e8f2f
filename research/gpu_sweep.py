"""Research: how long continued pretraining of the embedded base takes to gain, and what it can train.

Two steps (not part of the package or of `dvc repro`; uses it as a library):

    python research/gpu_sweep.py prepare --out .gpu/held.parquet      # here: held-out tasks, encoded
    python research/gpu_sweep.py sweep --held .gpu/held.parquet --corpus .gpu/corpus --tokenizer .gpu/tokenizer \
        --out $OUT                                                     # on a GPU (or, slowly, a CPU)

`sweep` trains the committed base through the pipeline's own `run_training` (params.yaml with the overrides of
each configuration below), the corpus as encoded (trained) and with labels permuted within each sequence
(control), keeps a snapshot every `--every` steps, and scores each snapshot teacher-forced on the held-out
tasks: the mean cross-entropy of the answer labels and the accuracy of the best label-set token at each
answer. One JSON line per point in OUT/sweep.jsonl, written as it comes; the LoRA adapters of the last
snapshots in OUT/adapters.tar.gz.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

L10 = r".*\.10\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"   # version 2.1's vote
VG = r".*\.(12\.self_attn\.(q_proj|k_proj|v_proj|o_proj)|11\.mlp\.gate_proj)"   # 2.3's vote and column gate
NORMS = ["layers.11.post_attention_layernorm", "layers.12.input_layernorm"]   # 2.3's per-slot scales
# name: (LoRA target modules or "full", learning rate, modules trained whole beside LoRA)
CONFIGS = {
    "l10-1e-2": (L10, 1e-2, []),
    "l10-3e-3": (L10, 3e-3, []),
    "all-1e-4": ("all-linear", 1e-4, []),
    "all-1e-5": ("all-linear", 1e-5, []),
    "full-1e-5": ("full", 1e-5, []),
    "vg-1e-2": (VG, 1e-2, []),
    "vgn-1e-3": (VG, 1e-3, NORMS),
    "vgn-3e-3": (VG, 3e-3, NORMS),
    "vgn-1e-2": (VG, 1e-2, NORMS),
}


def prepare(out: Path, n: int) -> None:
    from mllm.core.params import load_params
    from mllm.data.shards import tasks_to_table, write_shard
    from mllm.evaluation.synthetic import heldout_tasks
    from mllm.text.corpus import encode_shard
    from mllm.text.tokenizer import build_tokenizer

    params = load_params(ROOT / "params.yaml")
    tasks = heldout_tasks(params, n, params.evaluate.synthetic.shots)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".tasks.parquet")
    write_shard(tasks_to_table(tasks), raw)
    print(encode_shard(raw, out, build_tokenizer(), params.seed, params.encode))
    raw.unlink()


def teacher_forced(model, tok, held: list, device: str, batch: int = 8) -> dict:
    """Mean label cross-entropy and label-set accuracy over the held-out sequences' answers."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mllm.model.training_data import collate, tokenize_example
    from mllm.text.prompt import parse_user_prompt

    losses, right = [], []
    for i in range(0, len(held), batch):
        part = held[i:i + batch]
        exs = [tokenize_example(tok, m, shot_label_loss=False, answer_loss="labels") for m in part]
        b = collate(exs, tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        for j, (m, ex) in enumerate(zip(part, exs, strict=True)):
            pos = torch.as_tensor(np.flatnonzero(ex["labels"] != -100))
            lg = logits[j, pos - 1].float()
            y = torch.as_tensor(ex["input_ids"])[pos].to(device)
            losses += F.cross_entropy(lg, y, reduction="none").tolist()
            cand = torch.as_tensor([tok.convert_tokens_to_ids(str(k))
                                    for k in parse_user_prompt(m[-2]["content"])["label_set"]], device=device)
            right += (cand[lg[:, cand].argmax(-1)] == y).tolist()
    return {"loss": round(float(np.mean(losses)), 5), "accuracy": round(float(np.mean(right)), 5), "n": len(right)}


def sweep(args) -> None:
    import torch

    from mllm.core.params import load_params
    from mllm.model.loading import load_trained_with_tokenizer
    from mllm.model.train import run_training
    from mllm.text.corpus import read_corpus

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "sweep.jsonl"
    held = read_corpus(args.held).column("messages").to_pylist()[:args.n_held]

    def record(**kw):
        with log.open("a") as fh:
            fh.write(json.dumps({"t": round(time.time(), 1), **kw}) + "\n")
        print(json.dumps(kw), flush=True)

    base, tok = load_trained_with_tokenizer(ROOT / "models" / "tiny-base", device=device, dtype="float32")
    record(config="base", step=0, tokens=0, **teacher_forced(base, tok, held, device))
    del base
    work = Path(args.work)
    adapters = []
    for name in args.configs.split(","):
        target, lr, keep = CONFIGS[name]
        for control in (False, True) if name in args.controls.split(",") else (False,):
            tag = f"{name}{'-control' if control else ''}"
            model_over = {"adapter": "full"} if target == "full" else {
                "adapter": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": target, "modules_to_save": keep}}
            model_over["dtype"] = "float32"  # fp32 master weights: a bf16 weight loses an update of 1e-5
            over = {"model": model_over, "train": {
                "stages": [{"name": "full", "corpus": "full", "lr": lr, "epochs": 1000, "max_steps": args.steps,
                            "max_examples": None}],
                "batch_size": args.batch, "grad_accum": 1, "num_processes": 1, "permute_labels": control,
                "snapshot_every": args.every, "checkpoint_every": 100_000, "log_every": 1000,
                "mixed_precision": "no"}}
            params = load_params(ROOT / "params.yaml", over)
            run = work / tag
            shutil.rmtree(run, ignore_errors=True)
            t = time.time()
            s = run_training(params, args.corpus, args.tokenizer, run, resume=False)
            record(config=tag, event="trained", seconds=round(time.time() - t, 1), steps=s["steps_this_run"],
                   tokens=s["tokens_total"], tokens_per_s=round(s["tokens_per_s"]), final_loss=s["final_loss"])
            for snap in json.loads((run / "snapshots" / "index.json").read_text()):
                m, tk = load_trained_with_tokenizer(run / "snapshots" / snap["path"], device=device, dtype="float32")
                record(config=tag, step=snap["step"], tokens=snap["tokens"], **teacher_forced(m, tk, held, device))
                del m
            if target != "full":  # the tarball rewritten after each run: a run cut short keeps the ones before
                adapters.append((tag, run / "model"))
                with tarfile.open(out / "adapters.tar.gz", "w:gz") as tar:
                    for tag_, path in adapters:
                        tar.add(path, arcname=tag_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=96)
    s = sub.add_parser("sweep")
    s.add_argument("--held", required=True)
    s.add_argument("--corpus", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--work", default="/tmp/gpu_sweep")
    s.add_argument("--configs", default=",".join(CONFIGS))
    s.add_argument("--controls", default="l10-1e-2,full-1e-5")
    s.add_argument("--steps", type=int, default=400)
    s.add_argument("--every", type=int, default=50)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--n-held", type=int, default=96)
    args = ap.parse_args()
    prepare(args.out, args.n) if args.cmd == "prepare" else sweep(args)


if __name__ == "__main__":
    main()
