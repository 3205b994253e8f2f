"""The generate stage's work: tasks -> checked Parquet shards. Orchestration lives in ``flows/generate.py``."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from threadpoolctl import threadpool_limits

from mllm.core.atomic import write_json_atomic
from mllm.core.params import GenerateParams
from mllm.data.checks import check_shard
from mllm.data.prior import generate_task
from mllm.data.shards import shard_name, tasks_to_table, write_shard

MANIFEST = "manifest.json"


def shard_ranges(p: GenerateParams) -> list[tuple[int, int]]:
    """Task id range [start, stop) of every shard."""
    return [(s, min(s + p.shard_size, p.num_tasks)) for s in range(0, p.num_tasks, p.shard_size)]


def generate_shard(seed: int, shard_index: int, p: GenerateParams, out_dir: str | Path) -> dict:
    """Generate, check (GX) and write one shard. A shard that fails its checks is never written."""
    start, stop = shard_ranges(p)[shard_index]
    t0 = time.perf_counter()
    # One BLAS thread: the SCM matmuls are small, and parallelism comes from shards, not threads.
    with threadpool_limits(1):
        tasks = [generate_task(seed, i, p) for i in range(start, stop)]
    gen_seconds = time.perf_counter() - t0
    table = tasks_to_table(tasks)
    name = shard_name(shard_index)
    check = check_shard(table, p, name)
    write_shard(table, Path(out_dir) / name)
    return {
        "shard": name,
        "tasks": len(tasks),
        "generate_seconds": gen_seconds,
        "priors": dict(Counter(t.prior for t in tasks)),
        "classes": dict(Counter(t.n_classes for t in tasks)),
        "redraws": sum(t.attempts - 1 for t in tasks),
        "checks_evaluated": check.evaluated,
        "checks_failed": check.failed,
    }


def summarise(shard_stats: list[dict], p: GenerateParams, seed: int, seconds: float) -> dict:
    """The stage manifest: which shards exist and what they hold (deterministic: no timings)."""
    priors: Counter = Counter()
    classes: Counter = Counter()
    for s in shard_stats:
        priors.update(s["priors"])
        classes.update({int(k): v for k, v in s["classes"].items()})
    return {
        "seed": seed,
        "params": p.model_dump(mode="json"),
        "tasks": sum(s["tasks"] for s in shard_stats),
        "shards": sorted(s["shard"] for s in shard_stats),
        "priors": dict(sorted(priors.items())),
        "classes": {str(k): v for k, v in sorted(classes.items())},
        "redraws": sum(s["redraws"] for s in shard_stats),
        "checks": {
            "suite": "generated_shard",
            "expectations_evaluated": sum(s["checks_evaluated"] for s in shard_stats),
            "expectations_failed": sum(s["checks_failed"] for s in shard_stats),
        },
    }


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    write_json_atomic(Path(out_dir) / MANIFEST, manifest)
