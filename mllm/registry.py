"""The MLflow model registry: model references, registration with a gated `champion`, manual promotion.

Every trained model is logged as an MLflow pyfunc model (``mllm.pyfunc``; the Hugging Face weights and
tokenizer are its artifact ``hf``) and registered as a new version of a registered model with the alias
``candidate``. The alias ``champion`` moves to it only when its mean accuracy over the evaluation suite beats
the current champion's (measured in the same evaluation run, on the same splits) and the majority class;
the decision and its figures are tags of the version.

Model references accepted everywhere (CLI, ``MLLMClassifier``, evaluation): a local directory (a trained
model or a base), ``runs:/<run id>/<path>``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``, or
the short ``<name>@<alias>`` / ``<name>/<version>``.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from mllm.errors import InputError

DEFAULT_NAME = "mllm"
CANDIDATE, CHAMPION = "candidate", "champion"
HF_ARTIFACT = "hf"  # the pyfunc model's artifact key holding the Hugging Face model dir
_SHORT = re.compile(r"^[A-Za-z0-9_.\-]+(@[A-Za-z0-9_\-]+|/\d+)$")


class RegistryError(InputError):
    """A model reference that cannot be resolved, or a registry operation that cannot be done."""


def _mlflow():
    import mlflow

    from mllm import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow


def model_uri(ref: str) -> str | None:
    """The MLflow URI for a registry/run reference, or None for a local directory."""
    if ref.startswith(("models:/", "runs:/")):
        return ref
    if Path(ref).exists():
        return None
    if _SHORT.match(ref):
        return f"models:/{ref}"
    return None


_downloads: dict[str, Path] = {}


def resolve(ref: str) -> Path:
    """A local directory holding the Hugging Face model (+ tokenizer) that ``ref`` names."""
    uri = model_uri(ref)
    if uri is None:
        path = Path(ref)
        if not path.is_dir():
            raise RegistryError(f"model {ref!r}: no such directory, and not a models:/ or runs:/ reference")
        return path
    mlflow = _mlflow()
    if uri.startswith("models:/"):
        uri = version_uri(uri)  # pin an alias to its version, so a cache entry never goes stale
    if uri in _downloads:
        return _downloads[uri]
    dst = Path(tempfile.mkdtemp(prefix="mllm-model-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as err:  # report the reference, not a stack
        raise RegistryError(f"model {ref!r} cannot be loaded from the MLflow store at "
                            f"{mlflow.get_tracking_uri()}: {err}") from None
    found = _hf_dir(local)
    if not ((found / "config.json").is_file() or (found / "adapter_config.json").is_file()):
        raise RegistryError(f"model {ref!r} ({uri}) holds no Hugging Face model")
    _downloads[uri] = found
    return found


def _hf_dir(local: Path) -> Path:
    """The Hugging Face dir inside a downloaded pyfunc model (its ``hf`` artifact), or ``local`` itself."""
    if not (local / "MLmodel").is_file():
        return local
    from mlflow.models import Model

    artifacts = Model.load(str(local / "MLmodel")).flavors.get("python_function", {}).get("artifacts", {})
    path = artifacts.get(HF_ARTIFACT, {}).get("path")
    return local / path if path else local


def version_uri(uri: str) -> str:
    """``models:/name@alias`` -> ``models:/name/<version>``; other URIs unchanged."""
    m = re.match(r"^models:/([^@/]+)@(.+)$", uri)
    if not m:
        return uri
    mv = alias_version(m.group(1), m.group(2))
    if mv is None:
        raise RegistryError(f"registered model {m.group(1)!r} has no alias {m.group(2)!r} in the MLflow store at "
                            f"{_mlflow().get_tracking_uri()} (run `dvc repro` to train, evaluate and register one; a version "
                            "that did not win the gate is `candidate`, and `mllm promote <version>` overrides)")
    return f"models:/{m.group(1)}/{mv.version}"


def alias_version(name: str, alias: str):
    """The model version behind ``name@alias``, or None."""
    mlflow = _mlflow()
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def weights_digest(model_dir: Path) -> str:
    """sha256 over the weight files: the same weights are registered once."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


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
    from mllm.pyfunc import log_pyfunc

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    model_dir = Path(model_dir)
    digest = weights_digest(model_dir)
    existing = [v for v in _versions(client, name) if v.tags.get("mllm.weights_sha256") == digest]
    if existing:
        mv = existing[0]
    else:
        from mllm import tracking

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
    for key in ("champion", "base", "knn", "random_forest", "xgboost"):
        if mean.get(key) is not None:
            tags[f"mllm.{key}_accuracy"] = f"{mean[key]:.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, v)
    return record


def promote(name: str, version: str, reason: str = "manual promotion") -> dict:
    """Move ``champion`` to ``version`` by hand (recorded as a tag)."""
    mlflow = _mlflow()
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
