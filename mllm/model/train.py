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
from mllm.core.digest import dir_digest
from mllm.core.errors import InputError
from mllm.core.params import Params
from mllm.model.loading import resolve_base
from mllm.model.training_data import IGNORE, CorpusDataset, collate, corpus_lengths

# The train stage's output directory: checkpoints, the final model, its summary, and the MLflow run id.
CHECKPOINTS, FINAL, STATE, SUMMARY = "checkpoints", "model", "state.json", "train_summary.json"
# Snapshots of the trained weights every train.snapshot_every steps, each a model directory like FINAL, and
# their index (step, tokens seen, path relative to the index): the evaluate stage's accuracy-vs-tokens curve.
SNAPSHOTS, SNAPSHOT_INDEX = "snapshots", "index.json"
# Checkpoints of another layout are not resumed (the run starts afresh): 2 = trainable weights only, one
# optimizer and one scheduler for the whole curriculum.
CHECKPOINT_FORMAT = 2
# Memory-mapped Arrow copies of the corpus shards that the ranks read from.
CACHE = "corpus-cache"
RUN_FILE = "mlflow_run.json"
# Fault-injection knob for the kill-and-resume test: seconds to sleep after every optimizer step.
STEP_DELAY = float(os.environ.get("MLLM_TRAIN_STEP_DELAY", "0") or 0)


class TrainingError(InputError):
    """The corpus or the model cannot be trained on as asked; raised before training starts."""


def corpus_paths(corpus_dir: str | Path, name: str, part: list[int] | None = None) -> list[Path]:
    """The shards of corpus ``name``; with ``part`` [i, n], the i-th of n contiguous slices of them."""
    paths = sorted((Path(corpus_dir) / name).glob("shard-*.parquet"))
    if not paths:
        raise TrainingError(f"no {name} corpus shards under {corpus_dir}/{name}: run `mllm encode` (full, warmup) "
                            f"or `mllm import-corpus FILE --name {name}` first")
    if part is None:
        return paths
    i, n = part
    if len(paths) < n:
        raise TrainingError(f"part {part} of the {name} corpus: it has {len(paths)} shards, fewer than {n} parts")
    return [paths[k] for k in np.array_split(np.arange(len(paths)), n)[i]]


def check_corpus(params: Params, corpus_dir: str | Path, max_positions: int | None) -> dict[str, int]:
    """Every stage's corpus exists, is not empty, and fits the model's context. Returns sizes."""
    sizes = {}
    for stage in params.train.stages:
        lengths = corpus_lengths(corpus_paths(corpus_dir, stage.corpus, stage.part))
        if lengths.size == 0:
            raise TrainingError(f"stage {stage.name!r}: the {stage.source} corpus is empty")
        if max_positions is not None and lengths.max() > max_positions:
            raise TrainingError(
                f"stage {stage.name!r}: {int((lengths > max_positions).sum())} sequences of the {stage.source} corpus "
                f"are longer than the model's context ({int(lengths.max())} > {max_positions} tokens); "
                "re-encode with a smaller encode.cutoff_len"
            )
        sizes[stage.source] = int(lengths.size)
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
    """What a checkpoint is valid for: the model/train params, the base's files when it is a local dir (a
    re-planted tiny base has new bytes under the same params) and the corpus files (names and sizes)."""
    h = hashlib.sha256(json.dumps({"format": CHECKPOINT_FORMAT, "seed": params.seed,
                                   "model": params.model.model_dump(mode="json"),
                                   "train": params.train.model_dump(mode="json")}, sort_keys=True).encode())
    base = Path(resolve_base(params.model.base)) if params.model.base != "scratch" else None
    if base is not None and base.is_dir():
        h.update(dir_digest(base).encode())
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


def stage_steps(params: Params, sizes: dict[str, int], num_processes: int) -> list[int]:
    """Optimizer steps of each stage: its examples shared by ``num_processes`` ranks (each gets the same
    number of micro-batches), ``epochs`` passes, ``grad_accum`` micro-batches a step, capped by ``max_steps``."""
    tp, steps = params.train, []
    for stage in tp.stages:
        n = sizes[stage.source] if stage.max_examples is None else min(sizes[stage.source], stage.max_examples)
        micro_per_epoch = math.ceil(n / (tp.batch_size * num_processes))
        s = max(1, math.floor(micro_per_epoch * stage.epochs / tp.grad_accum))
        steps.append(min(s, stage.max_steps) if stage.max_steps else s)
    return steps


def curriculum_lr(params: Params, steps: list[int]) -> Callable[[int], float]:
    """The learning rate of global optimizer step ``g`` (0-based, counted over every stage): each stage
    its own linear warm-up (``train.warmup_ratio`` of its steps) and cosine decay from its ``lr`` to 0, as
    transformers' ``get_cosine_schedule_with_warmup`` over that stage alone."""
    offsets = np.cumsum([0, *steps])

    def lr(g: int) -> float:
        si = min(int(np.searchsorted(offsets, g, side="right")) - 1, len(steps) - 1)
        step, total = g - int(offsets[si]), steps[si]
        warmup = math.ceil(params.train.warmup_ratio * total)
        if step < warmup:
            factor = step / max(1, warmup)
        else:
            factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
        return params.train.stages[si].lr * factor

    return lr


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
    then false in the summary); the next run resumes from there, so a long profile runs as many sessions.

    One optimizer and one scheduler serve the whole curriculum, prepared once with the model and the first
    dataloader (as FSDP2 and DeepSpeed require): the scheduler holds every stage's schedule over global
    steps and is stepped once per optimizer step whatever the number of processes; each stage starts with
    fresh optimizer moments, as a new optimizer would."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.optim.lr_scheduler import LambdaLR
    from torch.utils.data import DataLoader

    from mllm.model.loading import add_adapter, load_base, save_trained
    from mllm.text.tokenizer import load_tokenizer, save_tokenizer

    tp, out_dir = params.train, Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=_mixed_precision(tp.mixed_precision),
        gradient_accumulation_steps=tp.grad_accum,
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimizer step (not once per rank)
    )
    set_seed(params.seed)
    base = load_base(params.model, tokenizer, params.seed, device=str(accelerator.device))
    sizes = check_corpus(params, corpus_dir, getattr(base.config, "max_position_embeddings", None))
    steps_of = stage_steps(params, sizes, accelerator.num_processes)

    fp = fingerprint(params, corpus_dir)
    ckpt = _latest_checkpoint(out_dir, fp) if resume else None
    if not resume:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    if not ckpt and accelerator.is_main_process:  # a fresh start: another run's snapshots are not this one's
        shutil.rmtree(out_dir / SNAPSHOTS, ignore_errors=True)
    tokens_before = ckpt[1].get("tokens", 0) if ckpt else 0  # tokens trained on before this run, all ranks
    model = add_adapter(base, params.model)
    if tp.gradient_checkpointing is True or (tp.gradient_checkpointing == "auto" and torch.cuda.is_available()):
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    start_stage, start_step = (ckpt[1]["stage"], ckpt[1]["step"]) if ckpt else (0, 0)
    completed = start_stage >= len(tp.stages)
    first_stage = min(start_stage, len(tp.stages) - 1)  # its dataloader is prepared with the model

    def loader(si: int):
        stage = tp.stages[si]
        ds = CorpusDataset(corpus_paths(corpus_dir, stage.corpus, stage.part), tokenizer, tp.shot_label_loss,
                           seed=params.seed + si, max_examples=stage.max_examples, answer_loss=tp.answer_loss,
                           cache_dir=out_dir / CACHE, accelerator=accelerator, permute=tp.permute_labels)
        return DataLoader(ds, batch_size=tp.batch_size, shuffle=False, num_workers=0,
                          collate_fn=lambda b: collate(b, tokenizer.pad_token_id))

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1.0, weight_decay=tp.weight_decay)  # LambdaLR sets the lr
    scheduler = LambdaLR(optimizer, curriculum_lr(params, steps_of))
    first_dl = loader(first_stage)
    model, optimizer, first_dl, scheduler = accelerator.prepare(model, optimizer, first_dl, scheduler)
    trainable = [p for p in model.parameters() if p.requires_grad]
    _register_trainable_checkpointing(accelerator)
    if ckpt:
        accelerator.load_state(str(ckpt[0]))

    def export(dest: Path, state: dict) -> None:
        save_trained(accelerator.unwrap_model(model), dest, state_dict=state)
        save_tokenizer(tokenizer, dest)
        (dest / "mllm_model.json").write_text(json.dumps({
            "base": params.model.base, "adapter": params.model.adapter, "tokenizer": tokenizer_path,
            "rope_scaling": params.model.rope_scaling.model_dump() if params.model.rope_scaling else None,
        }, indent=2) + "\n")

    total_steps = sum(steps_of)
    total_tokens, steps_this_run, last_loss, out_of_time = 0, 0, float("nan"), False
    t_start = time.perf_counter()
    history = []
    for si, stage in enumerate(tp.stages):
        if si < start_stage:
            continue
        dl = first_dl if si == first_stage else accelerator.prepare(loader(si))
        steps = steps_of[si]
        step = start_step if si == start_stage else 0
        if step == 0:
            _reset_optimizer_state(optimizer)  # a stage starts with fresh moments, as a new AdamW would
        micro_done = step * tp.grad_accum
        epoch = micro_done // max(1, len(dl))
        skip = micro_done % max(1, len(dl))
        model.train()
        window_loss, window_tokens, t_window = [], 0, time.perf_counter()
        while step < steps:
            torch.manual_seed(params.seed + si * 100_003 + epoch)  # dropout etc. per epoch, resumable
            batches = accelerator.skip_first_batches(dl, skip) if skip else dl
            skip = 0
            for batch in batches:
                lr = optimizer.param_groups[0]["lr"]
                with accelerator.accumulate(model):
                    loss = causal_lm_loss(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, tp.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients and not optimizer.step_was_skipped:
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
                    log({f"{stage.name}/loss": last_loss, f"{stage.name}/lr": lr,
                         "tokens_per_s": tokens / dt if dt > 0 else 0.0, "loss": last_loss},
                        _global_step(si, step))
                history.append({"stage": stage.name, "step": step, "loss": last_loss, "lr": lr})
                window_loss, window_tokens, t_window = [], 0, time.perf_counter()
                if STEP_DELAY:
                    time.sleep(STEP_DELAY)
                g = sum(steps_of[:si]) + step
                if tp.snapshot_every and (g % tp.snapshot_every == 0 or g == total_steps):
                    _snapshot(accelerator, model, out_dir, g, tokens_before + total_tokens, export,
                              final=g == total_steps)
                if step % tp.checkpoint_every == 0 and step < steps:
                    _save_checkpoint(accelerator, out_dir, si, step, fp, tokens_before + total_tokens)
                out_of_time = _past(accelerator, t_start, time_budget_s)
                if step >= steps or out_of_time:
                    break
            epoch += 1
            if out_of_time and step < steps:
                _save_checkpoint(accelerator, out_dir, si, step, fp, tokens_before + total_tokens)
                break
        if step < steps:  # out of time mid-stage
            break
        if scheduler.scheduler.last_epoch != sum(steps_of[:si + 1]):
            raise RuntimeError(f"stage {stage.name!r} ended at scheduler step {scheduler.scheduler.last_epoch}, "
                               f"not {sum(steps_of[:si + 1])}")
        _save_checkpoint(accelerator, out_dir, si + 1, 0, fp, tokens_before + total_tokens)  # the next stage starts here
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
        "stage_steps": steps_of,
        "corpus_sizes": sizes,
        "steps_this_run": steps_this_run,
        "tokens_this_run": total_tokens,
        "tokens_total": tokens_before + total_tokens,
        "tokens_per_s": total_tokens / seconds if seconds > 0 else 0.0,
        "final_loss": last_loss,
        "trainable_params": int(sum(p.numel() for p in trainable)),
        "total_params": int(sum(p.numel() for p in accelerator.unwrap_model(model).parameters())),
    }
    state = accelerator.get_state_dict(model)  # on every rank: FSDP gathers its shards into whole tensors
    if accelerator.is_main_process:
        final = out_dir / FINAL
        shutil.rmtree(final, ignore_errors=True)
        export(final, state)
        write_json_atomic(out_dir / SUMMARY, {**summary, "history": history})
    accelerator.wait_for_everyone()
    if completed and accelerator.is_local_main_process:
        shutil.rmtree(out_dir / CACHE, ignore_errors=True)  # kept only while a resume may need it
    return summary


def causal_lm_loss(model, batch: dict):
    """Mean cross-entropy over the tokens that carry loss, with the LM head computed only at the positions
    that predict them (``logits_to_keep``): at 32k tokens and a 150k vocabulary, full logits would cost tens
    of GB although about one token per row carries loss. The same value as the model's own loss."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    target = labels[:, 1:]
    keep = (target != IGNORE).any(dim=0).nonzero().squeeze(1)  # positions t whose next token has a label
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                use_cache=False)
    logits = out.logits
    if logits.shape[1] != keep.numel():
        raise TrainingError(f"{type(model).__name__} ignores logits_to_keep; it cannot be trained here")
    y = target[:, keep]
    if not (y != IGNORE).any():  # nothing to learn in this batch: a zero that still reaches every weight
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                           reduction="mean").to(torch.float32)


def _past(accelerator, t_start: float, budget: float | None) -> bool:
    """Whether the time budget is spent, decided on the main process so every rank stops at the same step."""
    if budget is None:
        return False
    import torch

    flag = torch.tensor([float(time.perf_counter() - t_start > budget)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())


def _global_step(stage_index: int, step: int) -> int:
    return stage_index * 1_000_000 + step  # MLflow steps stay ordered across stages


def _save_checkpoint(accelerator, out_dir: Path, stage: int, step: int, fp: str, tokens: int) -> None:
    """Write the full training state, then atomically point state.json at it (with the tokens trained on so
    far, over all ranks); keep only the newest."""
    root = out_dir / CHECKPOINTS
    name = f"stage{stage}-step{step}"
    accelerator.save_state(str(root / name))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = json.loads((root / STATE).read_text())["dir"] if (root / STATE).is_file() else None
        write_json_atomic(root / STATE, {"dir": name, "stage": stage, "step": step, "fingerprint": fp,
                                         "tokens": tokens})
        if old and old != name:
            shutil.rmtree(root / old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _snapshot(accelerator, model, out_dir: Path, g: int, tokens: int, export, final: bool) -> None:
    """Record the weights after global step ``g`` in the snapshot index. The last step's entry points at the
    exported model (written when training ends) instead of a copy of it. A resumed run rewrites the entries
    from its resume point on, with the same weights and counts."""
    from mllm.core.atomic import atomic_dir

    root = out_dir / SNAPSHOTS
    name = f"step-{g:06d}"
    state = None if final else accelerator.get_state_dict(model)  # on every rank (FSDP gathers)
    if accelerator.is_main_process:
        if not final:
            with atomic_dir(root / name) as tmp:
                export(Path(tmp), state)
        index = root / SNAPSHOT_INDEX
        entries = [e for e in (json.loads(index.read_text()) if index.is_file() else []) if e["step"] < g]
        where = f"../{FINAL}" if final else name
        write_json_atomic(index, [*entries, {"step": g, "tokens": tokens, "path": where}])
    accelerator.wait_for_everyone()


def _reset_optimizer_state(optimizer) -> None:
    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate's (and DeepSpeed's) wrappers around the torch optimizer
        inner = inner.optimizer
    inner.state.clear()


TRAINABLE = "trainable.safetensors"


def _register_trainable_checkpointing(accelerator) -> None:
    """Checkpoints hold the trainable weights only (a LoRA adapter, not the frozen base: megabytes instead
    of the base's gigabytes), under the unwrapped model's names so DDP's ``module.`` prefix never matters,
    and load strictly: a missing, extra or misshapen tensor is an error that names it."""
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file, save

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def save_hook(models, weights, output_dir):
        if sharded:  # FSDP and DeepSpeed write their own sharded model state (and load it strictly)
            return
        for i, model in enumerate(models):
            named = _trainable(accelerator, model)
            if accelerator.is_main_process:
                (Path(output_dir) / _trainable_file(i)).write_bytes(
                    save({k: v.detach().cpu().contiguous() for k, v in named.items()}))
        weights.clear()  # nothing else: accelerate's own file would hold the whole model

    def load_hook(models, input_dir):
        if sharded:
            return
        for i, model in enumerate(list(models)):
            path = Path(input_dir) / _trainable_file(i)
            if not path.is_file():
                raise TrainingError(f"checkpoint {input_dir} has no {path.name}: it was not written by this "
                                    "version of mllm; train again with --fresh")
            saved, named = load_file(str(path)), _trainable(accelerator, model)
            missing, extra = sorted(named.keys() - saved.keys()), sorted(saved.keys() - named.keys())
            bad = sorted(k for k in named.keys() & saved.keys() if saved[k].shape != named[k].shape)
            if missing or extra or bad:
                raise TrainingError(f"checkpoint {path} does not match the model being trained: missing "
                                    f"{missing[:5]}, unexpected {extra[:5]}, wrong shape {bad[:5]}")
            import torch

            with torch.no_grad():
                for k, p in named.items():
                    p.copy_(saved[k].to(p.device, p.dtype))
            models.remove(model)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _trainable_file(i: int) -> str:
    return TRAINABLE if i == 0 else TRAINABLE.replace(".safetensors", f"_{i}.safetensors")


def _trainable(accelerator, model) -> dict:
    return {n: p for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
