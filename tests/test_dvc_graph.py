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


class Checkout:
    """A copy of the project whose dvc.lock is clean (stand-ins for the stages' outputs), to ask
    `dvc status` which stages an edit marks as changed."""

    OUTS = ["data/generated", "data/filtered", "data/tokenizer", "data/base", "data/corpus", "data/train/model",
            "data/train/snapshots", "data/evaluate"]
    FILES = ["metrics/filter.json", "metrics/encode.json", "metrics/evaluate.json", "metrics/registry.json",
             "plots/learning_curve.csv", "plots/training_curve.csv"]

    def __init__(self, root: Path, env: dict, dvc_yaml: str | None = None):
        self.root, self.env = root, env
        for name in ("mllm", "flows", "models/tiny-base", "dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config"):
            src, dst = ROOT / name, root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        if dvc_yaml is not None:
            (root / "dvc.yaml").write_text(dvc_yaml)
        for d in self.OUTS:  # the lock needs something to hash
            (root / d).mkdir(parents=True)
            (root / d / "stand-in").write_text(d)
        for f in self.FILES:
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_text("{}")
        self.dvc("init", "--no-scm", "-f", "-q")
        self.dvc("commit", "-f", "-q")

    def dvc(self, *args) -> str:
        res = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=self.root, env=self.env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def changed(self) -> set[str]:
        return set(json.loads(self.dvc("status", "--json")))

    def marked_by_an_edit(self, path: str) -> set[str]:
        """Stages `dvc status` marks after appending a comment to one module of ``path``; then undone."""
        target = self.root / path if path.endswith(".py") else sorted((self.root / path).glob("*.py"))[-1]
        original = target.read_text()
        target.write_text(original + "\n# an edit\n")
        try:
            return self.changed()
        finally:
            target.write_text(original)


def runs(graph, path: str) -> set[str]:
    return {s for s in ENTRY if path in imported_code(graph, s)}


@pytest.mark.slow
def test_an_edit_in_a_subpackage_marks_the_stages_that_import_it(tmp_path, graph, venv_env):
    """Edit one file of each subpackage (and of flows/): `dvc status` marks exactly the stages whose code
    imports it."""
    co = Checkout(tmp_path, venv_env)
    assert co.changed() == set()
    paths = [f"mllm/{sub}" for sub in SUBPACKAGES] + sorted(f"flows/{p.name}" for p in (ROOT / "flows").glob("*.py")
                                                           if f"flows/{p.name}" in set().union(*map(code_deps, ENTRY)))
    for path in paths:
        assert runs(graph, path), f"no stage runs {path}"
        assert co.marked_by_an_edit(path) == runs(graph, path), path
    assert co.changed() == set()


@pytest.mark.slow
def test_a_dep_left_out_leaves_a_stage_stale(tmp_path, graph, venv_env):
    """The check above can fail: without mllm/text among evaluate's deps, an edit there leaves evaluate
    unmarked although its code imports it."""
    text = (ROOT / "dvc.yaml").read_text()
    at = text.index("  evaluate:")
    co = Checkout(tmp_path, venv_env, text[:at] + text[at:].replace("      - mllm/text\n", "", 1))
    assert "evaluate" in runs(graph, "mllm/text")
    assert co.marked_by_an_edit("mllm/text") == runs(graph, "mllm/text") - {"evaluate"}
