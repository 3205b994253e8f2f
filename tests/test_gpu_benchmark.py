"""benchmarks/gpu.py --quick: the GPU benchmark's whole path (build, encode, train through run_training,
predict, MFU) on a toy shape on the CPU, with its figures written as they come."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_quick_runs_on_cpu(tmp_path, venv_env):
    out = tmp_path / "gpu.jsonl"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--out", str(out)],
                         env=venv_env, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("toy LoRA training") and " ratio " in last
    figures = {}
    for line in out.read_text().splitlines():
        figures.update(json.loads(line))
    assert figures["sequences"] == 3 and figures["train_tokens_per_s"] > 0 and figures["predict_ms_per_query"] > 0
    assert 0 < figures["train_mfu"] < 1 and float(last.rsplit("ratio ", 1)[1]) == pytest.approx(figures["train_mfu"], abs=1e-3)
