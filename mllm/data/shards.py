"""Parquet shards of synthetic tasks: one record per task, its table flattened row-major."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mllm.core.atomic import atomic_path
from mllm.data.task import Task

TASK_SCHEMA = pa.schema(
    [
        pa.field("task_id", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("prior", pa.string(), nullable=False),
        pa.field("n_features", pa.int32(), nullable=False),
        pa.field("n_classes", pa.int32(), nullable=False),
        pa.field("n_shots", pa.int32(), nullable=False),
        pa.field("n_queries", pa.int32(), nullable=False),
        # (n_shots + n_queries) x n_features, row-major; the first n_shots rows are the labelled context.
        pa.field("X", pa.list_(pa.float32()), nullable=False),
        pa.field("y", pa.list_(pa.int8()), nullable=False),
        pa.field("categorical", pa.list_(pa.bool_()), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("hyperparams", pa.string(), nullable=False),  # JSON: the sampled SCM hyper-parameters
    ]
)


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:05d}.parquet"


def _list_array(parts: Sequence[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum([p.size for p in parts], out=offsets[1:])
    values = np.concatenate([p.ravel() for p in parts]) if parts else np.array([])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def tasks_to_table(tasks: Sequence[Task]) -> pa.Table:
    cols = {
        "task_id": pa.array([t.task_id for t in tasks], pa.int64()),
        "seed": pa.array([t.seed for t in tasks], pa.int64()),
        "prior": pa.array([t.prior for t in tasks], pa.string()),
        "n_features": pa.array([t.n_features for t in tasks], pa.int32()),
        "n_classes": pa.array([t.n_classes for t in tasks], pa.int32()),
        "n_shots": pa.array([t.n_shots for t in tasks], pa.int32()),
        "n_queries": pa.array([t.n_queries for t in tasks], pa.int32()),
        "X": _list_array([t.X.astype(np.float32, copy=False) for t in tasks], pa.float32()),
        "y": _list_array([t.y.astype(np.int8, copy=False) for t in tasks], pa.int8()),
        "categorical": _list_array([t.categorical for t in tasks], pa.bool_()),
        "attempts": pa.array([t.attempts for t in tasks], pa.int32()),
        "hyperparams": pa.array([json.dumps(t.hyperparams, sort_keys=True) for t in tasks], pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=TASK_SCHEMA)


def write_shard(table: pa.Table, path: str | Path) -> None:
    """Write atomically; zstd keeps the float columns small and the same table gives the same bytes."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=["prior"], write_statistics=False)


def read_shard(path: str | Path) -> pa.Table:
    table = pq.read_table(path)
    if not table.schema.equals(TASK_SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: not a task shard (schema differs from mllm.data.shards.TASK_SCHEMA)")
    return table


def iter_tasks(table: pa.Table) -> Iterator[Task]:
    """Tasks of a shard table, as numpy views where possible."""
    x_col, y_col, c_col = table.column("X"), table.column("y"), table.column("categorical")
    meta = table.select(
        ["task_id", "seed", "prior", "n_features", "n_classes", "n_shots", "n_queries", "attempts", "hyperparams"]
    ).to_pylist()
    for i, m in enumerate(meta):
        x = x_col[i].values.to_numpy(zero_copy_only=False).reshape(-1, m["n_features"])
        yield Task(
            task_id=m["task_id"],
            seed=m["seed"],
            prior=m["prior"],
            X=x,
            y=y_col[i].values.to_numpy(zero_copy_only=False),
            n_shots=m["n_shots"],
            n_queries=m["n_queries"],
            n_classes=m["n_classes"],
            categorical=np.asarray(c_col[i].values.to_pylist(), dtype=bool),
            attempts=m["attempts"],
            hyperparams=json.loads(m["hyperparams"]),
        )
