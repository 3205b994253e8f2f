"""Prefect flow of the ``filter`` stage: teacher gates per shard, warm-up consensus, report to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.runners import api_shared_with_subprocesses, gather, make_task_runner, runner_for
from mllm.core import tracking
from mllm.core.atomic import atomic_dir, write_json_atomic
from mllm.core.params import FilterParams, load_params
from mllm.data.checks import require
from mllm.data.filter import (
    SUMMARY,
    filter_shard,
    input_shards,
    report_expectations,
    summarise,
    write_report,
)


@task(name="filter-shard", task_run_name="filter-{shard_name}")
def filter_shard_task(shard: str, shard_name: str, out_dir: str, seed: int, params: dict) -> list[dict]:
    return filter_shard(shard, out_dir, seed, FilterParams.model_validate(params))


@flow(name="filter", task_runner=make_task_runner(2))
def filter_flow(
    params_path: str = "params.yaml",
    generated: str = "data/generated",
    out: str = "data/filtered",
    metrics: str | None = "metrics/filter.json",
    overrides: dict | None = None,
) -> dict:
    """Judge every generated task with the random-forest teacher; write ``out/{full,warmup}`` shards,
    ``out/report.parquet`` (one row per task) and the summary (also to ``metrics``)."""
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    fp = params.filter
    shards = input_shards(generated)
    logger.info("filtering %d shards on %d workers", len(shards), fp.n_workers)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp, api_shared_with_subprocesses():
        futures = [
            filter_shard_task.submit(str(s), s.name, str(tmp), params.seed, fp.model_dump(mode="json")) for s in shards
        ]
        report = pd.DataFrame([row for rows in gather(futures, desc="filter") for row in rows])
        check = require(report, report_expectations(fp), "filter report")
        summary = summarise(report)
        summary["checks"] = {"expectations_evaluated": check.evaluated, "expectations_failed": check.failed}
        write_report(report, tmp)
        write_json_atomic(Path(tmp) / SUMMARY, summary)
    seconds = time.perf_counter() - t0
    if metrics:
        write_json_atomic(metrics, summary)
    logger.info("kept %d of %d tasks (%.1f%%); warm-up: %d tasks, %d rows; %.1f tasks/s",
                summary["kept"], summary["tasks"], 100 * summary["kept_share"], summary["warmup_tasks"],
                summary["warmup_rows"], summary["tasks"] / seconds)

    with tracking.run("filter", tags={"prefect.flow_run_id": str(flow_run.get_id() or "")}) as mlflow:
        mlflow.log_params(tracking.flatten({"seed": params.seed, "filter": fp.model_dump(mode="json")}))
        mlflow.log_metrics(
            {
                "tasks": summary["tasks"],
                "kept": summary["kept"],
                "kept_share": summary["kept_share"],
                "warmup_tasks": summary["warmup_tasks"],
                "warmup_rows": summary["warmup_rows"],
                "seconds": seconds,
                "tasks_per_s": summary["tasks"] / seconds,
                **{f"rejected_{k}": v for k, v in summary["rejected_by_rule"].items()},
                **{f"kept_share_prior_{k}": v for k, v in summary["kept_share_by_prior"].items()},
                **{f"kept_share_k{k}": v for k, v in summary["kept_share_by_classes"].items()},
            }
        )
        mlflow.log_artifact(str(Path(out) / SUMMARY))
    return summary


def run_filter(params_path: str = "params.yaml", generated: str = "data/generated", out: str = "data/filtered",
               metrics: str | None = "metrics/filter.json", overrides: dict | None = None) -> dict:
    """Validate params and inputs first, then run the flow on ``filter.n_workers`` workers."""
    params = load_params(params_path, overrides)
    input_shards(generated)
    runner = runner_for(params, "filter")
    return filter_flow.with_options(task_runner=runner)(
        params_path=params_path, generated=generated, out=out, metrics=metrics, overrides=overrides
    )
