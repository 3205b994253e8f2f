"""Helpers shared by the benchmarks: one-core pinned measurements in fresh subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


def pinned(module: str, call: str) -> dict:
    """Evaluate ``module.call`` (returning a JSON-able dict) in a fresh subprocess pinned to one core with
    one BLAS/OpenMP thread, so that "per core" means per core on a shared machine."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    code = (
        "import os, json, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import {module} as m;"
        f"print('RESULT ' + json.dumps(m.{call}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{module}.{call} failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def machine() -> str:
    import platform

    return f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, python {sys.version.split()[0]}"
