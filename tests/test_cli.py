"""Bad input at the command line: one clear line, exit code 2, nothing written."""

import subprocess
import sys

import pytest
import yaml

from tests.training_helpers import raw_params


def _mllm(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "mllm.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["filter", "--generated", "nope"], "nope has no manifest.json: run `mllm generate`"),
    (["encode", "--filtered", "nope"], "nope/full holds no shards: run `mllm filter`"),
    (["train", "--corpus", "nope"], "no warmup corpus shards under nope/warmup: run `mllm encode` (full, warmup) or `mllm import-corpus"),
    (["train", "-S", "model.adapter=lora", "-S", "model.base=scratch"], "set model.adapter to 'full'"),
    (["train", "-S", "train.stages=[]"], "train.stages"),
])
def test_stage_input_errors(tmp_path, venv_env, args, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params()))
    res = _mllm(args, venv_env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, message", [
    (["generate", "-S", "generate=1", "-S", "generate.num_tasks=5"], "--set generate.num_tasks conflicts with --set generate"),
    (["generate", "-S", "generate.num_tasks=5", "-S", "generate=1"], "--set generate conflicts with the --set generate.*"),
    (["generate", "-S", "generate.num_tasks=5", "-S", "generate.num_tasks=6"], "--set generate.num_tasks is given twice"),
    (["predict", "--train", "a.csv", "--test", "b.csv", "--n-ensemble", "0"], "'--n-ensemble'"),
    (["predict", "--train", "a.csv", "--test", "b.csv", "--max-queries", "51"], "'--max-queries'"),
    (["predict", "--train", "a.csv", "--test", "b.csv", "--out", "."], "--out . is a directory"),
])
def test_option_errors_before_any_work(tmp_path, venv_env, args, message):
    """Conflicting -S keys and out-of-range options: exit 2 with the option named, nothing run or written."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params()))
    res = _mllm(args, venv_env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in " ".join(res.stderr.split()), res.stderr  # typer boxes and wraps its messages
    assert "Traceback" not in res.stderr and not (tmp_path / "data").exists()
