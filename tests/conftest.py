"""Test isolation: nothing global is started or written; Prefect and MLflow live in temp dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Before any prefect import: a private PREFECT_HOME, no analytics, no API configured from the user's profile.
_PREFECT_HOME = Path(os.environ.setdefault("MLLM_TEST_TMP", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"mllm-tests-{os.getpid()}")))
(_PREFECT_HOME / "prefect").mkdir(parents=True, exist_ok=True)
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME / "prefect")
os.environ["PREFECT_PROFILES_PATH"] = str(_PREFECT_HOME / "prefect" / "profiles.toml")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_ENABLE_TELEMETRY"] = "false"
os.environ["DO_NOT_TRACK"] = "1"


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, monkeypatch):
    """Every test gets its own MLflow store, so runs never leak into the repo's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (Prefect's own test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def venv_env():
    """Environment for subprocesses: the test interpreter's bin dir first on PATH (for `mllm`, `dvc`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def stop_process(proc: subprocess.Popen | None, grace: float = 60) -> None:
    """Stop a server a test started: SIGTERM (to its whole process group when it leads one, so workers go
    too), then SIGKILL if it is still up after ``grace`` seconds: nothing may outlive the test."""
    if proc is None or proc.poll() is not None:
        return
    group = os.getpgid(proc.pid) == proc.pid

    def send(sig):
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=30)


def params_dict(**sections) -> dict:
    """The repo's params.yaml (the one place defaults live) with ``sections`` deep-merged on top."""
    from mllm.core.params import deep_merge

    return deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), sections)


def section(name: str, **values):
    """One validated params section: params.yaml's, with ``values`` merged on top."""
    from mllm.core.params import parse_params

    return getattr(parse_params(params_dict(**{name: values})), name)
