"""Real team services on loopback for the tests: PostgreSQL from the distribution's packages (its databases
made by docker/postgres-init.sql, as the postgres image does), an MLflow tracking server on it with served
artifacts, and a Prefect server on it. Each is started the way docker/compose.yaml starts it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, stop_process

USER = "mllm"  # docker/compose.yaml: POSTGRES_USER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _installed() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:  # Debian/Ubuntu keep each version's programs under /usr/lib/postgresql/<v>/bin
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pg_bin() -> Path:
    """The distribution's PostgreSQL programs, installed from its packages first on a fresh machine (as
    root, with apt-get: what a CI box is)."""
    found = _installed()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"], check=True,
                       env=env, capture_output=True)
        found = _installed()
    if found is None:
        raise RuntimeError("PostgreSQL is not installed and cannot be installed here: apt-get install postgresql")
    return found


def wait_for(url: str, proc: subprocess.Popen, what: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{what} did not start"
            time.sleep(1)


class Postgres:
    """A PostgreSQL cluster in ``root`` on a loopback port; superuser ``mllm`` with ``password``, database
    ``mlflow`` (POSTGRES_DB) and what docker/postgres-init.sql creates."""

    def __init__(self, root: Path, password: str):
        self.root, self.password, self.port = root, password, free_port()
        self.data = root / "pgdata"
        self.bin = pg_bin()
        # initdb and postgres refuse to run as root: as root, run them as the distribution's postgres user
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str, env: dict | None = None) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, text=True, env=env, cwd="/")

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                  "--auth=scram-sha-256", "-E", "UTF8")
        pwfile.unlink()
        self.start()
        env = {**os.environ, "PGPASSWORD": self.password}
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-v", "ON_ERROR_STOP=1"]
        subprocess.run([*psql, "-d", "postgres", "-c", "CREATE DATABASE mlflow OWNER mllm;"], check=True, env=env,
                       capture_output=True)
        subprocess.run([*psql, "-d", "mlflow", "-f", str(ROOT / "docker" / "postgres-init.sql")], check=True,
                       env=env, capture_output=True)

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                  "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, driver: str, database: str) -> str:
        return f"postgresql+{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"


class Server:
    """A server process started from a command line, logging to a file, on a loopback port."""

    def __init__(self, name: str, cmd: list[str], env: dict, cwd: Path, health: str, port: int):
        self.name, self.cmd, self.env, self.cwd, self.health, self.port = name, cmd, env, cwd, health, port
        self.proc: subprocess.Popen | None = None
        self.log = cwd / f"{name}.log"

    def start(self, seconds: float = 240) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(f"http://127.0.0.1:{self.port}{self.health}", self.proc, self.name, seconds)

    def stop(self) -> None:
        stop_process(self.proc, grace=30)


def mlflow_server(pg: Postgres, root: Path, env: dict) -> Server:
    """docker/compose.yaml's mlflow command, on loopback."""
    port = free_port()
    cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
           "--backend-store-uri", pg.url("psycopg2", "mlflow"),
           "--artifacts-destination", str(root / "mlartifacts"), "--serve-artifacts",
           "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"]
    return Server("mlflow", cmd, env, root, "/health", port)


def prefect_server(pg: Postgres, root: Path, env: dict) -> Server:
    """docker/compose.yaml's prefect command, on loopback."""
    port = free_port()
    env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": pg.url("asyncpg", "prefect"),
           "PREFECT_HOME": str(root / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return Server("prefect", cmd, env, root, "/api/health", port)
