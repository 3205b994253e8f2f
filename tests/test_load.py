"""The default path holds on a busy machine: the whole `dvc repro` (each stage starting Prefect's temporary
API server) with two CPU-bound processes running beside it on the same cores."""

import json
import subprocess
import sys

import pytest

from tests.conftest import stop_process
from tests.test_dvc_pipeline import _copy_project, _run, _tiny


@pytest.mark.slow
def test_dvc_repro_completes_beside_two_cpu_hogs(tmp_path, venv_env):
    _copy_project(tmp_path)
    _tiny(tmp_path)
    venv_env.pop("PREFECT_API_URL", None)  # the embedded default: a temporary API server per stage
    venv_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        _run(["dvc", "repro"], tmp_path, venv_env)
        assert all(h.poll() is None for h in hogs)  # the load lasted the whole run
    finally:
        for h in hogs:
            stop_process(h, grace=5)
    assert json.loads((tmp_path / "data/train/train_summary.json").read_text())["complete"]
    assert json.loads((tmp_path / "metrics/registry.json").read_text())["version"] == "1"
