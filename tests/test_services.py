"""Team services: the project logs and registers through a real MLflow server; one pipeline per checkout."""

import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from mllm.core import tracking
from mllm.model.references import resolve
from mllm.registry.promotion import register
from tests.conftest import ROOT, stop_process
from tests.team_services import free_port, wait_for
from tests.training_helpers import save_tiny_model


@pytest.mark.slow
def test_logs_and_registers_through_an_mlflow_server(tmp_path, monkeypatch, venv_env):
    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts"],
        cwd=tmp_path, env=venv_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server, "MLflow server", 120)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.chdir(tmp_path)
        with tracking.run("generate") as run:
            run.log_metric("tasks", 7)
        record = register(save_tiny_model(tmp_path / "m"), {"mean_accuracy": {"trained": 0.6, "majority": 0.5}})
        assert record["promoted"] and record["version"] == "1"
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        runs = mlflow.search_runs(experiment_names=["mllm"])
        assert 7 in runs["metrics.tasks"].tolist()
        assert str(client.get_model_version_by_alias("mllm", "champion").version) == "1"
        assert (resolve("mllm@champion") / "model.safetensors").is_file()  # artifacts served by the server
        assert (tmp_path / "artifacts").is_dir()
    finally:
        stop_process(server, grace=30)


def test_one_pipeline_at_a_time(tmp_path):
    import fcntl

    from flows.pipeline import LOCK, pipeline_lock

    def free() -> bool:  # what a second pipeline would find: another open of the lock file
        with (tmp_path / LOCK).open("w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fh, fcntl.LOCK_UN)
            return True

    with pipeline_lock(tmp_path):
        assert not free()
    assert free()
    with pipeline_lock(tmp_path):  # released: the next pipeline takes it
        assert not free()


def test_serve_rejects_a_bad_cron(tmp_path):
    from typer.testing import CliRunner

    from mllm.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\ngenerate: {num_tasks: 4, shard_size: 4}\npipeline: {cron: 'every night'}\n")
    res = CliRunner().invoke(app, ["serve", "--params", str(params)])
    assert res.exit_code == 2 and "cron needs 5 fields" in res.output


@pytest.mark.slow
def test_serve_registers_the_scheduled_pipeline_on_a_prefect_server(tmp_path, venv_env):
    """`prefect server start` + `mllm serve`: the deployment exists with the cron schedule from params."""
    import json

    port = free_port()
    venv_env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                    PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, env=venv_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    serve = None
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", server, "Prefect server", 180)
        deadline = time.time() + 300
        log = tmp_path / "serve.log"  # a file, not a pipe: nothing unread can stall the process
        with log.open("w") as out:
            serve = subprocess.Popen(["mllm", "serve", "--params", str(ROOT / "params.yaml"), "--cron", "15 3 * * *",
                                      "--repo", str(tmp_path)], cwd=tmp_path,
                                     env=venv_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        body = json.dumps({"deployments": {"name": {"any_": ["mllm-pipeline"]}}}).encode()
        while True:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/deployments/filter", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                found = json.loads(urllib.request.urlopen(req, timeout=30).read())
            except OSError:  # a loaded machine: the server answers late; the deadline decides
                found = []
            if found:
                break
            assert serve.poll() is None and time.time() < deadline, \
                f"deployment never appeared; mllm serve said:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        schedules = [s["schedule"].get("cron") for s in found[0]["schedules"]]
        assert schedules == ["15 3 * * *"] and found[0]["parameters"]["repo"] == str(tmp_path)
    finally:
        stop_process(serve)
        stop_process(server)


@pytest.mark.parametrize("env, expected", [({}, 180), ({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"}, 45)])
def test_the_temporary_prefect_server_gets_time_to_start(venv_env, env, expected):
    """Stage commands give Prefect's temporary API server minutes, not 20 s, to start on a busy machine
    (one stage failed that way with the test suite beside it); a user's own setting is kept."""
    venv_env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    code = ("import flows.generate; from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s;"
            " print(s.value())")
    res = subprocess.run([sys.executable, "-c", code], env={**venv_env, **env}, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str(expected)
