"""The package reads like the pipeline: imports run one way between the stages' subpackages, with no cycles
(import-linter contracts in pyproject.toml), and each check fails on a planted violation."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _lint(root: Path) -> subprocess.CompletedProcess:
    # lint-imports puts its working directory first on sys.path: it reads the copy under `root`
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy(tmp_path):
    for name in ("mllm", "flows"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_repo_keeps_its_contracts():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_the_copy_is_what_is_linted(copy):
    assert _lint(copy).returncode == 0


@pytest.mark.parametrize("module, line, broken", [
    # a lower stage importing a higher one, even lazily inside a function
    ("mllm/text/prompt.py", "def _f():\n    from mllm.inference import predict", "mllm.text.prompt -> mllm.inference.predict"),
    ("mllm/data/shards.py", "import mllm.model.loading", "mllm.data.shards -> mllm.model.loading"),
    ("mllm/model/train.py", "import flows.train", "mllm.model.train -> flows.train"),
    ("mllm/evaluation/suite.py", "import mllm.registry.promotion", "mllm.evaluation.suite -> mllm.registry.promotion"),
    ("flows/generate.py", "import mllm.cli", "flows.generate -> mllm.cli"),
])
def test_a_wrong_way_import_breaks_the_layers(copy, module, line, broken):
    _append(copy / module, line)
    res = _lint(copy)
    assert res.returncode != 0 and "stages import one way, down the layers BROKEN" in res.stdout, res.stdout
    assert broken in res.stdout, res.stdout


def test_an_import_cycle_inside_a_stage_is_found(copy):
    _append(copy / "mllm/model/references.py", "import mllm.model.loading")
    _append(copy / "mllm/model/loading.py", "import mllm.model.references")
    res = _lint(copy)
    assert res.returncode != 0 and "no import cycles inside a stage BROKEN" in res.stdout, res.stdout
