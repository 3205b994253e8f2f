"""Prefect flow of the ``generate`` stage: shards fanned out on a task runner, checked, logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.runners import api_shared_with_subprocesses, gather, make_task_runner, runner_for
from mllm.core import tracking
from mllm.core.atomic import atomic_dir
from mllm.core.params import GenerateParams, load_params
from mllm.data.generate import MANIFEST, generate_shard, shard_ranges, summarise, write_manifest


@task(name="generate-shard", task_run_name="generate-shard-{shard_index}")
def generate_shard_task(seed: int, shard_index: int, params: dict, out_dir: str) -> dict:
    return generate_shard(seed, shard_index, GenerateParams.model_validate(params), out_dir)


@flow(name="generate", task_runner=make_task_runner(2))
def generate_flow(params_path: str = "params.yaml", out: str = "data/generated", overrides: dict | None = None) -> dict:
    """Generate ``generate.num_tasks`` SCM tasks into checked Parquet shards under ``out`` (replaced whole)."""
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    p = params.generate
    n_shards = len(shard_ranges(p))
    logger.info("generating %d tasks in %d shards on %d workers", p.num_tasks, n_shards, p.n_workers)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp, api_shared_with_subprocesses():
        futures = [
            generate_shard_task.submit(params.seed, i, p.model_dump(mode="json"), str(tmp)) for i in range(n_shards)
        ]
        stats = gather(futures, desc="generate")
        manifest = summarise(stats, p, params.seed, time.perf_counter() - t0)
        write_manifest(tmp, manifest)
    seconds = time.perf_counter() - t0
    logger.info("wrote %d tasks to %s in %.1fs (%.1f tasks/s)", manifest["tasks"], out, seconds, manifest["tasks"] / seconds)

    with tracking.run("generate", tags={"prefect.flow_run_id": str(flow_run.get_id() or "")}) as mlflow:
        mlflow.log_params(tracking.flatten({"seed": params.seed, "generate": manifest["params"]}))
        mlflow.log_metrics(
            {
                "tasks": manifest["tasks"],
                "shards": len(manifest["shards"]),
                "seconds": seconds,
                "tasks_per_s": manifest["tasks"] / seconds,
                "redraws": manifest["redraws"],
                "gx_expectations_evaluated": manifest["checks"]["expectations_evaluated"],
                "gx_expectations_failed": manifest["checks"]["expectations_failed"],
                **{f"prior_{k}": v for k, v in manifest["priors"].items()},
                **{f"classes_{k}": v for k, v in manifest["classes"].items()},
            }
        )
        mlflow.log_artifact(str(Path(out) / MANIFEST))
    return manifest


def run_generate(params_path: str = "params.yaml", out: str = "data/generated", overrides: dict | None = None) -> dict:
    """Validate params first (no Prefect, no work on bad input), then run the flow on ``n_workers`` workers."""
    params = load_params(params_path, overrides)
    runner = runner_for(params, "generate")
    return generate_flow.with_options(task_runner=runner)(params_path=params_path, out=out, overrides=overrides)
