import subprocess
import sys

import mlflow
import pytest
import yaml

from mllm.data.shards import read_shard
from tests.conftest import params_dict

TINY = {
    "seed": 5,
    "generate": {
        "num_tasks": 30,
        "shard_size": 8,
        "n_workers": 1,
        "shots": {"min": 8, "max": 48},
        "features": {"min": 5, "max": 10},
        "queries": 10,
    },
}


def _params(tmp_path, **gen):
    raw = params_dict(seed=TINY["seed"], generate={**TINY["generate"], **gen})
    path = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.slow
def test_flow_bytes_identical_across_worker_counts_and_logged(tmp_path, prefect_harness):
    from flows.generate import run_generate

    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    m1 = run_generate(_params(tmp_path, n_workers=1), str(out1))
    m2 = run_generate(_params(tmp_path, n_workers=2), str(out2))
    f1, f2 = _files(out1), _files(out2)
    assert sorted(f1) == ["manifest.json"] + [f"shard-{i:05d}.parquet" for i in range(4)]
    f1.pop("manifest.json"), f2.pop("manifest.json")  # manifests differ only in n_workers
    assert f1 == f2
    assert m1["tasks"] == m2["tasks"] == 30 and m1["checks"]["expectations_failed"] == 0
    assert sum(read_shard(out1 / n).num_rows for n in f1) == 30

    runs = mlflow.search_runs(experiment_names=["mllm"], filter_string="tags.`mllm.stage` = 'generate'")
    assert len(runs) == 2
    assert set(runs["metrics.tasks"]) == {30.0}
    assert set(runs["params.generate.n_workers"]) == {"1", "2"}
    assert (runs["metrics.gx_expectations_failed"] == 0).all()
    assert (runs["metrics.tasks_per_s"] > 0).all()


@pytest.mark.slow
def test_flow_fails_on_bad_data_and_leaves_no_output(tmp_path, prefect_harness, monkeypatch):
    import numpy as np

    from flows.generate import run_generate
    from mllm.data import generate as gen
    from mllm.data.checks import DataCheckError

    good = gen.generate_task

    def nan_task(seed, i, p):
        t = good(seed, i, p)
        if i == 9:
            t.X[0, 0] = np.nan
        return t

    monkeypatch.setattr(gen, "generate_task", nan_task)
    out = tmp_path / "gen"
    with pytest.raises(DataCheckError, match="n_nonfinite"):
        run_generate(_params(tmp_path), str(out))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gen")], "temp dirs cleaned up"


def test_cli_bad_params_fail_before_work(tmp_path, venv_env):
    out = tmp_path / "never"
    res = subprocess.run(
        [sys.executable, "-m", "mllm.cli", "generate", "--params", _params(tmp_path), "--out", str(out),
         "-S", "generate.classes.max=12"],
        capture_output=True, text=True, env=venv_env, timeout=120,
    )
    assert res.returncode == 2
    assert "generate.classes" in res.stderr and "max 12 > 10" in res.stderr
    assert "prefect" not in res.stderr.lower(), "fails before Prefect starts"
    assert not out.exists()


def test_cli_rejects_malformed_set(tmp_path, venv_env):
    res = subprocess.run(
        [sys.executable, "-m", "mllm.cli", "generate", "--params", _params(tmp_path), "-S", "generate.num_tasks"],
        capture_output=True, text=True, env=venv_env, timeout=120,
    )
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr


@pytest.mark.slow
def test_dask_runner_gives_identical_bytes(tmp_path, prefect_harness):
    """Generation and filtering on a 2-worker local Dask cluster match the single-process run."""
    from flows.filter import run_filter
    from flows.generate import run_generate

    outs = {}
    for name, runner in (("local", {"kind": "process"}), ("dask", {"kind": "dask"})):
        raw = params_dict(seed=TINY["seed"], runner=runner,
                          generate={**TINY["generate"], "n_workers": 1 if name == "local" else 2},
                          filter={"n_workers": 1 if name == "local" else 2, "kept_share": {"min": 0.0, "max": 1.0}})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        run_generate(str(path), str(tmp_path / f"gen-{name}"))
        run_filter(str(path), str(tmp_path / f"gen-{name}"), str(tmp_path / f"filt-{name}"), metrics=None)
        outs[name] = {
            p.relative_to(tmp_path / f"{stage}-{name}").as_posix(): p.read_bytes()
            for stage in ("gen", "filt") for p in sorted((tmp_path / f"{stage}-{name}").rglob("*.parquet"))
        }
    assert len(outs["local"]) == 4 + 4 + 4 + 1  # generated, kept, warm-up shards and the report
    assert outs["local"] == outs["dask"]


def test_gather_returns_results_in_submission_order_whatever_finishes_first():
    """A stage's summary sums floats over its shards: in completion order its last digit followed the scheduler."""
    import time

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.runners import gather

    @task
    def late(i: int) -> int:
        time.sleep(0.3 * (3 - i))   # the first submitted finishes last
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def fan_out() -> list:
        return gather([late.submit(i) for i in range(4)], desc="test")

    assert fan_out() == [0, 1, 2, 3]
