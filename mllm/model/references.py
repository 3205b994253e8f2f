"""Model references: what names a trained model or a base, resolved to a local Hugging Face directory.

Accepted everywhere (CLI, ``MLLMClassifier``, evaluation, serving): a local directory (a trained model or a
base), ``runs:/<run id>/<path>``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``, or the short
``<name>@<alias>`` / ``<name>/<version>``. A registered model is an MLflow pyfunc model whose artifact ``hf``
holds the Hugging Face weights and tokenizer; resolving one downloads it from the tracking store (never from
the internet).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from mllm.core import tracking
from mllm.core.errors import InputError

DEFAULT_NAME = "mllm"  # the registered model the pipeline writes (evaluate.registered_model)
CANDIDATE, CHAMPION = "candidate", "champion"
DEFAULT_REF = f"{DEFAULT_NAME}@{CHAMPION}"  # what prediction uses when no model is named
HF_ARTIFACT = "hf"  # the pyfunc model's artifact key holding the Hugging Face model dir
_SHORT = re.compile(r"^[A-Za-z0-9_.\-]+(@[A-Za-z0-9_\-]+|/\d+)$")


class RegistryError(InputError):
    """A model reference that cannot be resolved, or a registry operation that cannot be done."""


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
    mlflow = tracking.connect_existing(f"model {ref!r}")
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
                            f"{tracking.connect().get_tracking_uri()} (run `dvc repro` to train, evaluate and register one; a version "
                            "that did not win the gate is `candidate`, and `mllm promote <version>` overrides)")
    return f"models:/{m.group(1)}/{mv.version}"


def alias_version(name: str, alias: str):
    """The model version behind ``name@alias``, or None."""
    mlflow = tracking.connect()
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
