"""Prefect flow of the ``encode`` stage: filtered shards -> chat-format corpus shards, logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.runners import api_shared_with_subprocesses, gather, make_task_runner, runner_for
from mllm.core import tracking
from mllm.core.atomic import atomic_dir, write_json_atomic
from mllm.core.params import FULL, WARMUP, EncodeParams, load_params
from mllm.text.corpus import encode_shard, summarise
from mllm.text.tokenizer import load_tokenizer

SUMMARY = "summary.json"


@task(name="encode-shard", task_run_name="encode-{corpus}-{shard_name}")
def encode_shard_task(shard: str, shard_name: str, corpus: str, out_dir: str, seed: int, params: dict) -> dict:
    ep = EncodeParams.model_validate(params)
    stats = encode_shard(shard, Path(out_dir) / corpus / shard_name, load_tokenizer(ep.tokenizer), seed, ep)
    return {**stats, "corpus": corpus}


def input_shards(filtered: str | Path) -> dict[str, list[Path]]:
    filtered = Path(filtered)
    found = {c: sorted((filtered / c).glob("shard-*.parquet")) for c in (FULL, WARMUP)}
    if not found[FULL]:
        raise FileNotFoundError(f"{filtered}/{FULL} holds no shards: run `mllm filter` (or `dvc repro filter`) first")
    return found


@flow(name="encode", task_runner=make_task_runner(2))
def encode_flow(params_path: str = "params.yaml", filtered: str = "data/filtered", out: str = "data/corpus",
                metrics: str | None = "metrics/encode.json", overrides: dict | None = None) -> dict:
    """Encode the full and warm-up corpora; sequences fit ``encode.cutoff_len`` in the model's tokens."""
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ep = params.encode
    shards = input_shards(filtered)
    load_tokenizer(ep.tokenizer)  # fail here, not in every worker
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp, api_shared_with_subprocesses():
        futures = [
            encode_shard_task.submit(str(s), s.name, corpus, str(tmp), params.seed, ep.model_dump(mode="json"))
            for corpus, paths in shards.items() for s in paths
        ]
        stats = gather(futures, desc="encode")
        summary = {c: summarise([s for s in stats if s["corpus"] == c]) for c in (FULL, WARMUP)}
        summary["tokenizer"] = ep.tokenizer
        summary["cutoff_len"] = ep.cutoff_len
        write_json_atomic(Path(tmp) / SUMMARY, summary)
    seconds = time.perf_counter() - t0
    if metrics:
        write_json_atomic(metrics, summary)
    n_seq = summary[FULL]["sequences"] + summary[WARMUP]["sequences"]
    logger.info("encoded %d full + %d warm-up sequences (%d tokens) in %.1fs", summary[FULL]["sequences"],
                summary[WARMUP]["sequences"], summary[FULL]["tokens"] + summary[WARMUP]["tokens"], seconds)

    with tracking.run("encode", tags={"prefect.flow_run_id": str(flow_run.get_id() or "")}) as mlflow:
        mlflow.log_params(tracking.flatten({"seed": params.seed, "encode": ep.model_dump(mode="json")}))
        mlflow.log_metrics({
            "seconds": seconds,
            "sequences_per_s": n_seq / seconds,
            **{f"{c}_{k}": float(v) for c in (FULL, WARMUP) for k, v in summary[c].items() if k != "skipped"},
            **{f"{c}_skipped_{k}": v for c in (FULL, WARMUP) for k, v in summary[c]["skipped"].items()},
        })
        mlflow.log_artifact(str(Path(out) / SUMMARY))
    return summary


def run_encode(params_path: str = "params.yaml", filtered: str = "data/filtered", out: str = "data/corpus",
               metrics: str | None = "metrics/encode.json", overrides: dict | None = None) -> dict:
    """Validate params, inputs and the tokenizer first, then run the flow on ``encode.n_workers`` workers."""
    params = load_params(params_path, overrides)
    input_shards(filtered)
    load_tokenizer(params.encode.tokenizer)
    runner = runner_for(params, "encode")
    return encode_flow.with_options(task_runner=runner)(params_path=params_path, filtered=filtered, out=out,
                                                        metrics=metrics, overrides=overrides)
