"""Registration with a gated ``champion``, and manual promotion.

Every trained model is logged as an MLflow pyfunc model (``mllm.registry.pyfunc``; the Hugging Face weights
and tokenizer are its artifact ``hf``) and registered as a new version of a registered model with the alias
``candidate``. The alias ``champion`` moves to it only when its mean accuracy over the evaluation suite beats
the current champion's (measured in the same evaluation run, on the same splits) and the majority class;
the decision and its figures are tags of the version.
"""

from __future__ import annotations

from pathlib import Path

from mllm.core import tracking
from mllm.model.references import (
    CANDIDATE,
    CHAMPION,
    DEFAULT_NAME,
    RegistryError,
    alias_version,
    weights_digest,
)


def decide(evaluation: dict, champion_version: str | None) -> tuple[bool, str]:
    """Promote only if the trained model's mean accuracy beats the champion's (same evaluation) and the
    majority class's. ``evaluation`` is the evaluate stage's summary (``metrics/evaluate.json``)."""
    mean = evaluation["mean_accuracy"]
    ours, majority = mean["trained"], mean["majority"]
    if ours <= majority:
        return False, f"mean accuracy {ours:.4f} does not beat the majority class ({majority:.4f})"
    if champion_version is None:
        return True, f"first champion: mean accuracy {ours:.4f} beats the majority class ({majority:.4f})"
    evaluated = evaluation.get("champion_version")
    if evaluated != champion_version:
        return False, (f"the champion is version {champion_version} but the evaluation measured "
                       f"{evaluated or 'none'}; rerun the evaluate stage")
    theirs = mean["champion"]
    if ours <= theirs:
        return False, f"mean accuracy {ours:.4f} does not beat the champion's ({theirs:.4f}, version {champion_version})"
    return True, f"mean accuracy {ours:.4f} beats the champion's ({theirs:.4f}, version {champion_version})"


def register(model_dir: str | Path, evaluation: dict, name: str = DEFAULT_NAME, run_id: str | None = None,
             predictor: dict | None = None) -> dict:
    """Log ``model_dir`` as a pyfunc model (into the training run ``run_id`` when given), register it as a
    version of ``name`` with alias ``candidate`` (the same weights are not registered twice), and move
    ``champion`` to it when ``decide`` says so. Returns the decision record (also set as version tags)."""
    from mllm.model.loading import check_trained_dir
    from mllm.registry.pyfunc import log_pyfunc

    check_trained_dir(model_dir)
    mlflow = tracking.connect()
    client = mlflow.MlflowClient()
    model_dir = Path(model_dir)
    digest = weights_digest(model_dir)
    existing = [v for v in _versions(client, name) if v.tags.get("mllm.weights_sha256") == digest]
    if existing:
        mv = existing[0]
    else:
        if run_id is not None:
            ctx = mlflow.start_run(run_id=run_id)
        else:
            exp = tracking.experiment_id(mlflow, tracking.EXPERIMENT, Path.cwd())
            ctx = mlflow.start_run(experiment_id=exp, run_name="register", tags={"mllm.stage": "register"})
        with ctx:
            info = log_pyfunc(model_dir, predictor or {})
        mv = mlflow.register_model(info.model_uri, name, tags={"mllm.weights_sha256": digest})
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    current = alias_version(name, CHAMPION)
    champion_version = None if current is None else str(current.version)
    if champion_version == str(mv.version):
        promote, reason = False, f"version {mv.version} is already the champion"
    else:
        promote, reason = decide(evaluation, champion_version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    mean = evaluation["mean_accuracy"]
    record = {
        "name": name, "version": str(mv.version), "promoted": promote, "reason": reason,
        "champion_version": str(mv.version) if promote else champion_version,
        "mean_accuracy": mean["trained"], "majority_accuracy": mean["majority"],
        "champion_accuracy": mean.get("champion"), "base_accuracy": mean.get("base"),
    }
    tags = {"mllm.decision": "promoted" if promote else "not promoted", "mllm.reason": reason,
            "mllm.mean_accuracy": f"{mean['trained']:.6f}", "mllm.majority_accuracy": f"{mean['majority']:.6f}",
            "mllm.suite": evaluation.get("suite", "")}
    for key, value in mean.items():  # every other model the evaluation measured, beside it
        if key not in ("trained", "majority") and value is not None:
            tags[f"mllm.{key}_accuracy"] = f"{value:.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, v)
    return record


def promote(name: str, version: str, reason: str = "manual promotion") -> dict:
    """Move ``champion`` to ``version`` by hand (recorded as a tag)."""
    mlflow = tracking.connect_existing(f"registered model {name!r}")
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise RegistryError(f"registered model {name!r} has no version {version}") from None
    before = alias_version(name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "mllm.decision", "promoted (manual)")
    client.set_model_version_tag(name, str(version), "mllm.reason", reason)
    return {"name": name, "version": str(version), "previous": None if before is None else str(before.version)}


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:  # no such registered model yet
        return []
