"""The DVC graph is honest: each stage lists, as deps, the subpackages its code imports (directly or
through others), so an edit anywhere in them marks exactly the stages that run that code as changed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

from mllm.core.params import BASELINE_NAMES
from mllm.evaluation.suite import MODEL_NAMES
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# The modules a stage's command runs (`mllm <stage>` parses arguments and calls these).
ENTRY = {
    "generate": ["flows.generate"], "filter": ["flows.filter"], "tokenizer": ["flows.tokenizer"],
    "plant": ["flows.plant"], "encode": ["flows.encode"], "train": ["flows.train", "mllm.model.train_worker"],
    "evaluate": ["flows.evaluate"], "register": ["flows.register"],
}
SUBPACKAGES = sorted(p.name for p in (ROOT / "mllm").iterdir() if (p / "__init__.py").is_file())


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("mllm", "flows")


def imported_code(graph, stage: str) -> set[str]:
    """Repo paths of the code a stage runs: mllm subpackages (as directories) and flows modules (as files)."""
    modules = set()
    for entry in ENTRY[stage]:
        modules |= {entry, *graph.find_upstream_modules(entry)}
    out = set()
    for m in modules:
        parts = m.split(".")
        if parts[0] == "mllm" and len(parts) > 1 and parts[1] in SUBPACKAGES:
            out.add(f"mllm/{parts[1]}")
        elif parts[0] == "flows" and len(parts) > 1:
            out.add(f"flows/{parts[1]}.py")
    return out


def code_deps(stage: str) -> set[str]:
    return {d for d in DVC["stages"][stage]["deps"] if d.startswith(("mllm/", "flows/"))}


def test_every_stage_has_an_entry():
    assert set(ENTRY) == set(DVC["stages"])
    from flows.pipeline import STAGES

    assert list(STAGES) == list(DVC["stages"])  # `mllm pipeline` runs the same stages in the same order


@pytest.mark.parametrize("stage", list(ENTRY))
def test_stage_code_deps_are_its_imports(graph, stage):
    assert code_deps(stage) == imported_code(graph, stage)


def test_the_learning_curve_plot_names_every_model():
    y = DVC["plots"][0]["plots/learning_curve.csv"]["y"]
    assert set(y) == set(MODEL_NAMES) - {"champion"} and set(BASELINE_NAMES) <= set(y)


@pytest.mark.slow
def test_an_edit_in_a_subpackage_marks_the_stages_that_import_it(tmp_path, graph, venv_env):
    """In a copy with a clean dvc.lock, edit one file of each subpackage: `dvc status` marks as changed
    exactly the stages whose code imports it (and none marked would fail if a dep were left out)."""
    for name in ("mllm", "flows", "models/tiny-base", "dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config"):
        src, dst = ROOT / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    outs = ["data/generated", "data/filtered", "data/tokenizer", "data/base", "data/corpus", "data/train/model",
            "data/evaluate"]
    for d in outs:  # stand-ins for the stages' outputs: the lock needs something to hash
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "stand-in").write_text(d)
    for f in ("metrics/filter.json", "metrics/encode.json", "metrics/evaluate.json", "metrics/registry.json",
              "plots/learning_curve.csv"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    dvc = [str(Path(sys.executable).parent / "dvc")]

    def run(*args):
        res = subprocess.run(dvc + list(args), cwd=tmp_path, env=venv_env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    run("init", "--no-scm", "-f", "-q")
    run("commit", "-f", "-q")

    def changed() -> set[str]:
        return set(json.loads(run("status", "--json")))

    assert changed() == set()
    for sub in [*SUBPACKAGES, "flows"]:
        target = sorted((tmp_path / ("flows" if sub == "flows" else f"mllm/{sub}")).glob("*.py"))[-1]
        original = target.read_text()
        target.write_text(original + "\n# an edit\n")
        path = f"flows/{target.name}" if sub == "flows" else f"mllm/{sub}"
        expected = {s for s in ENTRY if path in imported_code(graph, s)}
        assert expected, f"no stage runs {path}"
        assert changed() == expected, path
        target.write_text(original)
    assert changed() == set()
