"""Continued pretraining: one script for 1 CPU, N processes, or multi-GPU / multi-node (accelerate).

The curriculum runs ``train.stages`` in order (warm-up corpus, then the full corpus), each with its own
AdamW + cosine schedule (warm-up ratio ``train.warmup_ratio``) and each starting from the weights the
previous one ended with. Checkpoints every ``train.checkpoint_every`` optimizer steps hold model,
optimizer, scheduler and RNG states; a killed run started again resumes from the last one at the same
step, with the data order unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mllm.core.atomic import write_json_atomic
from mllm.core.errors import InputError
from mllm.core.params import Params
from mllm.model.training_data import CorpusDataset, collate, corpus_lengths

# The train stage's output directory: checkpoints, the final model, its summary, and the MLflow run id.
CHECKPOINTS, FINAL, STATE, SUMMARY = "checkpoints", "model", "state.json", "train_summary.json"
RUN_FILE = "mlflow_run.json"
# Fault-injection knob for the kill-and-resume test: seconds to sleep after every optimizer step.
STEP_DELAY = float(os.environ.get("MLLM_TRAIN_STEP_DELAY", "0") or 0)


class TrainingError(InputError):
    """The corpus or the model cannot be trained on as asked; raised before training starts."""


def corpus_paths(corpus_dir: str | Path, name: str) -> list[Path]:
    paths = sorted((Path(corpus_dir) / name).glob("shard-*.parquet"))
    if not paths:
        raise TrainingError(f"no {name} corpus shards under {corpus_dir}/{name}: run `mllm encode` first")
    return paths


def check_corpus(params: Params, corpus_dir: str | Path, max_positions: int | None) -> dict[str, int]:
    """Every stage's corpus exists, is not empty, and fits the model's context. Returns sizes."""
    sizes = {}
    for stage in params.train.stages:
        lengths = corpus_lengths(corpus_paths(corpus_dir, stage.corpus))
        if lengths.size == 0:
            raise TrainingError(f"stage {stage.name!r}: the {stage.corpus} corpus is empty")
        if max_positions is not None and lengths.max() > max_positions:
            raise TrainingError(
                f"stage {stage.name!r}: {int((lengths > max_positions).sum())} sequences of the {stage.corpus} corpus "
                f"are longer than the model's context ({int(lengths.max())} > {max_positions} tokens); "
                "re-encode with a smaller encode.cutoff_len"
            )
        sizes[stage.corpus] = int(lengths.size)
    return sizes


def _mixed_precision(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # CPUs with AVX512-BF16 / AMX run bf16 matmuls several times faster than fp32.
    return "bf16" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else "no"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fingerprint(params: Params, corpus_dir: str | Path) -> str:
    """What a checkpoint is valid for: the model/train params and the corpus files (names and sizes)."""
    h = hashlib.sha256(json.dumps({"seed": params.seed, "model": params.model.model_dump(mode="json"),
                                   "train": params.train.model_dump(mode="json")}, sort_keys=True).encode())
    for p in sorted(Path(corpus_dir).rglob("shard-*.parquet")):
        h.update(f"{p.relative_to(corpus_dir)}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _latest_checkpoint(out_dir: Path, fp: str) -> tuple[Path, dict] | None:
    """The checkpoint to resume from, if there is one made for the same params and corpus."""
    state = out_dir / CHECKPOINTS / STATE
    if not state.is_file():
        return None
    info = json.loads(state.read_text())
    if info.get("fingerprint") != fp:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # another run's: start afresh
        return None
    return out_dir / CHECKPOINTS / info["dir"], info


def run_training(
    params: Params,
    corpus_dir: str | Path,
    tokenizer_path: str,
    out_dir: str | Path,
    log: Callable[[dict, int], None] | None = None,
    resume: bool = True,
    time_budget_s: float | None = None,
) -> dict:
    """Train; returns a summary (steps, tokens, final loss, processes). ``log(metrics, step)`` is called on
    the main process after every ``train.log_every`` optimizer steps. With ``time_budget_s`` the run stops at
    the first optimizer step past the budget, checkpoints, and exports the weights so far (``complete`` is
    then false in the summary); the next run resumes from there, so a long profile runs as many sessions."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_cosine_schedule_with_warmup

    from mllm.model.loading import add_adapter, load_base, save_trained
    from mllm.text.tokenizer import load_tokenizer, save_tokenizer

    tp, out_dir = params.train, Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=_mixed_precision(tp.mixed_precision),
        gradient_accumulation_steps=tp.grad_accum,
    )
    set_seed(params.seed)
    base = load_base(params.model, tokenizer, params.seed)
    sizes = check_corpus(params, corpus_dir, getattr(base.config, "max_position_embeddings", None))

    fp = fingerprint(params, corpus_dir)
    ckpt = _latest_checkpoint(out_dir, fp) if resume else None
    if not resume:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    model = add_adapter(base, params.model)
    if tp.gradient_checkpointing is True or (tp.gradient_checkpointing == "auto" and torch.cuda.is_available()):
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model = accelerator.prepare(model)
    trainable = [p for p in model.parameters() if p.requires_grad]

    start_stage, start_step = (ckpt[1]["stage"], ckpt[1]["step"]) if ckpt else (0, 0)
    if ckpt and start_step == 0 and start_stage > 0:  # at a stage boundary: weights only
        _load_weights(accelerator, model, ckpt[0])
    total_tokens, steps_this_run, last_loss, out_of_time = 0, 0, float("nan"), False
    completed = start_stage >= len(tp.stages)
    t_start = time.perf_counter()
    history = []
    for si, stage in enumerate(tp.stages):
        if si < start_stage:
            continue
        ds = CorpusDataset(corpus_paths(corpus_dir, stage.corpus), tokenizer, tp.shot_label_loss,
                           seed=params.seed + si, max_examples=stage.max_examples, answer_loss=tp.answer_loss)
        dl = DataLoader(ds, batch_size=tp.batch_size, shuffle=False, num_workers=0,
                        collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
        optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=tp.weight_decay)
        micro_per_epoch = math.ceil(len(ds) / (tp.batch_size * accelerator.num_processes))
        steps = max(1, math.floor(micro_per_epoch * stage.epochs / tp.grad_accum))
        if stage.max_steps:
            steps = min(steps, stage.max_steps)
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(tp.warmup_ratio * steps), steps)
        optimizer, dl, scheduler = accelerator.prepare(optimizer, dl, scheduler)
        step = 0
        if ckpt and si == start_stage and start_step > 0:
            accelerator.load_state(str(ckpt[0]))
            step = start_step
        micro_done = step * tp.grad_accum
        epoch = micro_done // max(1, len(dl))
        skip = micro_done % max(1, len(dl))
        model.train()
        window_loss, window_tokens, t_window = [], 0, time.perf_counter()
        while step < steps:
            torch.manual_seed(params.seed + si * 100_003 + epoch)  # dropout etc. per epoch, resumable
            loader = accelerator.skip_first_batches(dl, skip) if skip else dl
            skip = 0
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, tp.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                n_tok = int(batch["attention_mask"].sum())
                window_tokens += n_tok
                window_loss.append(float(loss.detach()))
                if not accelerator.sync_gradients:
                    continue
                step += 1
                steps_this_run += 1
                tokens = int(accelerator.gather(torch.tensor([window_tokens], device=accelerator.device)).sum())
                total_tokens += tokens
                last_loss = float(np.mean(window_loss))
                dt = time.perf_counter() - t_window
                if log and accelerator.is_main_process and step % tp.log_every == 0:
                    log({f"{stage.name}/loss": last_loss, f"{stage.name}/lr": scheduler.get_last_lr()[0],
                         "tokens_per_s": tokens / dt if dt > 0 else 0.0, "loss": last_loss},
                        _global_step(si, step))
                history.append({"stage": stage.name, "step": step, "loss": last_loss})
                window_loss, window_tokens, t_window = [], 0, time.perf_counter()
                if STEP_DELAY:
                    time.sleep(STEP_DELAY)
                if step % tp.checkpoint_every == 0 and step < steps:
                    _save_checkpoint(accelerator, out_dir, si, step, fp)
                out_of_time = _past(accelerator, t_start, time_budget_s)
                if step >= steps or out_of_time:
                    break
            epoch += 1
            if out_of_time and step < steps:
                _save_checkpoint(accelerator, out_dir, si, step, fp)
                break
        if step < steps:  # out of time mid-stage
            break
        _save_checkpoint(accelerator, out_dir, si + 1, 0, fp)  # stage done: the next one starts from here
        completed = si == len(tp.stages) - 1
        if out_of_time:
            break

    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t_start
    ranks = accelerator.gather(torch.tensor([accelerator.process_index], device=accelerator.device))
    summary = {
        "complete": completed,
        "position": json.loads((out_dir / CHECKPOINTS / STATE).read_text()) if (out_dir / CHECKPOINTS / STATE).is_file() else None,
        "num_processes": accelerator.num_processes,
        "ranks_seen": sorted(int(r) for r in ranks.tolist()),
        "mixed_precision": accelerator.mixed_precision,
        "stages": [s.name for s in tp.stages],
        "corpus_sizes": sizes,
        "steps_this_run": steps_this_run,
        "tokens_this_run": total_tokens,
        "tokens_per_s": total_tokens / seconds if seconds > 0 else 0.0,
        "final_loss": last_loss,
        "trainable_params": int(sum(p.numel() for p in trainable)),
        "total_params": int(sum(p.numel() for p in accelerator.unwrap_model(model).parameters())),
    }
    if accelerator.is_main_process:
        final = out_dir / FINAL
        shutil.rmtree(final, ignore_errors=True)
        save_trained(accelerator.unwrap_model(model), final)
        save_tokenizer(tokenizer, final)
        (final / "mllm_model.json").write_text(json.dumps({
            "base": params.model.base, "adapter": params.model.adapter, "tokenizer": tokenizer_path,
        }, indent=2) + "\n")
        write_json_atomic(out_dir / SUMMARY, {**summary, "history": history})
    accelerator.wait_for_everyone()
    return summary


def _past(accelerator, t_start: float, budget: float | None) -> bool:
    """Whether the time budget is spent, decided on the main process so every rank stops at the same step."""
    if budget is None:
        return False
    import torch

    flag = torch.tensor([float(time.perf_counter() - t_start > budget)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())


def _global_step(stage_index: int, step: int) -> int:
    return stage_index * 1_000_000 + step  # MLflow steps stay ordered across stages


def _save_checkpoint(accelerator, out_dir: Path, stage: int, step: int, fp: str) -> None:
    """Write the full training state, then atomically point state.json at it; keep only the newest."""
    root = out_dir / CHECKPOINTS
    name = f"stage{stage}-step{step}"
    accelerator.save_state(str(root / name))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = json.loads((root / STATE).read_text())["dir"] if (root / STATE).is_file() else None
        write_json_atomic(root / STATE, {"dir": name, "stage": stage, "step": step, "fingerprint": fp})
        if old and old != name:
            shutil.rmtree(root / old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_weights(accelerator, model, ckpt_dir: Path) -> None:
    from safetensors.torch import load_file

    weights = sorted(Path(ckpt_dir).glob("model*.safetensors"))
    if not weights:
        raise TrainingError(f"checkpoint {ckpt_dir} holds no model weights")
    state = {}
    for w in weights:
        state.update(load_file(str(w)))
    accelerator.unwrap_model(model).load_state_dict(state, strict=False)
