"""Prefect flow of the ``register`` stage: the trained model becomes a registry version (alias
``candidate``) and the champion only when the evaluation says it wins."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from mllm.core.atomic import write_json_atomic
from mllm.core.errors import InputError
from mllm.core.params import load_params
from mllm.model.train import FINAL, RUN_FILE
from mllm.registry.promotion import register


def _inputs(train: str, evaluation: str) -> tuple[Path, dict, str | None]:
    train_dir = Path(train)
    model = train_dir / FINAL
    if not model.is_dir():
        raise InputError(f"no trained model at {model} (run the train stage first)")
    if not Path(evaluation).is_file():
        raise InputError(f"no evaluation summary at {evaluation} (run the evaluate stage first)")
    summary = json.loads(Path(evaluation).read_text())
    run_file = train_dir / RUN_FILE
    run_id = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() else None
    return model, summary, run_id


@flow(name="register")
def register_flow(params_path: str = "params.yaml", train: str = "data/train",
                  evaluation: str = "metrics/evaluate.json", out: str = "metrics/registry.json",
                  overrides: dict | None = None) -> dict:
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    model, summary, run_id = _inputs(train, evaluation)
    if Path(summary["models"].get("trained", "")).resolve() != model.resolve():
        raise InputError(f"{evaluation} measured {summary['models'].get('trained')}, not {model}: rerun evaluate")
    ep = params.evaluate
    record = register(model, summary, ep.registered_model, run_id,
                      predictor={"max_queries": ep.max_queries, "n_ensemble": ep.n_ensemble, "seed": params.seed})
    write_json_atomic(out, record)
    logger.info("%s version %s: %s (%s)", record["name"], record["version"],
                "promoted to champion" if record["promoted"] else "not promoted", record["reason"])
    return record


def run_register(params_path: str = "params.yaml", train: str = "data/train", evaluation: str = "metrics/evaluate.json",
                 out: str = "metrics/registry.json", overrides: dict | None = None) -> dict:
    load_params(params_path, overrides)
    _inputs(train, evaluation)
    return register_flow(params_path=params_path, train=train, evaluation=evaluation, out=out, overrides=overrides)
