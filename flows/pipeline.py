"""The whole pipeline as one Prefect flow: each DVC stage is a task run (``dvc repro --single-item``, so
only changed stages rerun), with the stage's log, retries where a rerun helps, and a summary artifact
(metrics and the promotion decision). ``mllm serve`` registers it with the cron schedule from params."""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows.runners import api_shared_with_subprocesses
from mllm.core.errors import StageFailed

STAGES = ("generate", "filter", "tokenizer", "plant", "encode", "train", "evaluate", "register")  # dvc.yaml's
# A rerun resumes training from its last checkpoint and retries a registry write; data stages are
# deterministic, so retrying them only helps against a transient failure (a killed worker).
RETRIES = {"train": 2, "register": 2}
LOCK = Path(".dvc") / "tmp" / "mllm-pipeline.lock"  # in the checkout: one pipeline at a time there


class PipelineFailed(StageFailed):
    """A DVC stage of the pipeline failed (its log is in the task run)."""


@contextlib.contextmanager
def pipeline_lock(repo: Path) -> Iterator[None]:
    """One pipeline at a time per checkout: a second run waits here, then finds its stages up to date."""
    path = repo / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@task(name="stage", task_run_name="{stage}", cache_policy=NONE, retry_delay_seconds=5)
def dvc_stage(stage: str, repo: str) -> str:
    """``dvc repro --single-item <stage>``, its output streamed into this task run's log."""
    logger = get_run_logger()
    proc = subprocess.Popen(["dvc", "repro", "--single-item", stage], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=_env_with_venv())
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
            tail = (tail + [line])[-30:]
    if proc.wait() != 0:
        raise PipelineFailed(f"stage {stage} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return "up to date" if any("didn't change" in t for t in tail) else "ran"


def _env_with_venv() -> dict:
    import os

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def summary_markdown(repo: Path, states: dict[str, str]) -> str:
    lines = ["# mllm pipeline", "", "| stage | state |", "|---|---|"]
    lines += [f"| {s} | {states.get(s, 'not run')} |" for s in STAGES]
    ev = repo / "metrics" / "evaluate.json"
    if ev.is_file():
        e = json.loads(ev.read_text())
        lines += ["", f"## Mean accuracy over {len(e['tables'])} tables", "", "| model | accuracy |", "|---|---|"]
        for m, v in sorted(e["mean_accuracy"].items(), key=lambda kv: -(kv[1] or 0)):
            lines.append(f"| {m} | {v:.4f} |")
        if "quality_bar" in e:
            q = e["quality_bar"]
            lines.append(f"\nAt {q['shots']} shots: {100 * (q['lift_over_majority'] or 0):+.1f} points over the "
                         f"majority class; curve {'rising' if q['rising'] else 'not rising'}.")
    reg = repo / "metrics" / "registry.json"
    if reg.is_file():
        r = json.loads(reg.read_text())
        decision = "promoted to champion" if r["promoted"] else "not promoted"
        lines += ["", "## Registry", "", (f"{r['name']} version {r['version']}: **{decision}** ({r['reason']}); "
                                          f"champion is version {r['champion_version']}.")]
    return "\n".join(lines)


@flow(name="pipeline", log_prints=True)
def pipeline_flow(repo: str = ".", stages: list[str] | None = None) -> dict[str, str]:
    """Run the DVC stages in order (all by default); returns each stage's state."""
    root = Path(repo).resolve()
    wanted = list(stages or STAGES)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise PipelineFailed(f"unknown stages {unknown}; the pipeline has {list(STAGES)}")
    states: dict[str, str] = {}
    with pipeline_lock(root), api_shared_with_subprocesses():  # stage flows report to this flow's API
        for stage in wanted:
            states[stage] = dvc_stage.with_options(retries=RETRIES.get(stage, 1))(stage, str(root))
    create_markdown_artifact(summary_markdown(root, states), key="mllm-pipeline-summary",
                             description="stage states, evaluation and the promotion decision")
    return states
