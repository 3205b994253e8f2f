"""`dvc repro` on the real dvc.yaml, in a temporary copy of the project with tiny params."""

import json
import shutil
import subprocess

import mlflow
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "mllm", "flows", "models/tiny-base"]


def _copy_project(dst):
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dst / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


def _run(cmd, cwd, env, ok=True):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _tiny(tmp_path, **gen):
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["generate"].update(num_tasks=40, shard_size=16, n_workers=1, shots={"min": 16, "max": 96},
                              features={"min": 5, "max": 12}, queries=10, **gen)
    params["filter"].update(n_workers=1)
    params["encode"].update(n_workers=1, cutoff_len=1024)
    params["model"].update(base="scratch", adapter="full",
                           tiny={"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "kv_heads": 1,
                                 "max_positions": 1024})
    params["train"].update(stages=[{"name": "warmup", "corpus": "warmup", "lr": 1e-3, "epochs": 1, "max_steps": 2, "max_examples": None},
                                   {"name": "full", "corpus": "full", "lr": 1e-3, "epochs": 1, "max_steps": 2, "max_examples": None}],
                           grad_accum=2, checkpoint_every=1, snapshot_every=2)
    params["evaluate"].update(sklearn_datasets=["iris", "wine"], shots=[8, 16], seeds=[0], max_test=12,
                              baselines=["knn", "majority"], synthetic={"tasks": 3, "shots": 16, "queries": 5},
                              curve={"shots": 8, "max_test": 5, "synthetic_tasks": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return params


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_on_tiny_params(tmp_path, venv_env):
    _copy_project(tmp_path)
    params = _tiny(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    venv_env["MLFLOW_TRACKING_URI"] = uri

    _run(["dvc", "repro"], tmp_path, venv_env)
    gen = json.loads((tmp_path / "data/generated/manifest.json").read_text())
    assert gen["tasks"] == 40 and len(gen["shards"]) == 3
    filt = json.loads((tmp_path / "metrics/filter.json").read_text())
    assert filt["tasks"] == 40 and 0 < filt["kept"] <= 40 and sum(filt["rejected_by_rule"].values()) == 40 - filt["kept"]
    enc = json.loads((tmp_path / "metrics/encode.json").read_text())
    assert enc["full"]["sequences"] + sum(enc["full"]["skipped"].values()) == filt["kept"]
    assert enc["full"]["max_tokens"] <= 1024
    assert (tmp_path / "data/tokenizer/tokenizer.json").is_file()
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"generate", "filter", "tokenizer", "plant", "encode", "train", "evaluate", "register"}
    assert (tmp_path / "data/base/model.safetensors").read_bytes() == (ROOT / "models/tiny-base/model.safetensors").read_bytes()
    summary = json.loads((tmp_path / "data/train/train_summary.json").read_text())
    assert summary["complete"] and summary["steps_this_run"] == 4
    assert (tmp_path / "data/train/model/model.safetensors").is_file()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["mllm"])
    assert set(runs["tags.mllm.stage"]) == {"generate", "filter", "encode", "train", "evaluate"}
    train_run = json.loads((tmp_path / "data/train/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(train_run, "loss")) == 4
    assert any(a.path == "model" for a in client.list_artifacts(train_run))
    metrics = _run(["dvc", "metrics", "show", "--json"], tmp_path, venv_env).stdout
    assert "kept_share" in metrics and "mean_accuracy" in metrics

    # evaluate: every model on the same (table, shots, seed) rows; curves for DVC and as PNG
    ev = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert ev["tables"] == ["iris", "wine"] and set(ev["mean_accuracy"]) == {"trained", "knn", "majority"}
    assert set(ev["accuracy_by_shots"]["trained"]) == {"8", "16"}
    assert ev["synthetic"]["tasks"] == 3 and set(ev["synthetic"]["accuracy"]) == {"trained", "knn", "majority"}
    for png in ("learning_curve.png", "learning_curve_by_table.png"):
        assert (tmp_path / "data/evaluate" / png).read_bytes()[:4] == b"\x89PNG"
    # the training curve: a snapshot every 2 steps, the last the trained model, tokens counted on
    curve = ev["training_curve"]
    assert [p["step"] for p in curve] == [2, 4] and 0 < curve[0]["tokens"] < curve[1]["tokens"] == summary["tokens_total"]
    for p in curve:
        assert 0 <= p["synthetic_accuracy"] <= 1 and 0 <= p["tables_accuracy"] <= 1 and p["synthetic_label_loss"] > 0
    assert list(pd.read_csv(tmp_path / "plots/training_curve.csv").tokens) == [p["tokens"] for p in curve]
    ev_run = runs[runs["tags.mllm.stage"] == "evaluate"].run_id.iloc[0]
    assert [m.step for m in client.get_metric_history(ev_run, "curve.synthetic_accuracy")] == [p["tokens"] for p in curve]
    plots = _run(["dvc", "plots", "show", "--json"], tmp_path, venv_env).stdout
    assert "learning_curve.csv" in plots and "training_curve.csv" in plots and "training_label_loss" in plots
    # register: a version with alias candidate; champion only as the decision says
    reg = json.loads((tmp_path / "metrics/registry.json").read_text())
    mv = client.get_model_version_by_alias("mllm", "candidate")
    assert str(mv.version) == reg["version"] == "1" and mv.run_id == train_run
    assert mv.tags["mllm.decision"] == ("promoted" if reg["promoted"] else "not promoted")
    promoted = reg["mean_accuracy"] > reg["majority_accuracy"]
    assert reg["promoted"] == promoted
    if promoted:  # a first version that beats the majority class becomes champion ...
        assert str(client.get_model_version_by_alias("mllm", "champion").version) == "1"
        assert reg["champion_version"] == "1" and reg["reason"].startswith("first champion")
    else:  # ... and one that does not leaves the registry without one
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias("mllm", "champion")
        assert reg["champion_version"] is None and "does not beat the majority class" in reg["reason"]

    assert "didn't change" in _run(["dvc", "repro"], tmp_path, venv_env).stdout

    # the same pipeline as one Prefect flow: every stage a task run, only changed stages rerun
    res = _run(["mllm", "pipeline", "--repo", str(tmp_path)], tmp_path, venv_env)
    assert "generate: up to date" in res.stdout and "register: up to date" in res.stdout
    params["evaluate"]["seeds"] = [1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    res = _run(["mllm", "pipeline", "--repo", str(tmp_path)], tmp_path, venv_env)
    assert "train: up to date, evaluate: ran, register: ran" in res.stdout
    assert "Running stage 'evaluate'" in res.stderr + res.stdout

    # experiments: dvc exp run -S on the committed pipeline, then exp show
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(git + ["add", "-A"], tmp_path, venv_env)
    _run(git + ["commit", "-qm", "pipeline"], tmp_path, venv_env)
    _run(["dvc", "exp", "run", "-S", "evaluate.max_test=8", "-n", "fewer-test-rows"], tmp_path, venv_env)
    shown = _run(["dvc", "exp", "show", "--json"], tmp_path, venv_env).stdout
    assert "fewer-test-rows" in shown

    first = (tmp_path / "data/generated/shard-00000.parquet").read_bytes()

    params["generate"]["num_tasks"] = 20
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = _run(["dvc", "repro", "generate"], tmp_path, venv_env).stdout
    assert "Running stage 'generate'" in out
    gen = json.loads((tmp_path / "data/generated/manifest.json").read_text())
    assert gen["tasks"] == 20 and len(gen["shards"]) == 2
    # task i depends only on (seed, i): the first shard is byte-identical after the change
    assert (tmp_path / "data/generated/shard-00000.parquet").read_bytes() == first


@pytest.mark.slow
def test_filter_sanity_band_fails_the_stage_with_gx_report(tmp_path, venv_env):
    _copy_project(tmp_path)
    params = _tiny(tmp_path)
    params["filter"]["kept_share"] = {"min": 0.99, "max": 1.0}  # impossible: noise tasks exist
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    venv_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run(["dvc", "repro", "filter"], tmp_path, venv_env, ok=False)
    assert res.returncode != 0
    assert "Great Expectations checks failed for filter report" in res.stderr
    assert "expect_column_mean_to_be_between" in res.stderr
    assert not (tmp_path / "data/filtered").exists()
