"""Prefect flow of the ``evaluate`` stage: the trained model, its base, the registry's champion and the
classical baselines on the same splits and shots; metrics.json, learning curves, an MLflow run."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from mllm.core import tracking
from mllm.core.atomic import atomic_dir, write_json_atomic
from mllm.core.params import load_params
from mllm.evaluation.curve import curve_point, read_snapshots, write_curve
from mllm.evaluation.models import in_context, label_capacity_of, models_to_evaluate, release_memory
from mllm.evaluation.plots import write_curve_csv, write_pngs
from mllm.evaluation.suite import (
    VOTE,
    baseline,
    evaluate_dataset,
    in_table_order,
    load_suite,
    suite_id,
    summarise,
)
from mllm.evaluation.synthetic import heldout_accuracy, heldout_tasks

RESULTS = "results.csv"
TABLES = "tables"  # <dataset>/shots-<n>.csv: every model's rows (per seed and voted) for one table and shot count


@task(name="evaluate-table", task_run_name="evaluate-{name}", cache_policy=NONE)
def evaluate_table(name: str, X, y, fns: dict, shots: list[int], seeds: list[int], max_test: int | None,
                   test_chunk: int) -> list[dict]:
    return evaluate_dataset(name, X, y, fns, shots, seeds, max_test=max_test, test_chunk=test_chunk)


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml", model: str = "data/train/model", out: str = "data/evaluate",
                  metrics: str = "metrics/evaluate.json", curve: str = "plots/learning_curve.csv",
                  snapshots: str | None = None, training_curve: str = "plots/training_curve.csv",
                  overrides: dict | None = None) -> dict:
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ep = params.evaluate
    refs, champion_version = models_to_evaluate(params, model)
    points = _curve_models(snapshots, refs)
    tables, skipped = load_suite(ep, label_capacity_of(refs))
    for name, why in skipped.items():
        logger.warning("skipping table %s: %s", name, why)
    logger.info("evaluating %s on %d tables, shots %s, seeds %s", ", ".join(refs), len(tables), ep.shots, ep.seeds)
    t0 = time.perf_counter()
    sp = ep.synthetic
    held = heldout_tasks(params, sp.tasks, sp.shots) if sp.tasks else []
    rows, names, synthetic = [], [*refs, *ep.baselines], {}
    for model_name in names:  # one in-context model in memory at a time
        fn = in_context(refs[model_name], ep, params.seed) if model_name in refs else baseline(model_name, params.seed)
        for name, (X, y) in tables.items():
            rows += evaluate_table(name, X, y, {model_name: fn}, ep.shots, ep.seeds, ep.max_test, ep.test_chunk)
        if held:
            synthetic[model_name] = heldout_accuracy(fn, held, sp.shots, sp.queries)
        for p in points:  # the base and the trained model are loaded once, for both
            if p.get("ref") == model_name:
                _score_point(p, fn, tables, held, params, logger)
        del fn
        release_memory()
    for p in points:  # accuracy vs training tokens: the snapshots before the last
        if "ref" in p:
            _score_point(p, in_context(p["ref"], ep, params.seed), tables, held, params, logger)
            release_memory()
    rows = in_table_order(rows, list(tables), names, ep.shots, ep.seeds)
    seconds = time.perf_counter() - t0
    summary = summarise(rows, skipped, suite_id(ep, list(tables)))
    summary["models"] = refs
    if held:
        summary["synthetic"] = {"tasks": len(held), "shots": sp.shots, "queries": sp.queries, "accuracy": synthetic}
    summary["training_curve"] = points
    summary["champion_version"] = champion_version
    summary["seconds"] = round(seconds, 1)
    per_seed = [r for r in rows if r["seed"] != VOTE]  # the curves: seeds averaged, as ever
    with atomic_dir(out) as tmp:
        table = pd.DataFrame(rows)
        table.to_csv(Path(tmp) / RESULTS, index=False)
        for (dataset, shots), part in table.groupby(["dataset", "shots"], sort=False):  # the authors' per-file view
            (Path(tmp) / TABLES / dataset).mkdir(parents=True, exist_ok=True)
            part.to_csv(Path(tmp) / TABLES / dataset / f"shots-{shots}.csv", index=False)
        pngs = write_pngs(per_seed, tmp)
    write_curve_csv(per_seed, curve)
    write_curve(points, training_curve)
    write_json_atomic(metrics, summary)
    mean = summary["mean_accuracy"]
    logger.info("mean accuracy: %s", ", ".join(f"{m} {v:.3f}" for m, v in mean.items()))
    if held:
        logger.info("held-out synthetic tasks (%d), accuracy: %s", len(held),
                    ", ".join(f"{m} {v:.3f}" for m, v in synthetic.items()))

    with tracking.run("evaluate", tags={"prefect.flow_run_id": str(flow_run.get_id() or ""),
                                        "mllm.champion_version": str(champion_version)}) as mlflow:
        mlflow.log_params(tracking.flatten({"seed": params.seed, "evaluate": ep.model_dump(mode="json"),
                                            "models": refs}))
        mlflow.log_metrics({f"mean_accuracy.{m}": v for m, v in mean.items() if v is not None})
        mlflow.log_metrics({f"mean_accuracy_vote.{m}": v for m, v in summary["mean_accuracy_vote"].items()
                            if v is not None})
        mlflow.log_metrics({f"synthetic_accuracy.{m}": v for m, v in synthetic.items()})
        for p in points:  # MLflow's step axis: tokens trained on
            mlflow.log_metrics({f"curve.{k}": p[k] for k in ("synthetic_accuracy", "synthetic_label_loss",
                                                               "tables_accuracy") if p[k] is not None}, step=p["tokens"])
        for m, by in summary["accuracy_by_shots"].items():
            for n, v in by.items():
                if v is not None:
                    mlflow.log_metric(f"accuracy.{m}", v, step=int(n))
        if "quality_bar" in summary:
            mlflow.log_metric("lift_over_majority_at_128", summary["quality_bar"]["lift_over_majority"] or 0.0)
        per_table = pd.DataFrame(per_seed).groupby(["dataset", "model"]).accuracy.mean().unstack("model").reset_index()
        mlflow.log_table(per_table, artifact_file="accuracy_by_table.json")
        for png in pngs:
            mlflow.log_artifact(str(Path(out) / png.name), artifact_path="plots")
        mlflow.log_artifacts(str(Path(out) / TABLES), artifact_path=TABLES)
        mlflow.log_artifact(metrics)
    return summary


def _curve_models(snapshots: str | None, refs: dict[str, str]) -> list[dict]:
    """The curve's points to score: the base at 0 tokens (when it is evaluated), then the snapshots. A point's
    ``ref`` is the name in ``refs`` of a model evaluated anyway (the base, the trained model), else its path."""
    points = [{"step": 0, "tokens": 0, "ref": "base"}] if "base" in refs else []
    if snapshots is None:
        return points
    if not Path(snapshots).is_file():
        get_run_logger().warning("no snapshot index %s (train.snapshot_every is 0?): the training curve holds "
                                 "the base only", snapshots)
        return points
    named = {str(Path(r).resolve()): n for n, r in refs.items() if Path(r).is_dir()}
    return points + [{"step": e["step"], "tokens": e["tokens"], "ref": named.get(e["path"], e["path"])}
                     for e in read_snapshots(snapshots)]


def _score_point(p: dict, fn, tables: dict, held: list, params, logger) -> None:
    del p["ref"]
    p.update(curve_point(fn, tables, held, params))
    logger.info("curve: %d tokens, held-out synthetic accuracy %s (label loss %s), tables %s", p["tokens"],
                p["synthetic_accuracy"], p["synthetic_label_loss"], p["tables_accuracy"])


def run_evaluate(params_path: str = "params.yaml", model: str = "data/train/model", out: str = "data/evaluate",
                 metrics: str = "metrics/evaluate.json", curve: str = "plots/learning_curve.csv",
                 snapshots: str | None = None, training_curve: str = "plots/training_curve.csv",
                 overrides: dict | None = None) -> dict:
    """Validate params, tables, models and snapshots before the flow starts."""
    params = load_params(params_path, overrides)
    load_suite(params.evaluate)
    models_to_evaluate(params, model)
    if snapshots is not None and Path(snapshots).is_file():
        read_snapshots(snapshots)
    return evaluate_flow(params_path=params_path, model=model, out=out, metrics=metrics, curve=curve,
                         snapshots=snapshots, training_curve=training_curve, overrides=overrides)
