"""``mllm`` command line: thin wrappers over the stage flows.

Exit codes: 0 done, 1 a stage ran and failed (data checks, training), 2 bad input found before work.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mllm.core.params import MAX_QUERIES, parse_yaml
from mllm.inference import DEFAULT_MAX_QUERIES
from mllm.model.references import DEFAULT_REF

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Teach language models to do ML in context.")

ParamsOpt = Annotated[str, typer.Option("--params", "-p", help="params.yaml to read")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a param, e.g. -S generate.num_tasks=100 (repeatable)"),
]
MetricsOpt = Annotated[str, typer.Option(help="summary JSON for `dvc metrics`")]


@app.callback()
def _root() -> None:
    """mllm: SCM task priors -> teacher filter -> compact encoding -> continued pretraining -> evaluation."""


def parse_overrides(items: list[str] | None) -> dict:
    """``a.b=1`` strings -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        node = out
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # -S a=1 -S a.b=2: which one is meant?
                raise typer.BadParameter(f"--set {key} conflicts with --set {'.'.join(parents[:i + 1])}")
        if isinstance(node.get(leaf), dict):  # -S a.b=2 -S a=1
            raise typer.BadParameter(f"--set {key} conflicts with the --set {key}.* before it")
        if leaf in node:
            raise typer.BadParameter(f"--set {key} is given twice")
        node[leaf] = parse_yaml(value)
    return out


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _run(params: str, set_: list[str] | None, start: Callable[[dict], Any], outputs: tuple[str, ...] = ()) -> Any:
    """Validate params and that every output path can be written (before Prefect or any work starts), then
    ``start(overrides)``; known failures become a one-line error and an exit code instead of a traceback."""
    from mllm.core.atomic import check_writable
    from mllm.core.errors import InputError, StageFailed
    from mllm.core.params import load_params

    overrides = parse_overrides(set_)
    try:
        load_params(params, overrides)
        for path in outputs:
            check_writable(path)
        return start(overrides)
    except (InputError, FileNotFoundError) as err:
        _fail(str(err), 2)
    except StageFailed as err:
        _fail(str(err), 1)
    except OSError as err:  # found while working: a full disk, a file system gone read-only
        _fail(f"{err.filename or 'an output'}: {err.strerror or err}", 1)


@app.command()
def generate(
    params: ParamsOpt = "params.yaml",
    out: Annotated[str, typer.Option(help="output directory of Parquet shards")] = "data/generated",
    set_: SetOpt = None,
) -> None:
    """Generate synthetic classification tasks from SCM priors into checked Parquet shards."""

    def start(overrides):
        from flows.generate import run_generate

        return run_generate(params, out, overrides)

    m = _run(params, set_, start, (out,))
    typer.echo(f"generated {m['tasks']} tasks in {len(m['shards'])} shards -> {out}")


@app.command("filter")
def filter_(
    params: ParamsOpt = "params.yaml",
    generated: Annotated[str, typer.Option(help="generate stage output")] = "data/generated",
    out: Annotated[str, typer.Option(help="output directory")] = "data/filtered",
    metrics: MetricsOpt = "metrics/filter.json",
    set_: SetOpt = None,
) -> None:
    """Keep the tasks a random-forest teacher can learn; build the warm-up (consensus) corpus."""

    def start(overrides):
        from flows.filter import run_filter

        return run_filter(params, generated, out, metrics, overrides)

    s = _run(params, set_, start, (out, metrics))
    typer.echo(f"kept {s['kept']} of {s['tasks']} tasks ({100 * s['kept_share']:.1f}%); "
               f"warm-up corpus {s['warmup_tasks']} tasks -> {out}")


@app.command()
def tokenizer(
    params: ParamsOpt = "params.yaml",
    out: Annotated[str, typer.Option(help="output directory")] = "data/tokenizer",
    set_: SetOpt = None,
) -> None:
    """Build the embedded default tokenizer (a Hugging Face tokenizer directory)."""

    def start(overrides):
        from flows.tokenizer import run_tokenizer

        return run_tokenizer(params, out, overrides)

    s = _run(params, set_, start, (out,))
    typer.echo(f"tokenizer ({s['numbers']} numbers, {s['tokens']} tokens) -> {out}")


@app.command()
def encode(
    params: ParamsOpt = "params.yaml",
    filtered: Annotated[str, typer.Option(help="filter stage output")] = "data/filtered",
    out: Annotated[str, typer.Option(help="output directory")] = "data/corpus",
    metrics: MetricsOpt = "metrics/encode.json",
    set_: SetOpt = None,
) -> None:
    """Encode filtered tasks into the chat-format training corpora (full and warm-up)."""

    def start(overrides):
        from flows.encode import run_encode

        return run_encode(params, filtered, out, metrics, overrides)

    s = _run(params, set_, start, (out, metrics))
    full, warm = s["full"], s["warmup"]
    typer.echo(f"corpus: {full['sequences']} full + {warm['sequences']} warm-up sequences, "
               f"{full['tokens'] + warm['tokens']} tokens -> {out}")


@app.command()
def train(
    params: ParamsOpt = "params.yaml",
    corpus: Annotated[str, typer.Option(help="encode stage output")] = "data/corpus",
    out: Annotated[str, typer.Option(help="checkpoints, final model, summary")] = "data/train",
    time_budget: Annotated[float | None, typer.Option(help="minutes; stop, checkpoint and export, rerun to continue")] = None,
    set_: SetOpt = None,
) -> None:
    """Continued pretraining of model.base on the corpus (LoRA or full), logged to MLflow."""

    def start(overrides):
        from flows.train import run_train

        return run_train(params, corpus, out, overrides, time_budget)

    s = _run(params, set_, start, (out,))
    state = "complete" if s["complete"] else "stopped at the time budget (rerun to continue)"
    loss = "no steps left (the checkpoint was complete)" if s["steps_this_run"] == 0 else f"final loss {s['final_loss']:.4f}"
    typer.echo(f"trained: {state}; {loss}; model -> {out}/model; MLflow run {s['run_id']}")


@app.command()
def evaluate(
    params: ParamsOpt = "params.yaml",
    model: Annotated[str, typer.Option(help="trained model dir")] = "data/train/model",
    out: Annotated[str, typer.Option(help="per-row results and PNG learning curves")] = "data/evaluate",
    metrics: MetricsOpt = "metrics/evaluate.json",
    curve: Annotated[str, typer.Option(help="learning-curve CSV for `dvc plots`")] = "plots/learning_curve.csv",
    snapshots: Annotated[str | None, typer.Option(help="the train stage's snapshot index "
                                                  "(data/train/snapshots/index.json): the training curve")] = None,
    training_curve: Annotated[str, typer.Option(help="accuracy-vs-training-tokens CSV for `dvc plots`")] = "plots/training_curve.csv",
    set_: SetOpt = None,
) -> None:
    """Evaluate the trained model, its base, the champion and classical baselines on real tables."""

    def start(overrides):
        from flows.evaluate import run_evaluate

        return run_evaluate(params, model, out, metrics, curve, snapshots, training_curve, overrides)

    s = _run(params, set_, start, (out, metrics, curve, training_curve))
    mean = s["mean_accuracy"]
    typer.echo("mean accuracy over " + f"{len(s['tables'])} tables: " +
               ", ".join(f"{m} {v:.3f}" for m, v in sorted(mean.items(), key=lambda kv: -(kv[1] or 0))))
    if "quality_bar" in s:
        q = s["quality_bar"]
        typer.echo(f"at {q['shots']} shots the trained model is {100 * (q['lift_over_majority'] or 0):+.1f} points "
                   f"over the majority class; curve {'rising' if q['rising'] else 'not rising'}")
    for p in s["training_curve"]:
        typer.echo(f"  after {p['tokens']:>9,} training tokens: held-out synthetic {p['synthetic_accuracy']} "
                   f"(label loss {p['synthetic_label_loss']}), tables {p['tables_accuracy']}")
    typer.echo(f"metrics -> {metrics}; learning curves -> {out}/learning_curve.png, {curve}, {training_curve}")


@app.command()
def register(
    params: ParamsOpt = "params.yaml",
    train: Annotated[str, typer.Option(help="train stage output")] = "data/train",
    evaluation: Annotated[str, typer.Option(help="evaluate stage summary")] = "metrics/evaluate.json",
    out: Annotated[str, typer.Option(help="the decision record")] = "metrics/registry.json",
    model: Annotated[str | None, typer.Option(help="register this model directory instead of TRAIN/model (any HF "
                                                   "model dir, e.g. the released checkpoint; evaluate it first)")] = None,
    set_: SetOpt = None,
) -> None:
    """Register the trained model (alias candidate); make it champion only if it beats the champion."""

    def start(overrides):
        from flows.register import run_register

        return run_register(params, train, evaluation, out, overrides, model)

    r = _run(params, set_, start, (out,))
    typer.echo(f"registered {r['name']} version {r['version']} (alias candidate); "
               f"{'PROMOTED to champion' if r['promoted'] else 'not promoted'}: {r['reason']}")
    typer.echo(f"champion: {r['name']}@champion = version {r['champion_version']}")
    typer.echo("where to look: `dvc metrics show` (metrics/*.json), `dvc plots show` (learning curves; PNGs in "
               "data/evaluate/), `mlflow ui --backend-store-uri sqlite:///mlflow.db` (runs, registry), "
               f"`mllm predict --model {r['name']}@champion --train a.csv --test b.csv`")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="model version to make champion")],
    name: Annotated[str, typer.Option(help="registered model")] = "mllm",
    reason: Annotated[str, typer.Option(help="recorded as the version's mllm.reason tag")] = "manual promotion",
) -> None:
    """Manual override: move the champion alias to a version."""
    from mllm.core.errors import InputError
    from mllm.registry.promotion import promote as do_promote

    try:
        r = do_promote(name, version, reason)
    except InputError as err:
        _fail(str(err), 2)
    typer.echo(f"{name}@champion: version {r['previous']} -> {r['version']}")


@app.command()
def predict(
    train: Annotated[str, typer.Option(help="labelled CSV: the context (last column, or --label, is the label)")],
    test: Annotated[str, typer.Option(help="CSV of rows to predict (a label column there is used for accuracy)")],
    model: Annotated[str, typer.Option(help="model: name@alias, models:/..., runs:/... or a directory")] = DEFAULT_REF,
    out: Annotated[str | None, typer.Option(help="predictions CSV (default: print)")] = None,
    label: Annotated[str, typer.Option(help="label column name (default: the train CSV's last column)")] = "",
    n_ensemble: Annotated[int, typer.Option(help="permutations averaged", min=1)] = 1,
    max_queries: Annotated[int, typer.Option(help="rows answered per sequence (as the model was trained)",
                                             min=1, max=MAX_QUERIES)] = DEFAULT_MAX_QUERIES,
    cutoff_len: Annotated[int | None, typer.Option(help="tokens per sequence (default: the model's window); a "
                                                   "context over it is answered from its nearest-neighbour shots")] = None,
) -> None:
    """Predict the rows of a CSV from a labelled CSV, in context. With --out, a long run shows progress and
    saves results as it goes (OUT.partial): rerun the same command after an interruption to resume."""
    import contextlib

    from mllm.core.errors import InputError, StageFailed

    try:
        from mllm.inference.job import (
            check_output_path,
            claim_output,
            fingerprint,
            output_bytes,
            partial_path,
            predict_table,
        )
        from mllm.inference.predict import Predictor
        from mllm.inference.table import load_table, read_queries
        from mllm.model.loading import load_trained_with_tokenizer
        from mllm.model.references import resolve

        if out:  # found before the tables are read, not after the compute
            check_output_path(out, [train, test])
        X, y = load_table(train, label or None)
        queries, truth = read_queries(test, list(X.columns), y.name)
        claim = (claim_output(out, [train, test], output_bytes(len(queries), y.nunique())) if out
                 else contextlib.nullcontext())
        with claim:  # --out is checked and locked before the model loads
            model_dir = resolve(model)
            pred = Predictor(*load_trained_with_tokenizer(model_dir), n_ensemble=n_ensemble, max_queries=max_queries,
                             cutoff_len=cutoff_len)
            key = fingerprint([train, test], model_dir, {"label": y.name, "n_ensemble": n_ensemble,
                                                          "max_queries": max_queries, "cutoff_len": cutoff_len}) if out else ""
            result = predict_table(pred, X, y, queries, out, key)
    except InputError as err:
        _fail(str(err), 2)
    except StageFailed as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        saved = (f"; the rows answered so far are in {partial_path(out)}: rerun the same command to resume"
                 if out and partial_path(out).exists() else "")
        _fail(f"interrupted{saved}", 130)
    if out:
        typer.echo(f"{len(result)} predictions -> {out}")
    else:
        typer.echo(result.to_csv(index=False), nl=False)
    if truth is not None:
        _report_accuracy(test, y, truth, result["prediction"])


def _report_accuracy(test: str, y, truth, prediction) -> None:
    """Accuracy over the test rows that carry a label, each label read in the context's spelling (a "0" is the
    class "0.0"); warnings where the user likely erred: labels the context never shows, or none at all."""
    import numpy as np

    from mllm.inference.table import match_labels

    classes = set(y.astype(str))
    truth = match_labels(truth, classes)
    known = truth.notna().to_numpy()
    if not known.any():
        typer.echo(f"no accuracy: the {y.name!r} column of {test} holds no label", err=True)
        return
    labelled = truth[known].astype(str)
    unseen = labelled[~labelled.isin(classes)]
    if len(unseen) == len(labelled):
        typer.echo(f"warning: no label in {test} is a class of the context ({', '.join(sorted(classes)[:5])}); "
                   f"it has {', '.join(map(repr, sorted(set(unseen))[:5]))}: is --label the right column?", err=True)
    elif len(unseen):
        typer.echo(f"warning: {len(unseen)} test rows have labels the context never shows "
                   f"({', '.join(map(repr, sorted(set(unseen))[:5]))}); they count as wrong", err=True)
    acc = float(np.mean(prediction.astype(str).to_numpy()[known] == labelled.to_numpy()))
    unlabelled = f"; {int((~known).sum())} rows without a label not counted" if (~known).any() else ""
    typer.echo(f"accuracy on {test} ({y.name}, {int(known.sum())} rows): {acc:.4f}{unlabelled}", err=True)


@app.command()
def pipeline(
    stages: Annotated[list[str] | None, typer.Argument(help="stages to run (default: all, in order)")] = None,
    repo: Annotated[str, typer.Option(help="the project checkout")] = ".",
) -> None:
    """Run the whole pipeline once as a Prefect flow (each DVC stage a task run; only changed stages rerun)."""
    from flows.pipeline import pipeline_flow
    from mllm.core.errors import InputError, StageFailed

    try:
        states = pipeline_flow(repo=repo, stages=stages)
    except InputError as err:
        _fail(str(err), 2)
    except StageFailed as err:
        _fail(str(err), 1)
    typer.echo(", ".join(f"{k}: {v}" for k, v in states.items()))


@app.command()
def serve(
    params: ParamsOpt = "params.yaml",
    cron: Annotated[str | None, typer.Option(help="override pipeline.cron")] = None,
    repo: Annotated[str, typer.Option(help="the project checkout the runs use")] = ".",
) -> None:
    """Serve the pipeline as a Prefect deployment on its cron schedule (long-running; Ctrl-C stops).
    Point PREFECT_API_URL at a Prefect server (`prefect server start`) to see and trigger it in the UI."""
    from mllm.core.params import ParamsError, PipelineParams, load_params

    try:
        pp = load_params(params).pipeline
        if cron:
            pp = PipelineParams(cron=cron, deployment=pp.deployment)
    except (ParamsError, ValueError) as err:
        _fail(str(err), 2)
    from flows.pipeline import pipeline_flow

    typer.echo(f"serving deployment pipeline/{pp.deployment} on cron '{pp.cron}' (repo {Path(repo).resolve()})")
    pipeline_flow.serve(name=pp.deployment, cron=pp.cron, parameters={"repo": str(Path(repo).resolve())})


@app.command("import-corpus")
def import_corpus(
    src: Annotated[str, typer.Argument(help="a LLaMA-Factory dataset file (.json or .jsonl), e.g. the authors' corpus")],
    name: Annotated[str, typer.Option(help="the corpus name a training stage uses (train.stages[].corpus)")],
    params: ParamsOpt = "params.yaml",
    out: Annotated[str, typer.Option(help="corpus directory (the encode stage's)")] = "data/corpus",
    tokenizer: Annotated[str | None, typer.Option(help="counts tokens; default: params encode.tokenizer")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="longest sequence accepted, in tokens; default: params "
                                                   "encode.cutoff_len", min=1)] = None,
    set_: SetOpt = None,
) -> None:
    """Import a corpus in MachineLearningLM's LLaMA-Factory format (sharegpt messages or alpaca) as corpus
    shards under OUT/NAME, for `train.stages[].corpus: NAME`."""

    def start(overrides):
        from mllm.core.errors import InputError
        from mllm.core.params import CORPUS_NAME, load_params
        from mllm.text.corpus import import_corpus as run_import
        from mllm.text.tokenizer import load_tokenizer

        if not re.fullmatch(CORPUS_NAME, name):
            raise InputError(f"corpus name {name!r}: letters, digits, '_', '.', '-' only")
        ep = load_params(params, overrides).encode
        tok = load_tokenizer(tokenizer or ep.tokenizer)
        try:
            return run_import(src, Path(out) / name, tok, max_tokens=max_tokens or ep.cutoff_len)
        except ValueError as err:
            raise InputError(str(err)) from None

    s = _run(params, set_, start, (str(Path(out) / name),))
    unlisted = f"; {s['unlisted_labels']} answers name a class the prompt's shots miss" if s["unlisted_labels"] else ""
    typer.echo(f"imported {s['sequences']} sequences ({s['tokens']} tokens, longest {s['max_tokens']}) "
               f"-> {out}/{name} ({s['shards']} shards){unlisted}")


@app.command("plant")
def plant(
    params: ParamsOpt = "params.yaml",
    out: Annotated[str, typer.Option(help="output model directory")] = "models/tiny-base",
    check: Annotated[str | None, typer.Option(help="fail unless this committed base has the same weights")] = None,
    set_: SetOpt = None,
) -> None:
    """Compile the embedded base: a kernel-vote in-context classifier written into Qwen2 weights
    (mllm/model/plant.py, settings from params.yaml `plant`), with the embedded tokenizer. Deterministic: the
    same settings give the same bytes."""

    def start(overrides):
        from flows.plant import run_plant

        return run_plant(params, out, check, overrides)

    rec = _run(params, set_, start, (out,))
    typer.echo(f"planted kernel-vote base ({rec['params'] / 1e6:.1f}M params, sha256 {rec['model_sha256'][:12]}) -> {out}"
               + (f"; same weights as {check}" if check else ""))


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
