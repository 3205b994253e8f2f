"""MLflow tracking: an embedded SQLite store inside the repo by default, any server via MLFLOW_TRACKING_URI."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

EXPERIMENT = "mllm"


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` (MLflow 3 refuses plain file stores)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def connect_existing(what: str):
    """``connect()`` for reading a store that must exist already: a SQLite store that is not there is an
    error naming it, and no empty database is left behind by the look-up."""
    from mllm.core.errors import InputError

    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise InputError(f"{what}: no MLflow store at {db}, so no registered model (run from the project directory "
                         "that holds mlflow.db, run `dvc repro` there to train, evaluate and register one, set "
                         "MLFLOW_TRACKING_URI, or name a model directory)")
    return connect()


def connect():
    """The ``mlflow`` module, pointed at this project's tracking store."""
    import mlflow  # heavy import; only what logs or reads the registry pays for it

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def experiment_id(mlflow, name: str, root: Path) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        artifact_location = (root / "mlruns").as_uri()  # artifacts beside the store, inside the repo
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def run(stage: str, root: str | Path | None = None, experiment: str = EXPERIMENT, tags: dict | None = None) -> Iterator:
    """Start an MLflow run for one stage; yields the ``mlflow`` module with the run active."""
    import mlflow  # heavy import; only stages that log pay for it

    root = Path(root or Path.cwd()).resolve()
    mlflow.set_tracking_uri(tracking_uri(root))
    exp_id = experiment_id(mlflow, experiment, root)
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, tags={"mllm.stage": stage, **(tags or {})}):
        yield mlflow
