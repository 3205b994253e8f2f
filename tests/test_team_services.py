"""The team setup for real: PostgreSQL (the distribution's) holding MLflow's and Prefect's databases, an
MLflow tracking server with served artifacts and a Prefect server on it, all on loopback, started the way
docker/compose.yaml starts them. Against them: a tiny pipeline, the served deployment, two pipelines at
once from two checkouts, a restart of everything, and a search for the database password in what the
pipelines logged and recorded."""

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import stop_process
from tests.team_services import Postgres, mlflow_server, prefect_server
from tests.test_dvc_pipeline import _copy_project, _tiny

STAGES = {"generate", "filter", "encode", "train", "evaluate"}  # the stages that log an MLflow run


def _api(port: int, path: str, body: dict) -> list | dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def _pipeline(checkout: Path, env: dict) -> subprocess.Popen:
    log = (checkout / "pipeline.log").open("w")
    return subprocess.Popen(["mllm", "pipeline", "--repo", str(checkout)], cwd=checkout, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, checkout: Path) -> str:
    proc.wait(timeout=1500)
    text = (checkout / "pipeline.log").read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _stage_runs(client) -> dict[str, str]:
    """run id -> its stage, of every run in the mllm experiment."""
    exp = client.get_experiment_by_name("mllm")
    return {r.info.run_id: r.data.tags.get("mllm.stage") for r in client.search_runs([exp.experiment_id], max_results=1000)}


def _registry(client) -> dict:
    versions = {str(v.version): v for v in client.search_model_versions("name='mllm'")}
    try:
        champion = str(client.get_model_version_by_alias("mllm", "champion").version)
    except mlflow.exceptions.MlflowException:
        champion = None
    return {"versions": {k: dict(v.tags) for k, v in versions.items()}, "champion": champion}


@pytest.mark.slow
def test_team_services_on_postgresql(tmp_path, venv_env):
    password = secrets.token_urlsafe(18)
    pgroot = Path(tempfile.mkdtemp(prefix="mllm-pg-"))  # outside tmp_path: the postgres user must reach it
    pg = Postgres(pgroot, password)
    servers = []
    serve = None
    try:
        pg.init()
        mlf, pfs = mlflow_server(pg, tmp_path, venv_env), prefect_server(pg, tmp_path, venv_env)
        servers = [mlf, pfs]
        for s in servers:
            s.start()
        # what a team member sets: the servers' addresses, and no database credentials at all
        env = {**venv_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlf.port}",
               "PREFECT_API_URL": f"http://127.0.0.1:{pfs.port}/api", "PREFECT_HOME": str(tmp_path / "prefect-client")}
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])

        # one tiny pipeline: every stage's run on the server, the model registered with a decision
        first = tmp_path / "first"
        first.mkdir()
        _copy_project(first)
        _tiny(first)
        _finish(_pipeline(first, env), first)
        assert STAGES <= set(_stage_runs(client).values())
        reg = _registry(client)
        assert list(reg["versions"]) == ["1"] and reg["versions"]["1"]["mllm.reason"]
        assert (reg["champion"] == "1") == (reg["versions"]["1"]["mllm.decision"] == "promoted")

        # the scheduled deployment on the Prefect server
        log = (tmp_path / "serve.log").open("w")
        serve = subprocess.Popen(["mllm", "serve", "--params", str(first / "params.yaml"), "--cron", "15 3 * * *",
                                  "--repo", str(first)], cwd=first, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline, found = time.time() + 300, []
        while not found:
            assert serve.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
            found = _api(pfs.port, "deployments/filter", {"deployments": {"name": {"any_": ["mllm-pipeline"]}}})
        assert [s["schedule"]["cron"] for s in found[0]["schedules"]] == ["15 3 * * *"]
        stop_process(serve)

        # two pipelines at once from two checkouts (other params): both complete; consistent registry
        checkouts = []
        for name, seed in (("second", 7), ("third", 8)):
            c = tmp_path / name
            c.mkdir()
            _copy_project(c)
            params = _tiny(c)
            params["seed"] = seed
            (c / "params.yaml").write_text(json.dumps(params))
            checkouts.append(c)
        procs = [_pipeline(c, env) for c in checkouts]
        logs = [_finish(p, c) for p, c in zip(procs, checkouts, strict=True)] + [(first / "pipeline.log").read_text()]
        reg = _registry(client)
        assert sorted(reg["versions"]) == ["1", "2", "3"]
        assert all(t.get("mllm.decision") in ("promoted", "not promoted") and t.get("mllm.reason")
                   for t in reg["versions"].values())
        promoted = sorted((int(v) for v, t in reg["versions"].items() if t["mllm.decision"] == "promoted"))
        assert (reg["champion"] is None) == (not promoted)
        if promoted:  # exactly one champion: the last version promoted
            assert reg["champion"] == str(promoted[-1])
        runs = _stage_runs(client)
        for stage in STAGES:  # no lost writes: each pipeline's run of each stage
            assert list(runs.values()).count(stage) == 3, stage
        flow_runs = _api(pfs.port, "flow_runs/count", {})

        # stop and restart the database and both servers: nothing is lost
        for s in servers:
            s.stop()
        pg.stop()
        pg.start()
        for s in servers:
            s.start()
        assert _registry(client) == reg
        assert _stage_runs(client) == runs
        assert _api(pfs.port, "flow_runs/count", {}) == flow_runs >= 3
        assert _api(pfs.port, "deployments/filter", {"deployments": {"name": {"any_": ["mllm-pipeline"]}}})

        # the password is nowhere in what the pipelines printed or recorded
        recorded = json.dumps([dict(r.data.params) | dict(r.data.tags)
                               for r in client.search_runs([e.experiment_id for e in client.search_experiments()])])
        assert password not in recorded
        assert not [i for i, text in enumerate(logs) if password in text]
        assert all("registered under the Prefect server's lock" in text for text in logs)
        for log in ("serve.log", "mlflow.log", "prefect.log"):  # nor the servers', which hold it
            assert password not in (tmp_path / log).read_text(), log
    finally:
        stop_process(serve)
        for s in servers:
            s.stop()
        pg.stop()
        shutil.rmtree(pgroot, ignore_errors=True)


LOCK_HOLDER = """
import sys, time
from flows.register import registry_lock
with registry_lock("mllm") as locked:
    start = time.time()
    time.sleep(2)
    print("HELD", locked, start, time.time(), flush=True)
"""


@pytest.mark.slow
def test_registrations_take_turns_on_a_prefect_server(tmp_path, venv_env):
    """Two processes that register at the same moment hold the registry lock one after the other."""
    from tests.team_services import Server, free_port

    port = free_port()
    env = {**venv_env, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = Server("prefect", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                    tmp_path, "/api/health", port)
    try:
        server.start()
        procs = [subprocess.Popen([sys.executable, "-c", LOCK_HOLDER], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        held = []
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0
            line = next(ln for ln in out.splitlines() if ln.startswith("HELD")).split()
            assert line[1] == "True"
            held.append((float(line[2]), float(line[3])))
        (_, first_end), (second_start, _) = sorted(held)
        assert first_end <= second_start  # no overlap
    finally:
        server.stop()
