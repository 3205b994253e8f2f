"""Prefect flow of the ``register`` stage: the trained model becomes a registry version (alias
``candidate``) and the champion only when the evaluation says it wins."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger

from mllm.core.atomic import write_json_atomic
from mllm.core.errors import InputError
from mllm.core.params import load_params
from mllm.model.loading import check_trained_dir
from mllm.model.train import FINAL, RUN_FILE
from mllm.registry.promotion import register


def _inputs(train: str, evaluation: str, model: str | None = None) -> tuple[Path, dict, str | None]:
    """The model to register (``model``: any HF model directory, e.g. a released checkpoint; default the
    train stage's), the evaluation that measured it, and the training run to log into (if it has one)."""
    train_dir = Path(train)
    path = Path(model) if model else train_dir / FINAL
    if not path.is_dir():
        raise InputError(f"no model at {path}" + ("" if model else " (run the train stage first)"))
    check_trained_dir(path)  # an empty or half-copied directory is never registered, let alone promoted
    if not Path(evaluation).is_file():
        raise InputError(f"no evaluation summary at {evaluation} (run the evaluate stage first)")
    try:
        summary = json.loads(Path(evaluation).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{evaluation} is not the evaluate stage's JSON summary ({err})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), dict) or not isinstance(
            summary.get("mean_accuracy"), dict):
        raise InputError(f"{evaluation} is not the evaluate stage's summary (no models / mean_accuracy)")
    if not {"trained", "majority"} <= set(summary["mean_accuracy"]):
        raise InputError(f"{evaluation} has no mean accuracy of the trained model and the majority class")
    if Path(summary["models"].get("trained", "")).resolve() != path.resolve():
        raise InputError(f"{evaluation} measured {summary['models'].get('trained')}, not {path}: rerun evaluate")
    run_file = train_dir / RUN_FILE
    run_id = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() and not model else None
    return path, summary, run_id


@contextlib.contextmanager
def registry_lock(registered_model: str, timeout_s: float = 900) -> Iterator[bool]:
    """One registration at a time per registered model, for every pipeline that reports to the same Prefect
    server: a global concurrency limit of 1 slot on it (made if missing), held while the champion is read and
    moved. Yields whether a lock was taken: without a Prefect server each command has its own temporary API,
    which no other pipeline shares."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        yield False
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = f"mllm-registry-{registered_model}"
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    with concurrency(name, occupy=1, strict=True, timeout_seconds=timeout_s):
        yield True


@flow(name="register")
def register_flow(params_path: str = "params.yaml", train: str = "data/train",
                  evaluation: str = "metrics/evaluate.json", out: str = "metrics/registry.json",
                  overrides: dict | None = None, model_dir: str | None = None) -> dict:
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    model, summary, run_id = _inputs(train, evaluation, model_dir)
    ep = params.evaluate
    with registry_lock(ep.registered_model) as locked:
        record = register(model, summary, ep.registered_model, run_id,
                          predictor={"max_queries": ep.max_queries, "n_ensemble": ep.n_ensemble, "seed": params.seed})
    if locked:
        logger.info("registered under the Prefect server's lock mllm-registry-%s", ep.registered_model)
    write_json_atomic(out, record)
    logger.info("%s version %s: %s (%s)", record["name"], record["version"],
                "promoted to champion" if record["promoted"] else "not promoted", record["reason"])
    return record


def run_register(params_path: str = "params.yaml", train: str = "data/train", evaluation: str = "metrics/evaluate.json",
                 out: str = "metrics/registry.json", overrides: dict | None = None, model_dir: str | None = None) -> dict:
    load_params(params_path, overrides)
    _inputs(train, evaluation, model_dir)
    return register_flow(params_path=params_path, train=train, evaluation=evaluation, out=out, overrides=overrides,
                         model_dir=model_dir)
