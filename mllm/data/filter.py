"""The filter stage's work: teacher-judge every generated task; write kept tasks, the warm-up corpus and
a per-task report. Orchestration lives in ``flows/filter.py``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from threadpoolctl import threadpool_limits

from mllm.core.atomic import atomic_path
from mllm.core.params import FULL, WARMUP, FilterParams
from mllm.data.checks import filtered_expectations, require, task_summary
from mllm.data.generate import MANIFEST
from mllm.data.shards import iter_tasks, read_shard, tasks_to_table, write_shard
from mllm.data.task import Task
from mllm.data.teacher import RULES, Gates, consensus_rows, judge_task

REPORT, SUMMARY = "report.parquet", "summary.json"


def gates_of(fp: FilterParams) -> Gates:
    return Gates(
        p_value_max=fp.p_value_max,
        kappa_min=fp.kappa_min,
        balanced_accuracy_margin=fp.balanced_accuracy_margin,
        min_predicted_classes=fp.min_predicted_classes,
        max_dominant_share=fp.max_dominant_share,
    )


def input_shards(generated: str | Path) -> list[Path]:
    """Shards listed by the generate stage's manifest (a directory without one is not a finished stage)."""
    generated = Path(generated)
    manifest = generated / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{generated} has no {MANIFEST}: run `mllm generate` (or `dvc repro generate`) first")
    names = json.loads(manifest.read_text())["shards"]
    missing = [n for n in names if not (generated / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{generated}: shards listed in {MANIFEST} are missing: {missing[:5]}")
    return [generated / n for n in names]


def warmup_task(task: Task, rows: np.ndarray) -> Task:
    """The task with only the consensus query rows ``rows`` (indices into its queries)."""
    s = task.n_shots
    keep = np.concatenate([np.arange(s), s + rows])
    return replace(task, X=task.X[keep], y=task.y[keep], n_queries=int(rows.size))


def filter_shard(shard: str | Path, out_dir: str | Path, seed: int, fp: FilterParams) -> list[dict]:
    """Judge one generated shard; write its kept and warm-up shards; return its report rows."""
    shard = Path(shard)
    tasks = list(iter_tasks(read_shard(shard)))
    gates = gates_of(fp)
    kept, warm, report = [], [], []
    # Inputs passed the generate stage's GX checks (finite values): skip sklearn's per-fit re-validation.
    with threadpool_limits(1), sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for task in tasks:
            res = judge_task(task, gates, fp.n_estimators, seed)
            n_warm = 0
            if res.kept:
                kept.append(task)
                rng = np.random.default_rng(np.random.SeedSequence([seed, task.task_id, 0xC0DE]))
                s = task.n_shots
                rows = consensus_rows(task.y[:s].astype(np.int64), task.y[s:].astype(np.int64), res.correct,
                                      task.n_classes, rng)
                if rows.size:
                    warm.append(warmup_task(task, rows))
                    n_warm = int(rows.size)
            row = {k: v for k, v in asdict(res).items() if k != "correct"}
            report.append({**row, "shard": shard.name, "warmup_rows": n_warm})
    for sub, chosen in ((FULL, kept), (WARMUP, warm)):
        table = tasks_to_table(chosen)
        if table.num_rows:
            require(task_summary(table), filtered_expectations(), f"{sub}/{shard.name}")
        write_shard(table, Path(out_dir) / sub / shard.name)
    return report


def report_expectations(fp: FilterParams) -> list:
    return [
        gxe.ExpectColumnMeanToBeBetween(column="kept", min_value=fp.kept_share.min, max_value=fp.kept_share.max),
        gxe.ExpectColumnValuesToBeInSet(column="failed_rule", value_set=["", *RULES]),
        gxe.ExpectColumnValuesToBeUnique(column="task_id"),
        gxe.ExpectColumnValuesToBeBetween(column="warmup_rows", min_value=0),
    ]


def summarise(report: pd.DataFrame) -> dict:
    """Kept share, rejects by rule, and kept share by prior and by K."""
    rejects = Counter(report.loc[~report.kept, "failed_rule"])
    return {
        "tasks": len(report),
        "kept": int(report.kept.sum()),
        "kept_share": float(report.kept.mean()) if len(report) else 0.0,
        "warmup_tasks": int((report.warmup_rows > 0).sum()),
        "warmup_rows": int(report.warmup_rows.sum()),
        "rejected_by_rule": {r: int(rejects.get(r, 0)) for r in RULES},
        "kept_share_by_prior": {str(k): float(v) for k, v in report.groupby("prior").kept.mean().items()},
        "kept_share_by_classes": {str(k): float(v) for k, v in report.groupby("n_classes").kept.mean().items()},
        "teacher_accuracy_kept": float(report.loc[report.kept, "accuracy"].mean()) if report.kept.any() else 0.0,
    }


def write_report(report: pd.DataFrame, out_dir: str | Path) -> None:
    table = pa.Table.from_pandas(report.sort_values("task_id").reset_index(drop=True), preserve_index=False)
    with atomic_path(Path(out_dir) / REPORT) as tmp:
        pq.write_table(table, tmp, compression="zstd")

