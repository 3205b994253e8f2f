"""Per-process entry point of training: ``python -m mllm.model.train_worker`` alone, or under ``torchrun`` /
``accelerate launch`` for several processes. The main process logs to MLflow (resuming its run after a
restart); every process trains."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mllm.core.atomic import write_json_atomic
from mllm.model.train import FINAL, RUN_FILE, SUMMARY


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default=None, help="default: encode.tokenizer from params")
    ap.add_argument("--out", default="data/train")
    ap.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                    help="stop (checkpoint + export) after this long; rerun to continue")
    args = ap.parse_args(argv)

    from mllm.core.params import ParamsError, load_params
    from mllm.model.loading import ModelError
    from mllm.model.train import TrainingError, run_training

    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer = args.tokenizer or params.encode.tokenizer
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = None
    if _is_main() and not args.no_mlflow:
        run = _start_mlflow(params, out, args.fresh)
    try:
        log = None
        if run is not None:
            import mlflow

            def log(metrics: dict, step: int) -> None:
                mlflow.log_metrics(metrics, step=step)

        budget = None if args.time_budget is None else args.time_budget * 60
        summary = run_training(params, args.corpus, tokenizer, out, log=log, resume=not args.fresh,
                               time_budget_s=budget)
    except (TrainingError, ModelError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        if run is not None:
            import mlflow

            mlflow.end_run(status="FAILED")
        return 2
    if run is not None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))
                            and not isinstance(v, bool)})
        mlflow.log_artifacts(str(out / FINAL), artifact_path="model")
        mlflow.log_artifact(str(out / SUMMARY))
        mlflow.end_run()
        write_json_atomic(out / RUN_FILE, {"run_id": run, "finished": summary["complete"]})
    return 0


def _start_mlflow(params, out: Path, fresh: bool) -> str:
    """Start (or, after a restart, resume) the train stage's MLflow run; its id is kept in ``out``."""
    from mllm.core import tracking

    mlflow = tracking.connect()
    run_file = out / RUN_FILE
    prev = json.loads(run_file.read_text()) if run_file.is_file() and not fresh else None
    if prev and not prev.get("finished"):
        mlflow.start_run(run_id=prev["run_id"])
        return prev["run_id"]
    exp = tracking.experiment_id(mlflow, tracking.EXPERIMENT, Path.cwd())
    active = mlflow.start_run(experiment_id=exp, run_name="train", tags={"mllm.stage": "train"})
    mlflow.log_params(tracking.flatten({"seed": params.seed, "model": params.model.model_dump(mode="json"),
                                        "train": {k: v for k, v in params.train.model_dump(mode="json").items()
                                                  if k != "stages"}}))
    for i, st in enumerate(params.train.stages):
        mlflow.log_params(tracking.flatten(st.model_dump(mode="json"), prefix=f"train.stage{i}."))
    write_json_atomic(run_file, {"run_id": active.info.run_id, "finished": False})
    return active.info.run_id


if __name__ == "__main__":
    sys.exit(main())
