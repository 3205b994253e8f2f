"""`dvc repro` on the real dvc.yaml, in a temporary copy of the project with tiny params."""

import json
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "mllm", "flows"]


def _copy_project(dst):
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dst / ".dvc" / "config")


def _run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


@pytest.mark.slow
def test_dvc_repro_generate_on_tiny_params(tmp_path, venv_env):
    _copy_project(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["generate"].update(num_tasks=20, shard_size=8, n_workers=1, shots={"min": 8, "max": 32}, queries=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    venv_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"

    _run(["dvc", "repro", "generate"], tmp_path, venv_env)
    manifest = json.loads((tmp_path / "data/generated/manifest.json").read_text())
    assert manifest["tasks"] == 20 and len(manifest["shards"]) == 3
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert lock["stages"]["generate"]["params"]["params.yaml"]["generate"]["num_tasks"] == 20

    assert "didn't change" in _run(["dvc", "repro", "generate"], tmp_path, venv_env)
    first = (tmp_path / "data/generated/shard-00000.parquet").read_bytes()

    params["generate"]["num_tasks"] = 12
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = _run(["dvc", "repro", "generate"], tmp_path, venv_env)
    assert "Running stage 'generate'" in out
    manifest = json.loads((tmp_path / "data/generated/manifest.json").read_text())
    assert manifest["tasks"] == 12 and len(manifest["shards"]) == 2
    # task i depends only on (seed, i): the first shard is byte-identical after the change
    assert (tmp_path / "data/generated/shard-00000.parquet").read_bytes() == first
