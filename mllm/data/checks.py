"""Great Expectations checks on generated shards.

The suite runs on a per-task summary of the shard (one row per task, computed from the stored arrays),
which checks every value of every task while keeping GX's cost per shard, not per cell.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
from great_expectations.data_context.types.base import ProgressBarsConfig

from mllm.core.errors import StageFailed
from mllm.core.params import GenerateParams

logging.getLogger("great_expectations").setLevel(logging.WARNING)  # silence per-check "docs site" notes


class DataCheckError(StageFailed):
    """A Great Expectations suite failed; the message is GX's report of the failed expectations."""


@dataclass
class CheckResult:
    success: bool
    evaluated: int
    failed: int
    report: str


def task_summary(table: pa.Table) -> pd.DataFrame:
    """One row per task: declared shape next to what the arrays actually hold."""
    rows = []
    xs, ys = table.column("X"), table.column("y")
    n_shots = table.column("n_shots").to_numpy()
    n_queries = table.column("n_queries").to_numpy()
    d = table.column("n_features").to_numpy()
    k = table.column("n_classes").to_numpy()
    cat_len = pa.compute.list_value_length(table.column("categorical")).to_numpy()
    for i in range(table.num_rows):
        x = xs[i].values.to_numpy(zero_copy_only=False)
        y = ys[i].values.to_numpy(zero_copy_only=False).astype(np.int64)
        rows.append(
            {
                "task_id": int(table.column("task_id")[i].as_py()),
                "n_features": int(d[i]),
                "n_classes": int(k[i]),
                "n_shots": int(n_shots[i]),
                "n_queries": int(n_queries[i]),
                "declared_rows": int(n_shots[i] + n_queries[i]),
                "label_rows": int(y.size),
                "feature_rows": int(x.size // max(int(d[i]), 1)) if x.size % max(int(d[i]), 1) == 0 else -1,
                "categorical_flags": int(cat_len[i]),
                "n_nonfinite": int(x.size - np.isfinite(x).sum()),
                "label_min": int(y.min()) if y.size else -1,
                "label_max": int(y.max()) if y.size else -1,
                "shot_classes": int(np.unique(y[: n_shots[i]]).size),
            }
        )
    return pd.DataFrame(rows)


def generated_expectations(p: GenerateParams) -> list:
    """Suite of a generated shard, on its ``task_summary``."""
    return [
        *_task_integrity(),
        gxe.ExpectColumnValuesToBeBetween(column="n_features", min_value=p.features.min, max_value=p.features.max),
        gxe.ExpectColumnValuesToBeBetween(column="n_classes", min_value=2, max_value=p.classes.max),
        gxe.ExpectColumnValuesToBeBetween(column="n_shots", min_value=p.shots.min, max_value=p.shots.max),
        gxe.ExpectColumnValuesToBeBetween(column="n_queries", min_value=p.queries, max_value=p.queries),
    ]


def filtered_expectations() -> list:
    """Suite of a filtered (full or warm-up) shard: sound tasks, none empty."""
    return [*_task_integrity(), gxe.ExpectColumnValuesToBeBetween(column="n_queries", min_value=1)]


def _task_integrity() -> list:
    return [
        gxe.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="label_min", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_classes", column_B="label_max"),
        gxe.ExpectColumnValuesToBeBetween(column="shot_classes", min_value=2),
        gxe.ExpectColumnValuesToBeBetween(column="n_shots", min_value=2),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="label_rows", column_B="declared_rows"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="feature_rows", column_B="declared_rows"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="categorical_flags", column_B="n_features"),
        gxe.ExpectColumnValuesToBeUnique(column="task_id"),
    ]


def _report(result) -> tuple[int, str]:
    lines = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        res = r.result or {}
        detail = ""
        if "unexpected_count" in res:
            detail = f": {res['unexpected_count']} of {res.get('element_count')} tasks unexpected"
            if res.get("partial_unexpected_list"):
                detail += f", e.g. {res['partial_unexpected_list'][:5]}"
        lines.append(f"  FAILED {cfg.type} {kwargs}{detail}")
    return len(lines), "\n".join(lines)


def run_suite(frame: pd.DataFrame, expectations: list, name: str) -> CheckResult:
    """Validate ``frame`` against ``expectations`` in an ephemeral GX context."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per check floods stage logs
    uid = uuid.uuid4().hex[:8]
    batch_def = (
        ctx.data_sources.add_pandas(f"src_{uid}")
        .add_dataframe_asset(name=f"frame_{uid}")
        .add_batch_definition_whole_dataframe(f"batch_{uid}")
    )
    suite = gx.ExpectationSuite(name=f"{name}_{uid}")
    for e in expectations:
        suite.add_expectation(e)
    suite = ctx.suites.add(suite)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(data=batch_def, suite=suite, name=f"vd_{uid}"))
    result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    failed, text = _report(result)
    return CheckResult(bool(result.success), len(result.results), failed, text)


def require(frame: pd.DataFrame, expectations: list, name: str) -> CheckResult:
    """``run_suite``, raising ``DataCheckError`` with GX's report when any expectation fails."""
    res = run_suite(frame, expectations, name)
    if not res.success:
        raise DataCheckError(f"Great Expectations checks failed for {name}:\n{res.report}")
    return res


def check_shard(table: pa.Table, p: GenerateParams, name: str) -> CheckResult:
    """Validate a generated shard; raise ``DataCheckError`` with GX's report if any expectation fails."""
    return require(task_summary(table), generated_expectations(p), name)
