"""Reliability: a pipeline killed during any stage, rerun, ends with the outputs of an uninterrupted run."""

import os
import signal
import subprocess
import time

import pytest
import yaml

from tests.test_dvc_pipeline import _copy_project, _run, _tiny

DATA_STAGES = ("generate", "filter", "tokenizer", "encode")


def _outs(root) -> dict:
    """Each deterministic stage's output hashes from dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {s: [(o["path"], o["md5"]) for o in lock[s]["outs"]] for s in DATA_STAGES}


def _kill_during(stage: str, cwd, env, after: float = 1.5) -> None:
    """Start `dvc repro`, SIGKILL its whole process group `after` seconds into ``stage``."""
    proc = subprocess.Popen(["dvc", "repro"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 600
    for line in proc.stdout:
        if f"Running stage '{stage}'" in line:
            time.sleep(after)
            break
        assert time.time() < deadline
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_during_each_stage_then_rerun_matches_an_uninterrupted_run(tmp_path, venv_env):
    ref, work = tmp_path / "ref", tmp_path / "work"
    for root in (ref, work):
        root.mkdir()
        _copy_project(root)
        _tiny(root)
    venv_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ref / 'mlflow.db'}"
    _run(["dvc", "repro"], ref, venv_env)

    venv_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    for stage in ("generate", "filter", "encode", "train", "evaluate"):
        _kill_during(stage, work, venv_env)
        lock = work / "dvc.lock"
        if lock.is_file():  # the killed stage never reached the lock file
            assert stage not in yaml.safe_load(lock.read_text())["stages"]
    _run(["dvc", "repro"], work, venv_env)
    assert _outs(work) == _outs(ref)
    assert (work / "metrics/registry.json").is_file()
