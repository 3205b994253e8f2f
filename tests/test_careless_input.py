"""Inputs a careless user gives (iris split 100/50 unless said): each is a one-line error naming the problem
(exit 2, nothing written, checked before the model loads where it can be), or the right answer, with a
warning where the user likely erred. Each test here failed on the code before these checks.

- ``mllm predict``: ``--out`` naming an input; train labels ``0.0/1.0/2.0`` against test labels ``0/1/2``;
  numbers with thousands separators; a label holding a comma with ``--out``; ``--out`` in a missing
  directory, on /proc or /sys, on a full file system, or written by another run at the same time; a
  context too wide for the window; repeated column names; an all-empty test label column; a registry
  reference with no store (no ``mlflow.db`` made); a model dir without a tokenizer.
- ``mllm import-corpus``: answers outside the prompt's label set, negative, non-integer or too few; records
  that are not objects; invalid UTF-8 and truncated JSON (file and line named); a record over the token
  limit (refused before it is tokenized); no empty output directory after a failure.
- ``mllm register``: an empty model directory (never registered, no Prefect traceback).
- ``mllm generate``: a task count that makes more shards than their names can order.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from typer.testing import CliRunner

from mllm.cli import app
from mllm.inference.table import coerce_numeric, match_labels
from mllm.model.loading import TINY_BASE_DIR
from mllm.text import prompt

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(TINY_BASE_DIR)


def _iris(tmp_path: Path, labels=None, sepal=None) -> tuple[Path, Path]:
    """iris, shuffled, as train.csv (100 rows) and test.csv (50); ``labels``/``sepal`` rewrite a column's
    cells per file ("train"/"test")."""
    d = load_iris(as_frame=True).frame.rename(columns={"target": "label"}).sample(frac=1, random_state=0)
    paths = []
    for name, part in (("train", d.iloc[:100].copy()), ("test", d.iloc[100:].copy())):
        if labels is not None:
            part["label"] = part["label"].map(lambda v, n=name: labels(v, n))
        if sepal is not None:
            part["sepal length (cm)"] = part["sepal length (cm)"].map(lambda v, n=name: sepal(v, n))
        part.to_csv(tmp_path / f"{name}.csv", index=False)
        paths.append(tmp_path / f"{name}.csv")
    return paths[0], paths[1]


def _predict(tmp_path, *args):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    return CliRunner().invoke(app, ["predict", "--train", str(train), "--test", str(test), "--model", MODEL, *args])


def _accuracy(output: str) -> float:
    line = next(ln for ln in output.splitlines() if ln.startswith("accuracy on"))
    return float(line.rsplit(": ", 1)[1].split(";")[0])


def _refused(res, message: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output, res.output


# -- wrong with exit 0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["test", "train"])
def test_out_naming_an_input_is_refused(tmp_path, which):
    train, test = _iris(tmp_path)
    target = {"train": train, "test": test}[which]
    before = target.read_bytes()
    res = _predict(tmp_path, "--out", str(tmp_path / "." / target.name))
    _refused(res, f"is the input table {target}: the predictions would overwrite it")
    assert target.read_bytes() == before and not list(tmp_path.glob("*.partial"))


def test_labels_written_as_other_numbers_are_the_same_classes(tmp_path):
    """Train labels 0.0/1.0/2.0, test labels 0/1/2: the accuracy of the plain labels, not 0."""
    _iris(tmp_path)
    plain = _accuracy(_predict(tmp_path).output)
    _iris(tmp_path, labels=lambda v, n: f"{v}.0" if n == "train" else str(v))
    res = _predict(tmp_path)
    assert res.exit_code == 0 and plain > 0.8 and _accuracy(res.output) == plain, res.output
    assert "warning" not in res.output
    matched = match_labels(pd.Series(["0", "1e1", "x", None]), ["0.0", "10", "y"])
    assert matched[:3].tolist() == ["0.0", "10", "x"] and pd.isna(matched[3])


def test_labels_matching_no_class_warn(tmp_path):
    _iris(tmp_path, labels=lambda v, n: "abc"[v] if n == "train" else str(v))
    res = _predict(tmp_path)
    assert res.exit_code == 0 and "warning: no label in" in res.output and "is --label the right column?" in res.output


def test_thousands_separators_are_numbers(tmp_path):
    """"5,120" (quoted in the CSV) is the number 5120: the same accuracy as the plain numbers."""
    _iris(tmp_path, sepal=lambda v, n: round(v * 1000))
    plain = _accuracy(_predict(tmp_path).output)
    _iris(tmp_path, sepal=lambda v, n: f"{round(v * 1000):,}")
    assert '"5,800"' in (tmp_path / "train.csv").read_text()
    assert _accuracy(_predict(tmp_path).output) == plain > 0.8
    df = pd.DataFrame({"k": ["1,234", "-5,120.5", "7", None], "dec": ["1,5", "2,25", "3", "4"],
                       "word": ["a,b", "c", "d", "e"]})
    out = coerce_numeric(df)
    assert out.k.tolist()[:3] == [1234.0, -5120.5, 7.0] and np.isnan(out.k[3])
    # a decimal comma or a list stays as written
    assert not pd.api.types.is_numeric_dtype(out.dec) and not pd.api.types.is_numeric_dtype(out.word)


def test_import_corpus_answers_are_checked(tmp_path, tokenizer_dir):
    """An answer whose labels are no class of the prompt (97 for the label set 0..2), negative, not integers,
    or fewer than the test rows is refused, naming the record. A class id the shots miss (3 for 0..2: the
    authors' generator and the encode stage list the shots' labels) is a class."""
    msgs = prompt.messages(np.array([[1, 2], [3, 4], [5, 6]]), np.array([0, 1, 2]), np.array([[7, 8], [9, 1]]),
                           np.array([1, 0]))
    ok = json.loads(msgs[-1]["content"])
    cases = {
        "97": [ok[0], {**ok[1], "label": 97}],
        "-3": [{**ok[0], "label": -3}, ok[1]],
        "1.7": [ok[0], {**ok[1], "label": 1.7}],
        "short": [ok[0]],
    }
    for why, answer in cases.items():
        src = tmp_path / f"{why}.jsonl"
        good = {"messages": msgs}
        bad = {"messages": [*msgs[:-1], {"role": "assistant", "content": json.dumps(answer)}]}
        src.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        res = _import(tmp_path, tokenizer_dir, src)
        _refused(res, f"{src.name}:2: not a MachineLearningLM task")
        assert not (tmp_path / "corpus").exists(), why  # and no empty output directory either
    unlisted = [*msgs[:-1], {"role": "assistant", "content": json.dumps([ok[0], {**ok[1], "label": 3}])}]
    src.write_text(json.dumps({"messages": msgs}) + "\n" + json.dumps({"messages": unlisted}) + "\n")
    res = _import(tmp_path, tokenizer_dir, src)
    assert res.exit_code == 0 and "imported 2 sequences" in res.output, res.output
    assert "1 answers name a class the prompt's shots miss" in res.output


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from mllm.text.tokenizer import build_tokenizer, save_tokenizer

    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(build_tokenizer(), path, "whole")
    return path


def _import(tmp_path, tok, src, *args):
    return CliRunner().invoke(app, ["import-corpus", str(src), "--name", "c", "--out", str(tmp_path / "corpus"),
                                    "--params", str(ROOT / "params.yaml"), "--tokenizer", str(tok), *args])


def test_register_refuses_an_empty_model_dir(tmp_path, monkeypatch):
    """An evaluation naming an empty directory: refused before the flow (no Prefect traceback), nothing in
    the registry."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "eval.json").write_text(json.dumps({
        "models": {"trained": str(tmp_path / "empty")}, "mean_accuracy": {"trained": 0.9, "majority": 0.3}}))
    res = CliRunner().invoke(app, ["register", "--params", str(ROOT / "params.yaml"), "--model", "empty",
                                   "--evaluation", "eval.json", "--out", "reg.json"])
    _refused(res, "is not a trained model directory (no config.json or adapter_config.json)")
    assert not (tmp_path / "reg.json").exists()
    db = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    if db.exists():
        import mlflow

        assert not mlflow.MlflowClient(f"sqlite:///{db}").search_registered_models()
    shutil.copytree(TINY_BASE_DIR, tmp_path / "notok", ignore=shutil.ignore_patterns("tokenizer*", "mllm_tokenizer*",
                                                                                         "special_tokens*"))
    (tmp_path / "eval.json").write_text(json.dumps({
        "models": {"trained": str(tmp_path / "notok")}, "mean_accuracy": {"trained": 0.9, "majority": 0.3}}))
    res = CliRunner().invoke(app, ["register", "--params", str(ROOT / "params.yaml"), "--model", "notok",
                                   "--evaluation", "eval.json", "--out", "reg.json"])
    _refused(res, "notok holds no tokenizer")


# -- tracebacks or leftovers ----------------------------------------------------------------------------


def test_a_label_with_a_comma_writes_and_resumes(tmp_path):
    _iris(tmp_path, labels=lambda v, n: ["setosa, wild", 'versi"color', "virginica"][v])
    for _ in range(2):  # the rerun overwrites cleanly
        res = _predict(tmp_path, "--out", str(tmp_path / "p.csv"))
        assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["prediction", "proba_setosa, wild", 'proba_versi"color', "proba_virginica"]
    assert _accuracy(res.output) > 0.8 and not (tmp_path / "p.csv.partial").exists()


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("where, message", [
    ("nodir/p.csv", "no directory"),
    ("/proc/p.csv", "cannot write in /proc"),
    ("/sys/p.csv", "cannot write in /sys"),
    ("full/p.csv", "bytes free; the predictions need about"),
])
def test_out_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, monkeypatch, where, message):
    _iris(tmp_path)
    if where.startswith("full/") and not _tmpfs(tmp_path / "full", "4k"):
        pytest.skip("mounting a 4 KB tmpfs needs CAP_SYS_ADMIN")
    loaded = []
    monkeypatch.setattr("mllm.model.loading.load_trained", lambda *a, **k: loaded.append(a))
    try:
        res = _predict(tmp_path, "--out", where if where.startswith("/") else str(tmp_path / where))
        _refused(res, message)
        assert not loaded
        parent = Path(where).parent if where.startswith("/") else (tmp_path / where).parent
        assert not parent.exists() or not list(parent.glob("p.csv*"))
    finally:
        if where.startswith("full/"):
            subprocess.run(["umount", str(tmp_path / "full")], check=False)


def test_a_write_that_fails_mid_run_is_one_line(tmp_path, monkeypatch):
    """The disk fills while rows are written: one line naming the file, exit 1, no traceback."""
    _iris(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mllm.inference.job.os.fsync", full)
    res = _predict(tmp_path, "--out", str(tmp_path / "p.csv"))
    _refused(res, "p.csv.partial failed (No space left on device)", code=1)
    assert not (tmp_path / "p.csv").exists()


def test_a_second_run_to_the_same_out_is_refused(tmp_path):
    """While one run writes OUT (it holds OUT.partial locked), another to the same OUT stops at once and
    leaves the first one's file as it was."""
    _iris(tmp_path)
    part = tmp_path / "p.csv.partial"
    part.write_text("# mllm-predictions-partial/1 first-run\nrow,prediction\n0,1\n")
    with part.open("r+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = _predict(tmp_path, "--out", str(tmp_path / "p.csv"))
        _refused(res, "another run is writing it now")
    assert part.read_text() == "# mllm-predictions-partial/1 first-run\nrow,prediction\n0,1\n"
    assert not (tmp_path / "p.csv").exists()


def test_a_context_too_wide_leaves_no_partial_file(tmp_path):
    _iris(tmp_path)
    res = _predict(tmp_path, "--out", str(tmp_path / "p.csv"), "--cutoff-len", "64")
    _refused(res, "does not fit the model's 64-token window")
    assert not list(tmp_path.glob("p.csv*"))


@pytest.mark.parametrize("name, body, message", [
    ("list.jsonl", b"[1, 2, 3]\n", "list.jsonl:1: a record is a JSON object"),
    ("null.jsonl", b"null\n", "null.jsonl:1: a record is a JSON object"),
    ("strings.jsonl", b'{"messages": ["hello", "there"]}\n', "strings.jsonl:1: a message is not an object"),
    ("alpaca.jsonl", b'{"instruction": 3, "output": "x"}\n', "alpaca.jsonl:1: instruction is not a string"),
    ("latin1.jsonl", b'\n{"messages": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8 text (byte 0xe9"),
    ("cut.json", b'[{"messages": [\n  {"role": "user", "content": "x"}', "cut.json:2: not JSON (cut short?)"),
    ("latin1.json", b'[\n{"messages": "caf\xe9"}]', "latin1.json:2: not UTF-8 text"),
])
def test_import_corpus_bad_records_are_named(tmp_path, tokenizer_dir, name, body, message):
    src = tmp_path / name
    src.write_bytes(body)
    res = _import(tmp_path, tokenizer_dir, src)
    _refused(res, message)
    assert not (tmp_path / "corpus").exists()


def test_import_corpus_refuses_a_runaway_record_before_tokenizing(tmp_path, tokenizer_dir, monkeypatch):
    msgs = prompt.messages(np.arange(200 * 4).reshape(200, 4) % 1000, np.arange(200) % 2, np.array([[1, 2, 3, 4]]),
                           np.array([1]))
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps({"messages": msgs}) + "\n")
    res = _import(tmp_path, tokenizer_dir, src, "--max-tokens", "100")
    _refused(res, "big.jsonl:1: ")
    assert "tokens, over the 100 a sequence may have" in res.output
    monkeypatch.setattr(prompt, "parse_user_prompt", lambda *a, **k: pytest.fail("parsed a runaway record"))
    res = _import(tmp_path, tokenizer_dir, src, "--max-tokens", "10")
    _refused(res, "characters, far over the 10 tokens a sequence may have")
    assert not (tmp_path / "corpus").exists()


def test_generate_refuses_more_shards_than_names_order(tmp_path):
    res = CliRunner().invoke(app, ["generate", "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "g"),
                                   "-S", "generate.num_tasks=1000000000000"])
    _refused(res, "num_tasks 1,000,000,000,000 in shards of 256 makes 3,906,250,000 shards; at most 100,000")
    assert not (tmp_path / "g").exists()


def test_stage_outputs_that_cannot_be_written_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((str(tmp_path / "file" / "g"), "is not a directory"), ("/proc/mllm-g", "takes no new files")):
        res = CliRunner().invoke(app, ["generate", "--params", str(ROOT / "params.yaml"), "--out", out])
        _refused(res, f"cannot write {out}")


def test_repeated_column_names_are_named(tmp_path):
    _iris(tmp_path)
    train = tmp_path / "train.csv"
    lines = train.read_text().splitlines()
    lines[0] = lines[0].replace("sepal width (cm)", "sepal length (cm)")
    train.write_text("\n".join(lines) + "\n")
    _refused(_predict(tmp_path), "repeated column name(s) 'sepal length (cm)'")


def test_an_empty_test_label_column_is_no_accuracy(tmp_path):
    _iris(tmp_path)
    test = pd.read_csv(tmp_path / "test.csv").assign(label="")
    test.to_csv(tmp_path / "test.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = _predict(tmp_path)
    assert res.exit_code == 0 and "no accuracy: the 'label' column" in res.output and "nan" not in res.output


def test_a_registry_reference_without_a_store_makes_none(tmp_path, monkeypatch):
    _iris(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["predict", "--train", "train.csv", "--test", "test.csv", "--model",
                                   f"mllm@nope{uuid.uuid4().hex[:4]}", "--out", "p.csv"])
    _refused(res, f"no MLflow store at {tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.glob("p.csv*"))


def test_the_same_families_through_the_other_entry_points(tmp_path, monkeypatch):
    """The pyfunc model reads numbers sent with thousands separators as numbers and a label column that
    arrives as floats (empty cells beside integers) as the integers; MLLMClassifier, like the CLI, makes no
    MLflow store when a registry reference has none."""
    from mllm.core.errors import InputError
    from mllm.inference.classifier import MLLMClassifier
    from mllm.model.loading import load_trained_with_tokenizer
    from mllm.registry.pyfunc import predict_table

    model, tok = load_trained_with_tokenizer(TINY_BASE_DIR)
    train, test = _iris(tmp_path)
    ctx, qs = pd.read_csv(train), pd.read_csv(test)
    request = pd.concat([ctx, qs.assign(label=np.nan)], ignore_index=True)
    plain = predict_table(model, tok, request, {})
    assert request["label"].dtype == np.float64 and list(plain["prediction"].unique()) != []
    assert set(plain["prediction"].tolist()) <= {0, 1, 2} and "proba_0" in plain.columns  # not 0.0 / proba_0.0
    grouped = request.assign(**{"sepal length (cm)": (request["sepal length (cm)"] * 1000).round().astype(int)})
    as_text = grouped.assign(**{"sepal length (cm)": grouped["sepal length (cm)"].map(lambda v: f"{v:,}")})
    assert predict_table(model, tok, as_text, {}).equals(predict_table(model, tok, grouped, {}))

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no MLflow store"):
        MLLMClassifier(model="mllm@champion").fit(ctx.drop(columns="label"), ctx["label"])
    assert not (tmp_path / "mlflow.db").exists()
