"""Long predictions: progress on a terminal, and results written block by block so that an interrupted run
resumes where it stopped.

The output CSV appears only when every row is answered (an atomic rename). Until then results are appended
to ``<out>.partial``, one line per row after each block (flushed and fsync'ed): a first line holding the
run's fingerprint (the inputs' and the model's bytes, the options), then CSV with the row number. A rerun
with the same fingerprint skips the rows found there; a different one starts afresh. Blocks are planned
from the whole table and answered independently, so a resumed run writes the same bytes as an uninterrupted
one.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mllm.core.atomic import atomic_path, umask
from mllm.core.digest import dir_digest, file_digest
from mllm.inference.predict import Predictor, prediction_frame

FORMAT = "mllm-predictions-partial/1"


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def fingerprint(files: list[str | Path], model_dir: str | Path, options: dict) -> str:
    """What a run's results depend on: the tables' bytes, the model's files, the prediction options."""
    h = hashlib.sha256(FORMAT.encode())
    for f in files:
        h.update(file_digest(f).encode())
    h.update(dir_digest(model_dir).encode())
    h.update(repr(sorted(options.items())).encode())
    return h.hexdigest()


def _read_partial(path: Path, key: str, columns: list[str]) -> pd.DataFrame | None:
    """The rows a previous run with the same fingerprint saved (None: no usable partial file). A line cut
    short by a kill is dropped; its block is answered again."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    first, _, body = text.partition("\n")
    if first != f"# {FORMAT} {key}":
        return None
    if not body.endswith("\n"):
        body = body[: body.rfind("\n") + 1]
    try:
        done = pd.read_csv(io.StringIO(body), dtype={"prediction": str}, keep_default_na=False,
                           float_precision="round_trip")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError):
        return None
    if list(done.columns) != ["row", *columns]:
        return None
    return done.drop_duplicates("row").set_index("row")


def predict_table(pred: Predictor, X: pd.DataFrame, y, queries: pd.DataFrame, out: str | Path | None = None,
                  key: str = "", progress: bool | None = None) -> pd.DataFrame:
    """Predictions for ``queries`` (``prediction`` and ``proba_<class>`` columns, in row order); with
    ``out``, written there, resumably (see module docstring). ``progress``: None shows a progress bar (rows,
    rows/s, time left) when standard error is a terminal."""
    from tqdm.auto import tqdm

    if pred.decode != "batched":
        raise ValueError("predict_table plans blocks: it needs a Predictor with decode='batched'")
    enc = pred.encode(X, y, queries)
    classes = enc.labels.classes
    columns = list(prediction_frame(classes, np.zeros((0, classes.size))).columns)
    n = len(queries)
    done = None
    part = None
    if out is not None:
        part = partial_path(out)
        done = _read_partial(part, key, columns)
        if done is None:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~umask())
            with os.fdopen(fd, "w") as fh:
                fh.write(f"# {FORMAT} {key}\n" + ",".join(["row", *columns]) + "\n")
    have = set() if done is None else set(done.index.tolist())
    blocks = [b for b in pred.plan(enc) if not set(b.rows.tolist()) <= have]
    try:  # a terminal that reports no width (a bare pty) still gets a bar
        width = os.get_terminal_size(sys.stderr.fileno()).columns or 100
    except (OSError, ValueError):
        width = 100
    bar = tqdm(total=n, initial=n - sum(len(b.rows) for b in blocks), unit="row", desc="predict",
               disable=None if progress is None else not progress, file=sys.stderr, ncols=width)
    results = []
    with bar:
        for block in blocks:
            proba = pred.predict_block(enc, block)
            frame = prediction_frame(classes, proba)
            frame.insert(0, "row", block.rows)
            if part is not None:
                with part.open("a") as fh:
                    fh.write(frame.to_csv(index=False, header=False))
                    fh.flush()
                    os.fsync(fh.fileno())
            else:
                results.append(frame)
            bar.update(len(block.rows))
    if part is None:
        result = pd.concat(results).set_index("row").sort_index()
    else:
        result = _read_partial(part, key, columns)
        missing = n - len(result) if result is not None else n
        if result is None or missing:
            raise RuntimeError(f"{part}: {missing} rows missing after the run; rerun to finish them")
        result = result.sort_index()
    result = result.reset_index(drop=True)
    if out is not None:
        with atomic_path(out) as tmp:
            result.to_csv(tmp, index=False)
        part.unlink()
    return result
