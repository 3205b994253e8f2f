"""The MLflow registry: references, gated promotion with recorded decisions, manual override, pyfunc, CLI."""

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mllm.cli import app
from mllm.model.references import RegistryError, resolve
from mllm.registry.promotion import decide, promote, register
from tests.conftest import stop_process
from tests.training_helpers import save_tiny_model


def _evaluation(trained, majority=0.4, champion=None, champion_version=None):
    mean = {"trained": trained, "majority": majority, "knn": 0.8}
    if champion is not None:
        mean["champion"] = champion
    return {"mean_accuracy": mean, "champion_version": champion_version, "suite": "test"}


def test_decide_gate():
    assert decide(_evaluation(0.5), None) == (True, "first champion: mean accuracy 0.5000 beats the majority class (0.4000)")
    assert not decide(_evaluation(0.4), None)[0]  # a tie with the majority class is not a win
    assert decide(_evaluation(0.6, champion=0.55, champion_version="1"), "1")[0]
    promote_, why = decide(_evaluation(0.5, champion=0.55, champion_version="1"), "1")
    assert not promote_ and "does not beat the champion's (0.5500, version 1)" in why
    promote_, why = decide(_evaluation(0.9, champion=0.55, champion_version="1"), "2")
    assert not promote_ and "rerun the evaluate stage" in why  # measured against another champion


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sqlite store and its artifacts live in the test's dir
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_register_candidate_champion_and_manual_override(tmp_path, store):
    a = save_tiny_model(tmp_path / "a", seed=0)
    b = save_tiny_model(tmp_path / "b", seed=1)
    first = register(a, _evaluation(0.5))
    assert first["promoted"] and first["version"] == "1"
    assert str(store.get_model_version_by_alias("mllm", "champion").version) == "1"
    # the same weights again: the same version, no duplicate
    assert register(a, _evaluation(0.5, champion=0.5, champion_version="1"))["version"] == "1"
    worse = register(b, _evaluation(0.45, champion=0.5, champion_version="1"))
    assert worse["version"] == "2" and not worse["promoted"]
    assert str(store.get_model_version_by_alias("mllm", "candidate").version) == "2"
    assert str(store.get_model_version_by_alias("mllm", "champion").version) == "1"
    tags = store.get_model_version("mllm", "2").tags
    assert tags["mllm.decision"] == "not promoted" and tags["mllm.mean_accuracy"] == "0.450000"
    assert "does not beat the champion" in tags["mllm.reason"]
    # manual override, and a clear error for a version that does not exist
    assert promote("mllm", "2")["previous"] == "1"
    assert str(store.get_model_version_by_alias("mllm", "champion").version) == "2"
    with pytest.raises(RegistryError, match="no version 7"):
        promote("mllm", "7")
    # references resolve to the model's weights, and name@alias follows the alias
    assert (resolve("mllm@champion") / "config.json").is_file()
    assert (resolve("models:/mllm/1") / "model.safetensors").read_bytes() == (a / "model.safetensors").read_bytes()
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        resolve("mllm@staging")
    with mlflow.start_run() as run:  # the train stage logs the HF dir as run artifacts: runs:/ works too
        mlflow.log_artifacts(str(b), artifact_path="model")
    assert (resolve(f"runs:/{run.info.run_id}/model") / "model.safetensors").read_bytes() == \
        (b / "model.safetensors").read_bytes()


def test_pyfunc_answers_a_table_with_context_and_query_rows(tmp_path, store):
    register(save_tiny_model(tmp_path / "a"), _evaluation(0.5))
    model = mlflow.pyfunc.load_model("models:/mllm@champion")
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=30), "c": rng.choice(["u", "v"], size=30)})
    table["label"] = np.where(table.x > 0, "pos", "neg")
    table.loc[24:, "label"] = None  # the rows to predict
    out = model.predict(table)
    assert list(out.columns) == ["prediction", "proba_neg", "proba_pos"] and len(out) == 6
    np.testing.assert_allclose(out[["proba_neg", "proba_pos"]].sum(axis=1), 1.0, rtol=1e-5)


def test_cli_predict_and_promote(tmp_path, store):
    model = save_tiny_model(tmp_path / "m")
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"size": rng.normal(size=40), "name": [f'a, "quoted" {i % 3}' for i in range(40)]})
    df["label"] = np.where(df["size"] > 0, "big", "small")
    df.iloc[:30].to_csv(tmp_path / "train.csv", index=False)
    test = df.iloc[30:].copy()
    test["size"] = test["size"].astype(object)
    test.loc[test.index[0], "size"] = "n/a"  # garbage in a numeric column: a missing value
    test.to_csv(tmp_path / "test.csv", index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "--model", str(model), "--train", str(tmp_path / "train.csv"),
                              "--test", str(tmp_path / "test.csv"), "--out", str(tmp_path / "pred.csv")])
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 10 and set(pred.prediction) <= {"big", "small"}
    assert "accuracy on" in res.output
    res = runner.invoke(app, ["promote", "3"])
    assert res.exit_code == 2 and "has no version 3" in res.output


@pytest.mark.parametrize("content, message", [
    ("", "not a readable CSV"),
    ("a\n1\n2\n", "needs at least one feature column and a label column"),
    ("a,label\n1,x\n2,x\n3,x\n", "single class"),
    ("a,label\n" + "".join(f"{i},{i}\n" for i in range(101)), "101 classes; at most 100"),
])
def test_cli_predict_bad_context(tmp_path, content, message):
    model = save_tiny_model(tmp_path / "m")
    (tmp_path / "train.csv").write_text(content)
    (tmp_path / "test.csv").write_text("a\n1\n")
    res = CliRunner().invoke(app, ["predict", "--model", str(model), "--train", str(tmp_path / "train.csv"),
                                   "--test", str(tmp_path / "test.csv"), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "p.csv").exists()


def test_unknown_model_reference(tmp_path):
    with pytest.raises(RegistryError, match="no such directory"):
        resolve(str(tmp_path / "nope"))
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_mlflow_models_serve_answers_requests(tmp_path, store, venv_env):
    """`mlflow models serve` on the champion (loopback, local env) answers a table with context rows."""
    import socket
    import subprocess
    import time
    import urllib.request

    register(save_tiny_model(tmp_path / "a"), _evaluation(0.5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "serve.log"  # a file, not a pipe: output nobody reads cannot stall the server
    with log.open("w") as out:  # the child keeps its own handle
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/mllm@champion", "--env-manager",
                                 "local", "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=venv_env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        rows = [[0.1 * i, "u" if i % 2 else "v", "pos" if i % 3 else "neg"] for i in range(20)]
        rows += [[0.5, "u", None], [-0.5, "v", None]]
        body = json.dumps({"dataframe_split": {"columns": ["x", "c", "label"], "data": rows}}).encode()
        deadline = time.time() + 120
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "server did not answer within 120 s"
                time.sleep(1)
    finally:
        stop_process(proc, grace=30)
    preds = answer["predictions"]
    assert len(preds) == 2 and {p["prediction"] for p in preds} <= {"pos", "neg"}
    assert abs(preds[0]["proba_neg"] + preds[0]["proba_pos"] - 1) < 1e-5


def test_evaluation_compares_the_champion_by_reference(tmp_path, store):
    """The evaluate stage's models: the trained dir, the base as params name it, the champion as a pinned
    registry reference (not a download path), and each of them answers."""
    from mllm.core.params import parse_params
    from mllm.evaluation.models import in_context, models_to_evaluate
    from tests.conftest import params_dict

    params = parse_params(params_dict(model={"base": "tiny"}, evaluate={"max_queries": 5}))
    a = save_tiny_model(tmp_path / "a", seed=0)
    refs, version = models_to_evaluate(params, str(a))
    assert refs == {"trained": str(a), "base": "tiny"} and version is None
    register(a, _evaluation(0.6))  # a becomes the champion
    b = save_tiny_model(tmp_path / "b", seed=1)
    refs, version = models_to_evaluate(params, str(b))
    assert refs == {"trained": str(b), "base": "tiny", "champion": "models:/mllm/1"} and version == "1"
    assert models_to_evaluate(params, str(a)) == ({"trained": str(a), "base": "tiny"}, "1")  # a is the champion
    X = pd.DataFrame({"x": np.arange(12.0), "z": np.arange(12.0) % 3})
    y = np.arange(12) % 2
    for ref in refs.values():
        classes, proba = in_context(ref, params.evaluate, seed=0)(X.iloc[:8], y[:8], X.iloc[8:])
        assert proba.shape == (4, 2) and list(classes) == [0, 1]
