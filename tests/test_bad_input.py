"""Never a wrong answer with exit 0: bad or awkward input, by family, gets a one-line error (exit 2 at the
command line) naming the file, column, key or value, or the right figures.

Inputs tried here (each would have passed silently, or with a traceback, before):
- tables (CLI; refused before the model loads): ``--label`` naming a missing column; a train or test file that is not UTF-8; a directory
  as ``--train``; an empty label cell among numeric labels (labels read as the strings written: "1" stays
  "1", accuracy counts the labelled rows); labels "None" and "NA" (labels, not missing); ``inf``,
  ``-inf`` in a feature column.
- ``-S`` and params: ``-S generate.num_tasks=true`` (not 1); ``-S encode.cutoff_len=1e3`` (a float for an
  int); ``-S generate.mlp_share='0.5'`` (a string for a float); ``1e-4`` read as a float (YAML 1.2), as
  dvc reads it; an unknown section in params.yaml (``evalute:``) and in ``-S`` (``generat.num_tasks``).
- model files: a truncated ``model.safetensors``; a model directory holding only ``pytorch_model.bin``;
  an adapter holding only ``adapter_model.bin`` (refused without unpickling, and the message does not
  suggest ``weights_only=False``); a truncated ``adapter_model.safetensors``.
- API types: infinite values refused with the column named alike from a CSV, a DataFrame and a numpy
  array; ``1e308`` in a column keeps its other values apart (no overflow to codes {0, 999}); labels
  "9" and "10" in numeric order.
- outputs: files and directories written atomically get the user's umask (not mkstemp's 0600);
  ``mllm predict --out`` resumes after an interruption (``kill -9`` in the slow test) and writes the bytes
  an uninterrupted run writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mllm.core.params import ParamsError, load_params, parse_yaml
from mllm.inference.predict import Predictor, encode_tables
from mllm.inference.table import TableError, load_table, read_queries
from mllm.model.loading import TINY_BASE_DIR, ModelError, load_trained

ROOT = Path(__file__).resolve().parents[1]


def _mllm(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "mllm.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def _table(path: Path, n: int = 30, seed: int = 0, label=None) -> Path:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n).round(3), "b": rng.normal(size=n).round(3)})
    df["label"] = label if label is not None else (df.a > 0).astype(int)
    df.to_csv(path, index=False)
    return path


# -- tables at the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("case, message", [
    ("label", "train.csv: no label column 'nope'; its columns are a, b, label"),
    ("train-latin1", "train.csv: not UTF-8 text"),
    ("test-latin1", "test.csv: not UTF-8 text"),
    ("train-dir", "is a directory; name a CSV file"),
    ("test-inf", "infinite values in the test.csv query rows, column(s) b"),
    ("train-inf", "infinite values in the train.csv context rows, column(s) a"),
    ("cutoff", "cutoff_len 20000 is outside 64..16384 (the model's window)"),
])
def test_predict_table_errors(tmp_path, venv_env, case, message):
    train, test = _table(tmp_path / "train.csv"), _table(tmp_path / "test.csv", seed=1)
    args = ["predict", "--train", "train.csv", "--test", "test.csv", "--model", str(TINY_BASE_DIR),
            "--out", "out.csv"]
    if case == "label":
        args += ["--label", "nope"]
    elif case == "train-latin1":
        train.write_bytes(train.read_bytes().replace(b"a,b", "é,b".encode("latin-1")))
    elif case == "test-latin1":
        test.write_bytes(test.read_bytes() + "0.5,caf\xe9,1\n".encode("latin-1"))
    elif case == "train-dir":
        train.unlink()
        train.mkdir()
    elif case == "test-inf":
        test.write_text(test.read_text() + "0.1,inf,1\n")
    elif case == "train-inf":
        train.write_text(train.read_text() + "-inf,0.2,0\n")
    elif case == "cutoff":
        args += ["--cutoff-len", "20000"]
    res = _mllm(args, venv_env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.csv.partial").exists()


def test_labels_are_the_strings_written(tmp_path):
    """An empty label cell does not turn "1" into 1.0 (and accuracy into 0); "None" and "NA" are labels."""
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,1\n2,\n3,0\n4,None\n5,NA\n")
    X, truth = read_queries(path, ["a"], "label")
    assert truth.isna().tolist() == [False, True, False, False, False]
    assert truth.dropna().tolist() == ["1", "0", "None", "NA"]
    with pytest.raises(TableError, match="1 rows have no label"):
        load_table(path)
    path.write_text("a,label\n1,10\n2,9\n3,10\n4,2\n")
    _, y = load_table(path)
    assert y.tolist() == ["10", "9", "10", "2"]
    assert encode_tables(X.iloc[:4].assign(a=[1, 2, 3, 4]), y, X.iloc[:1]).labels.classes.tolist() == ["2", "9", "10"]


def test_predict_accuracy_counts_labelled_rows(tmp_path, venv_env):
    """A test file with one empty label cell: predictions for every row, accuracy over the labelled ones,
    equal to what the written predictions give."""
    _table(tmp_path / "train.csv", n=40)
    test = _table(tmp_path / "test.csv", n=12, seed=1)
    lines = test.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    test.write_text("\n".join(lines) + "\n")
    res = _mllm(["predict", "--train", "train.csv", "--test", "test.csv", "--model", str(TINY_BASE_DIR),
                 "--out", "out.csv"], venv_env, tmp_path)
    assert res.returncode == 0, res.stderr
    out = pd.read_csv(tmp_path / "out.csv", dtype={"prediction": str})
    truth = pd.read_csv(test, dtype={"label": str})["label"]
    known = truth.notna()
    acc = (out.prediction[known] == truth[known]).mean()
    assert len(out) == 12 and f"11 rows): {acc:.4f}; 1 rows without a label not counted" in res.stderr
    assert acc > 0.5


# -- -S and params ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"generate": {"num_tasks": True}}, "generate.num_tasks: Input should be a valid integer, got True"),
    ({"encode": {"cutoff_len": parse_yaml("1e3")}}, "encode.cutoff_len: Input should be a valid integer, got 1000.0"),
    ({"generate": {"mlp_share": "0.5"}}, "generate.mlp_share: Input should be a valid number, got '0.5'"),
    ({"generat": {"num_tasks": 5}}, "generat: unknown key (a typo?)"),
])
def test_params_types_are_strict(overrides, message):
    with pytest.raises(ParamsError) as err:
        load_params(ROOT / "params.yaml", overrides)
    assert message in str(err.value)


def test_params_yaml_reads_like_dvc(tmp_path, venv_env):
    """``1e-4`` is a float in params.yaml and in -S (YAML 1.2, as dvc reads params); an unknown section in
    the file and a bool for an int in -S are exit-2 errors at the command line."""
    assert parse_yaml("1e-4") == 1e-4 and parse_yaml("1.0e-5") == 1e-5 and parse_yaml("12") == 12
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["stages"][0]["lr"] = "1e-4"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw).replace("'1e-4'", "1e-4"))
    assert load_params(tmp_path / "params.yaml").train.stages[0].lr == 1e-4
    raw["evalute"] = {"max_csv": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = _mllm(["evaluate"], venv_env, tmp_path)
    assert res.returncode == 2 and "evalute: unknown key (a typo?)" in res.stderr, res.stderr
    del raw["evalute"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = _mllm(["generate", "-S", "generate.num_tasks=true"], venv_env, tmp_path)
    assert res.returncode == 2 and "generate.num_tasks: Input should be a valid integer, got True" in res.stderr
    assert not (tmp_path / "data").exists()


# -- model files --------------------------------------------------------------------------------------


def _adapter(tmp_path) -> Path:
    """A LoRA adapter on the embedded base, saved by peft (safetensors)."""
    from peft import LoraConfig, get_peft_model

    from mllm.model.loading import _from_local

    model = _from_local(str(TINY_BASE_DIR))
    model.config._name_or_path = model.name_or_path = "tiny"
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    out = tmp_path / "adapter"
    peft.save_pretrained(out, safe_serialization=True)
    return out


def test_model_files_are_safetensors_only(tmp_path, monkeypatch):
    import torch

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    full = tmp_path / "full"
    shutil.copytree(TINY_BASE_DIR, full)
    weights = full / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors is not a complete safetensors file"):
        load_trained(full)
    weights.unlink()
    (full / "pytorch_model.bin").write_bytes(data[:100])
    with pytest.raises(ModelError, match=r"holds pickled weights only \(pytorch_model.bin\)") as err:
        load_trained(full)
    assert "weights_only" not in str(err.value)

    adapter = _adapter(tmp_path)
    load_trained(adapter)  # the sound adapter loads
    st = adapter / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[:-10])
    with pytest.raises(ModelError, match="adapter_model.safetensors is not a complete safetensors file"):
        load_trained(adapter)
    st.rename(adapter / "adapter_model.bin")
    with pytest.raises(ModelError, match=r"pickled weights only \(adapter_model.bin\)") as err:
        load_trained(adapter)
    assert "weights_only" not in str(err.value)


def test_predict_refuses_a_truncated_model(tmp_path, venv_env):
    _table(tmp_path / "train.csv"), _table(tmp_path / "test.csv", seed=1)
    shutil.copytree(TINY_BASE_DIR, tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    res = _mllm(["predict", "--train", "train.csv", "--test", "test.csv", "--model", "m", "--out", "o.csv"],
                venv_env, tmp_path)
    assert res.returncode == 2 and "not a complete safetensors file" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.csv").exists()


# -- API types ----------------------------------------------------------------------------------------


def test_infinite_values_are_refused_alike_from_every_api(tmp_path):
    from mllm.inference.classifier import MLLMClassifier

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(20, 3)), columns=["a", "b", "c"])
    y = np.arange(20) % 2
    bad = X.copy()
    bad.loc[3, "b"] = np.inf
    with pytest.raises(TableError, match=r"infinite values in the context rows, column\(s\) b"):
        encode_tables(bad, y, X)
    clf = MLLMClassifier(model=str(TINY_BASE_DIR))
    with pytest.raises(ValueError, match=r"infinite values in the X rows, column\(s\) b"):
        clf.fit(bad, y)
    with pytest.raises(ValueError, match=r"infinite values in the X rows, column\(s\) 1"):
        clf.fit(bad.to_numpy(), y)
    bad.assign(label=y).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match=r"infinite values in the t.csv context rows, column\(s\) b"):
        load_table(tmp_path / "t.csv")


def test_huge_values_do_not_collapse_a_column():
    from mllm.text.encoding import quantise

    col = np.array([[1.0], [2.0], [3.0], [4.0], [1e308]])
    codes, _ = quantise(col)
    ref, _ = quantise(col / 1e300)
    np.testing.assert_array_equal(codes, ref)
    assert set(codes[:, 0].tolist()) != {0, 999}
    ordinary = np.random.default_rng(0).normal(size=(30, 4)) * 1e6
    np.testing.assert_array_equal(quantise(ordinary)[0], quantise(ordinary.copy())[0])


# -- outputs: modes and resuming ------------------------------------------------------------------------


def test_atomic_outputs_get_the_umask(tmp_path):
    from mllm.core.atomic import atomic_dir, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_interrupted_predictions_resume_to_the_same_bytes(tmp_path, monkeypatch):
    """A run stopped after two blocks leaves OUT.partial (no OUT); the rerun answers only the other blocks
    and writes exactly what an uninterrupted run writes; a changed fingerprint starts afresh."""
    from mllm.inference import job
    from mllm.model.loading import load_trained_with_tokenizer

    model, tok = load_trained_with_tokenizer(TINY_BASE_DIR)
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(30, 2)), columns=["a", "b"])
    y = pd.Series((X.a > 0).astype(int).astype(str))
    Q = pd.DataFrame(rng.normal(size=(37, 2)), columns=["a", "b"])

    def pred():
        return Predictor(model, tok, max_queries=3, batch=2)

    job.predict_table(pred(), X, y, Q, tmp_path / "whole.csv", key="k")
    calls = []
    real = Predictor.predict_block

    def stop_after_two(self, enc, block):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(block)
        return real(self, enc, block)

    monkeypatch.setattr(Predictor, "predict_block", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        job.predict_table(pred(), X, y, Q, tmp_path / "out.csv", key="k")
    monkeypatch.setattr(Predictor, "predict_block", real)
    assert not (tmp_path / "out.csv").exists()
    assert len((tmp_path / "out.csv.partial").read_text().splitlines()) == 2 + 12  # key, header, 2 blocks x 6
    answered = []
    monkeypatch.setattr(Predictor, "predict_block", lambda self, enc, b: answered.append(b) or real(self, enc, b))
    job.predict_table(pred(), X, y, Q, tmp_path / "out.csv", key="k")
    assert len(answered) == 7 - 2 and not (tmp_path / "out.csv.partial").exists()
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    answered.clear()
    (tmp_path / "out.csv.partial").write_text("# mllm-predictions-partial/1 other\nrow,prediction\n")
    job.predict_table(pred(), X, y, Q, tmp_path / "out.csv", key="k")
    assert len(answered) == 7


@pytest.mark.slow
def test_predict_resumes_after_kill_9(tmp_path, venv_env):
    """`mllm predict --out` killed with SIGKILL mid-run: the rerun finishes from OUT.partial and the file
    equals an uninterrupted run's."""
    _table(tmp_path / "train.csv", n=64)
    _table(tmp_path / "test.csv", n=600, seed=1)
    args = [sys.executable, "-m", "mllm.cli", "predict", "--train", "train.csv", "--test", "test.csv",
            "--model", str(TINY_BASE_DIR)]
    assert _mllm(args[3:] + ["--out", "whole.csv"], venv_env, tmp_path, timeout=900).returncode == 0
    proc = subprocess.Popen(args + ["--out", "out.csv"], cwd=tmp_path, env=venv_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "out.csv.partial"
    deadline = time.time() + 600
    while time.time() < deadline and (not part.exists() or len(part.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = len(part.read_text().splitlines()) - 2
    assert 0 < saved < 600 and not (tmp_path / "out.csv").exists()
    res = _mllm(args[3:] + ["--out", "out.csv"], venv_env, tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not part.exists()


def test_predict_shows_progress_on_a_terminal(tmp_path, venv_env):
    """On a terminal, `mllm predict` reports rows done, rows/s and time left; into a pipe or file, nothing."""
    import fcntl
    import pty
    import struct
    import termios

    _table(tmp_path / "train.csv", n=40)
    _table(tmp_path / "test.csv", n=25, seed=1)
    args = [sys.executable, "-m", "mllm.cli", "predict", "--train", "train.csv", "--test", "test.csv",
            "--model", str(TINY_BASE_DIR), "--out", "out.csv"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen(args, cwd=tmp_path, env=venv_env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        seen += data
    assert proc.wait(timeout=300) == 0
    text = seen.decode(errors="replace")
    assert "predict: 100%" in text and "25/25" in text and "row/s" in text, text
    res = _mllm(args[3:], venv_env, tmp_path)
    assert res.returncode == 0 and "row/s" not in res.stderr
