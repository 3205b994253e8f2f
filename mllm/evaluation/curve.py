"""Accuracy vs training tokens: the base (0 tokens), each snapshot the train stage kept
(``train.snapshot_every``) and the trained model, each scored by the predictor on a slice of the evaluation
(``evaluate.curve``): the first held-out synthetic tasks, and the real tables at one shot count and one seed.
Whether accuracy rises with the tokens trained on, and whether it rises on the control corpus too, is the
evidence that the corpus teaches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mllm.core.atomic import atomic_path
from mllm.core.errors import InputError
from mllm.core.params import CurveParams, Params
from mllm.data.task import Task
from mllm.evaluation.models import InContext
from mllm.evaluation.suite import evaluate_dataset
from mllm.evaluation.synthetic import heldout_accuracy, heldout_label_loss

COLUMNS = ["step", "tokens", "synthetic_accuracy", "synthetic_label_loss", "tables_accuracy"]


def read_snapshots(index: str | Path) -> list[dict]:
    """The train stage's snapshot index (``data/train/snapshots/index.json``): entries ``step``, ``tokens``
    and ``path`` (resolved here), in step order; every path must be a model directory."""
    index = Path(index)
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the snapshot index {index}: {err}") from None
    out = []
    for e in sorted(entries, key=lambda e: e["step"]):
        path = (index.parent / e["path"]).resolve()
        if not (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise InputError(f"snapshot {e['step']} in {index}: {path} is not a model directory")
        out.append({"step": int(e["step"]), "tokens": int(e["tokens"]), "path": str(path)})
    return out


def curve_point(fn: InContext, tables: dict, held: list[Task], params: Params) -> dict:
    """One model's point: accuracy over the held-out tasks' scored rows and their teacher-forced label loss
    (which moves before accuracy does), and the mean over the real tables (at ``curve.shots``, the first
    evaluation seed, ``curve.max_test`` rows) of each table's accuracy."""
    ep = params.evaluate
    cp: CurveParams = ep.curve
    point = {"synthetic_accuracy": None, "synthetic_label_loss": None, "tables_accuracy": None}
    if held and cp.synthetic_tasks:
        sp, first = ep.synthetic, held[:cp.synthetic_tasks]
        point["synthetic_accuracy"] = heldout_accuracy(fn, first, sp.shots, sp.queries)
        point["synthetic_label_loss"] = heldout_label_loss(fn.predictor.model, fn.predictor.tokenizer, first,
                                                           params.encode, sp.shots, sp.queries, params.seed)
    accs = []
    for name, (X, y) in tables.items():
        rows = evaluate_dataset(name, X, y, {"m": fn}, [cp.shots], ep.seeds[:1], max_test=cp.max_test,
                                test_chunk=ep.test_chunk)
        accs += [r["accuracy"] for r in rows if r["seed"] == ep.seeds[0]]
    if accs:
        point["tables_accuracy"] = round(float(np.mean(accs)), 6)
    return point


def write_curve(points: list[dict], path: str | Path) -> None:
    """The curve as CSV for ``dvc plots`` (x: tokens), written atomically."""
    with atomic_path(path) as tmp:
        pd.DataFrame(points, columns=COLUMNS).to_csv(tmp, index=False)
