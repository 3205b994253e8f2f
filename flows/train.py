"""Prefect flow of the ``train`` stage: continued pretraining in 1 or N processes, logged to MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from mllm.core.atomic import write_text_atomic
from mllm.core.errors import StageFailed
from mllm.core.params import load_params
from mllm.model.train import RUN_FILE, SUMMARY, check_corpus


class TrainFailed(StageFailed):
    """A training process exited with an error."""


@flow(name="train")
def train_flow(params_path: str = "params.yaml", corpus: str = "data/corpus", out: str = "data/train",
               overrides: dict | None = None, time_budget: float | None = None) -> dict:
    """Train on ``corpus`` into ``out`` (checkpoints, ``model/``, summary, MLflow run id)."""
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = out_dir / "params.resolved.yaml"  # what every process reads, overrides included
    write_text_atomic(resolved, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    args = ["--params", str(resolved), "--corpus", corpus, "--out", out, "--tokenizer", params.encode.tokenizer]
    if time_budget is not None:
        args += ["--time-budget", str(time_budget)]
    n = params.train.num_processes
    logger.info("training %s (%s) on %d process(es)", params.model.base, params.model.adapter, n)
    if n == 1:
        from mllm.model.train_worker import main

        code = main(args)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "mllm.model.train_worker", *args]
        code = subprocess.run(cmd).returncode
    if code != 0:
        raise TrainFailed(f"training exited with code {code}")
    summary = json.loads((out_dir / SUMMARY).read_text())
    run = json.loads((out_dir / RUN_FILE).read_text())
    if summary["steps_this_run"] == 0:  # resumed a checkpoint that had already finished every stage
        logger.info("nothing left to train: the checkpoint for these params and corpus is complete; model "
                    "exported again; MLflow run %s", run["run_id"])
    else:
        logger.info("trained %d steps, %d tokens (%.0f tokens/s), final loss %.4f; MLflow run %s",
                    summary["steps_this_run"], summary["tokens_this_run"], summary["tokens_per_s"],
                    summary["final_loss"], run["run_id"])
    return {**{k: v for k, v in summary.items() if k != "history"}, "run_id": run["run_id"]}


def run_train(params_path: str = "params.yaml", corpus: str = "data/corpus", out: str = "data/train",
              overrides: dict | None = None, time_budget: float | None = None) -> dict:
    """Validate params and the corpus before the flow starts, then train."""
    check_corpus(load_params(params_path, overrides), corpus, None)
    return train_flow(params_path=params_path, corpus=corpus, out=out, overrides=overrides, time_budget=time_budget)
