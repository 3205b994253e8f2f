"""Training that depends on the number of processes, run with 1 and 2 real CPU processes (torchrun, gloo):
the learning-rate schedule, resuming inside a later stage, adapter-sized checkpoints, strict loading."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file

from mllm.core.params import parse_params
from mllm.model.loading import load_base
from mllm.model.train import (
    CACHE,
    CHECKPOINTS,
    TrainingError,
    causal_lm_loss,
    curriculum_lr,
    run_training,
)
from mllm.model.training_data import collate, tokenize_example
from mllm.text.tokenizer import build_tokenizer
from tests.training_helpers import make_corpus, raw_params, write_params

STAGES = [{"name": "warmup", "corpus": "warmup", "lr": 1e-3, "epochs": 1, "max_steps": 3, "max_examples": None},
          {"name": "full", "corpus": "full", "lr": 3e-4, "epochs": 1, "max_steps": 6, "max_examples": None}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    load_base(parse_params(raw_params()).model, build_tokenizer(), seed=0).save_pretrained(path)
    return path


def _lora(base, **train):
    return raw_params(model={"base": str(base), "adapter": "lora", "lora": {"dropout": 0.0}},
                      train={"stages": STAGES, "grad_accum": 1, "warmup_ratio": 0.2, "snapshot_every": 2, **train})


def _cmd(n, params_file, corpus, tok, out):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
            "mllm.model.train_worker", "--params", str(params_file), "--corpus", str(corpus), "--tokenizer", str(tok),
            "--out", str(out), "--no-mlflow"]


def _train(n, raw, data, out, env):
    tok, corpus = data
    res = subprocess.run(_cmd(n, write_params(out.parent / f"{out.name}.yaml", raw), corpus, tok, out), env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text())


def test_curriculum_lr_is_each_stage_own_cosine_schedule():
    from transformers import get_cosine_schedule_with_warmup

    params = parse_params(raw_params(train={"stages": STAGES, "warmup_ratio": 0.2}))
    lr = curriculum_lr(params, [3, 6])
    for si, (stage, steps) in enumerate(zip(STAGES, [3, 6], strict=True)):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=stage["lr"])
        ref = get_cosine_schedule_with_warmup(opt, int(np.ceil(0.2 * steps)), steps)
        for step in range(steps):
            assert lr(3 * si + step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
            opt.step()
            ref.step()


def test_loss_on_kept_logits_equals_the_models_own_loss(data):
    tok_dir, _ = data
    from mllm.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    model = load_base(parse_params(raw_params()).model, tok, seed=0)
    from mllm.text import prompt

    rng = np.random.default_rng(0)
    examples = []
    for n_shots in (5, 9):  # two lengths: the batch is padded
        x = rng.integers(0, 999, size=(n_shots + 2, 3))
        y = rng.integers(0, 2, size=n_shots + 2)
        examples.append(tokenize_example(tok, prompt.messages(x[:n_shots], y[:n_shots], x[n_shots:], y[n_shots:]),
                                         shot_label_loss=True))
    batch = collate(examples, tok.pad_token_id)
    ours = causal_lm_loss(model, batch)
    theirs = model(**batch).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    ours.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_checkpoints_hold_the_adapter_only_and_load_strictly(tmp_path, data, lora_base):
    tok, corpus = data
    params = parse_params(_lora(lora_base, checkpoint_every=1))
    run_training(params, corpus, str(tok), tmp_path / "out", time_budget_s=0.0)
    state = json.loads((tmp_path / "out" / CHECKPOINTS / "state.json").read_text())
    ckpt = tmp_path / "out" / CHECKPOINTS / state["dir"]
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert not list(ckpt.glob("model*.safetensors"))  # no copy of the frozen base
    base_bytes = sum(f.stat().st_size for f in lora_base.glob("*.safetensors"))
    assert (ckpt / "trainable.safetensors").stat().st_size < base_bytes / 5
    assert (tmp_path / "out" / CACHE).is_dir()  # the memory-mapped corpus stays while a resume may need it

    dropped = min(saved)
    save_file({k: v for k, v in saved.items() if k != dropped}, str(ckpt / "trainable.safetensors"))
    with pytest.raises(TrainingError, match=f"missing \\['{dropped}'"):
        run_training(params, corpus, str(tok), tmp_path / "out")


def test_the_corpus_cache_goes_when_training_completes(tmp_path, data):
    tok, corpus = data
    s = run_training(parse_params(raw_params()), corpus, str(tok), tmp_path / "out")
    assert s["complete"] and not (tmp_path / "out" / CACHE).exists()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, data, lora_base):
    """An uninterrupted two-process (DDP) LoRA run: the reference of the tests below."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return out, _train(2, _lora(lora_base, num_processes=2, checkpoint_every=1), data, out, env)


def _kill_inside_stage_two(cmd, out, env):
    """Start ``cmd``, SIGKILL its whole process tree (as a crash would: torchrun starts its workers in
    sessions of their own) once it has checkpointed step 2 of the second stage; returns that position."""
    proc = subprocess.Popen(cmd, env={**env, "MLLM_TRAIN_STEP_DELAY": "1.0"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / CHECKPOINTS / "state.json"

    def position():
        return json.loads(state.read_text()) if state.is_file() else {"stage": -1, "step": 0}

    deadline = time.time() + 300
    while time.time() < deadline and not (position()["stage"] == 1 and position()["step"] >= 2):
        time.sleep(0.1)
    for pid in [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    killed = position()
    assert killed["stage"] == 1 and 2 <= killed["step"] < 6 and not (out / "model").exists()
    return killed


def _same_snapshots(a_dir, b_dir, atol):
    """The same snapshot steps, token counts (counted on across the resume) and weights."""
    from mllm.evaluation.curve import read_snapshots

    a, b = (read_snapshots(d / "snapshots" / "index.json") for d in (a_dir, b_dir))
    assert [(s["step"], s["tokens"]) for s in a] == [(s["step"], s["tokens"]) for s in b]
    assert [s["step"] for s in a] == [2, 4, 6, 8, 9]
    for sa, sb in zip(a[:-1], b[:-1], strict=True):
        wa, wb = (load_file(str(Path(s["path"]) / "adapter_model.safetensors")) for s in (sa, sb))
        assert wa.keys() == wb.keys() and wa
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def _same_adapters(a_dir, b_dir, atol):
    a, b = (load_file(str(d / "model" / "adapter_model.safetensors")) for d in (a_dir, b_dir))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.mark.slow
def test_two_processes_follow_the_one_process_learning_rate_schedule(tmp_path, data, lora_base, venv_env, ddp_run):
    """Accelerate steps a prepared scheduler once per process per optimizer step unless told otherwise:
    with two processes the warm-up took half the steps and the cosine ran twice."""
    one = _train(1, _lora(lora_base, num_processes=1, checkpoint_every=1), data, tmp_path / "n1", venv_env)
    two = ddp_run[1]
    assert two["num_processes"] == 2 and two["ranks_seen"] == [0, 1]
    assert one["stage_steps"] == two["stage_steps"] == [3, 6]
    expected = [curriculum_lr(parse_params(_lora(lora_base)), [3, 6])(g) for g in range(9)]
    np.testing.assert_allclose([h["lr"] for h in one["history"]], expected, rtol=1e-12)
    np.testing.assert_allclose([h["lr"] for h in two["history"]], expected, rtol=1e-12)
    # the tokens of the training curve are every rank's: two processes read about twice the sequences
    assert 1.5 < two["tokens_total"] / one["tokens_total"] < 2.5


@pytest.mark.slow
def test_two_processes_killed_inside_stage_two_resume_exactly(tmp_path, data, lora_base, venv_env, ddp_run):
    """Killed (SIGKILL) inside the second stage and run again, two processes end with the weights, optimizer
    moments, scheduler and learning rates of an uninterrupted run."""
    raw = _lora(lora_base, num_processes=2, checkpoint_every=1)
    ref_dir, ref = ddp_run
    tok, corpus = data
    run = tmp_path / "run"
    killed = _kill_inside_stage_two(_cmd(2, write_params(tmp_path / "run.yaml", raw), corpus, tok, run), run, venv_env)

    resumed = _train(2, raw, data, run, venv_env)
    assert resumed["steps_this_run"] == 6 - killed["step"]
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in ref["history"]][-len(resumed["history"]):]
    _same_adapters(ref_dir, run, atol=1e-6)
    _same_snapshots(ref_dir, run, atol=1e-6)
    ends = [d / CHECKPOINTS / "stage2-step0" for d in (ref_dir, run)]
    opt_a, opt_b = (torch.load(e / "optimizer.bin", weights_only=True) for e in ends)
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for i in opt_a["state"]:
        assert opt_a["state"][i]["step"] == opt_b["state"][i]["step"] == 6  # the second stage's own moments
        for m in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_a["state"][i][m], opt_b["state"][i][m], rtol=0, atol=1e-9)
    sched_a, sched_b = (torch.load(e / "scheduler.bin", weights_only=False) for e in ends)
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 9


@pytest.mark.slow
def test_fsdp2_trains_resumes_and_exports_as_ddp_does(tmp_path, data, lora_base, venv_env, ddp_run):
    """FSDP2 (torch's fully_shard over gloo; see tests/fsdp_cpu_worker.py): the model, optimizer, first
    dataloader and scheduler prepared together, sharded checkpoints, a kill inside stage two and a resume,
    and an export gathered from the shards: the same adapter as the DDP run."""
    raw = _lora(lora_base, num_processes=2, checkpoint_every=1)
    tok, corpus = data
    run = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "tests.fsdp_cpu_worker", "--params", str(write_params(tmp_path / "fsdp.yaml", raw)), "--corpus",
           str(corpus), "--tokenizer", str(tok), "--out", str(run), "--no-mlflow"]
    env = {**venv_env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = _kill_inside_stage_two(cmd, run, env)
    assert (run / CHECKPOINTS / f"stage1-step{killed['step']}" / "pytorch_model_fsdp_0").is_dir()  # sharded
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps_this_run"] == 6 - killed["step"]
    assert [h["lr"] for h in summary["history"]] == [h["lr"] for h in ddp_run[1]["history"]][-summary["steps_this_run"]:]
    _same_adapters(ddp_run[0], run, atol=1e-6)
