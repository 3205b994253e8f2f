"""``mllm`` command line: thin wrappers over the stage flows."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Teach language models to do ML in context.")

ParamsOpt = Annotated[str, typer.Option("--params", "-p", help="params.yaml to read")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a param, e.g. -S generate.num_tasks=100 (repeatable)"),
]


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
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


@app.command()
def generate(
    params: ParamsOpt = "params.yaml",
    out: Annotated[str, typer.Option(help="output directory of Parquet shards")] = "data/generated",
    set_: SetOpt = None,
) -> None:
    """Generate synthetic classification tasks from SCM priors into checked Parquet shards."""
    from mllm.config import ParamsError, load_params
    from mllm.validation import DataCheckError

    overrides = parse_overrides(set_)
    try:
        load_params(params, overrides)  # fail on bad params before Prefect or any work starts
        from flows.generate import run_generate

        manifest = run_generate(params, out, overrides)
    except ParamsError as err:
        _fail(str(err), 2)
    except DataCheckError as err:
        _fail(str(err), 1)
    typer.echo(f"generated {manifest['tasks']} tasks in {len(manifest['shards'])} shards -> {out}")


@app.command("filter")
def filter_(
    params: ParamsOpt = "params.yaml",
    generated: Annotated[str, typer.Option(help="generate stage output")] = "data/generated",
    out: Annotated[str, typer.Option(help="output directory")] = "data/filtered",
    metrics: Annotated[str, typer.Option(help="summary JSON for `dvc metrics`")] = "metrics/filter.json",
    set_: SetOpt = None,
) -> None:
    """Keep the tasks a random-forest teacher can learn; build the warm-up (consensus) corpus."""
    from mllm.config import ParamsError, load_params
    from mllm.validation import DataCheckError

    overrides = parse_overrides(set_)
    try:
        load_params(params, overrides)
        from flows.filter import run_filter

        summary = run_filter(params, generated, out, metrics, overrides)
    except (ParamsError, FileNotFoundError) as err:
        _fail(str(err), 2)
    except DataCheckError as err:
        _fail(str(err), 1)
    typer.echo(f"kept {summary['kept']} of {summary['tasks']} tasks ({100 * summary['kept_share']:.1f}%); "
               f"warm-up corpus {summary['warmup_tasks']} tasks -> {out}")


@app.command()
def tokenizer(
    params: ParamsOpt = "params.yaml",
    out: Annotated[str, typer.Option(help="output directory")] = "data/tokenizer",
    set_: SetOpt = None,
) -> None:
    """Build the embedded default tokenizer (a Hugging Face tokenizer directory)."""
    from mllm.atomic import atomic_dir
    from mllm.config import ParamsError, load_params
    from mllm.tokenizer import build_tokenizer, save_tokenizer

    try:
        p = load_params(params, parse_overrides(set_))
    except ParamsError as err:
        _fail(str(err), 2)
    tok = build_tokenizer(p.tokenizer.numbers)
    with atomic_dir(out) as tmp:
        save_tokenizer(tok, tmp, p.tokenizer.numbers)
    typer.echo(f"tokenizer ({p.tokenizer.numbers} numbers, {len(tok)} tokens) -> {out}")


@app.command()
def encode(
    params: ParamsOpt = "params.yaml",
    filtered: Annotated[str, typer.Option(help="filter stage output")] = "data/filtered",
    out: Annotated[str, typer.Option(help="output directory")] = "data/corpus",
    metrics: Annotated[str, typer.Option(help="summary JSON for `dvc metrics`")] = "metrics/encode.json",
    set_: SetOpt = None,
) -> None:
    """Encode filtered tasks into the chat-format training corpora (full and warm-up)."""
    from mllm.config import ParamsError, load_params

    overrides = parse_overrides(set_)
    try:
        load_params(params, overrides)
        from flows.encode import run_encode

        summary = run_encode(params, filtered, out, metrics, overrides)
    except (ParamsError, FileNotFoundError, ValueError) as err:
        _fail(str(err), 2)
    full, warm = summary["full"], summary["warmup"]
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
    from mllm.config import ParamsError, load_params
    from mllm.model import ModelError
    from mllm.train import TrainingError, check_corpus

    overrides = parse_overrides(set_)
    try:
        p = load_params(params, overrides)
        check_corpus(p, corpus, None)  # bad corpus: fail before the flow and the model load
        from flows.train import TrainFailed, train_flow

        summary = train_flow(params_path=params, corpus=corpus, out=out, overrides=overrides, time_budget=time_budget)
    except (ParamsError, TrainingError, ModelError, FileNotFoundError) as err:
        _fail(str(err), 2)
    except TrainFailed as err:
        _fail(str(err), 1)
    state = "complete" if summary["complete"] else "stopped at the time budget (rerun to continue)"
    typer.echo(f"trained: {state}; final loss {summary['final_loss']:.4f}; model -> {out}/model; "
               f"MLflow run {summary['run_id']}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
