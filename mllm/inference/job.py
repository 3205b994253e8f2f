"""Long predictions: progress on a terminal, and results written block by block so that an interrupted run
resumes where it stopped.

The output CSV appears only when every row is answered (an atomic rename). Until then results are appended
to ``<out>.partial``, one line per row after each block (flushed and fsync'ed): a first line holding the
run's fingerprint (the inputs' and the model's bytes, the options), then CSV with the row number. A rerun
with the same fingerprint skips the rows found there; a different one starts afresh. Blocks are planned
from the whole table and answered independently, so a resumed run writes the same bytes as an uninterrupted
one.

A run holds an exclusive lock on ``<out>.partial`` from its checks (before the model loads) to its end, so a
second run to the same ``out`` is refused at once instead of writing into the first one's file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from mllm.core.atomic import atomic_path, umask
from mllm.core.digest import dir_digest, file_digest
from mllm.core.errors import InputError, StageFailed
from mllm.inference.predict import Predictor, prediction_frame

FORMAT = "mllm-predictions-partial/1"


class OutputError(InputError):
    """An output path that cannot be written as asked; found before the model loads."""


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


def _csv_line(cells: list[str]) -> str:
    """One CSV line with pandas' quoting (a label holding a comma or a quote is quoted)."""
    return pd.DataFrame(columns=cells).to_csv(index=False)


def output_bytes(n_rows: int, n_classes: int) -> int:
    """About what a run writes for ``n_rows`` predictions of ``n_classes`` (the partial file and the CSV side by
    side at the end): a probability is written with up to 17 significant digits."""
    return 2 * n_rows * (24 * (n_classes + 2)) + 4096


def check_output_path(out: str | Path, inputs: list[str | Path]) -> None:
    """What the path alone tells: ``out`` is none of ``inputs``, not a directory, and in one that exists."""
    out = Path(out)
    for f in inputs:
        if out.resolve() == Path(f).resolve() or (out.exists() and Path(f).exists() and out.samefile(f)):
            raise OutputError(f"--out {out} is the input table {f}: the predictions would overwrite it; "
                              "name another file")
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory: name the predictions CSV file")
    if not out.parent.is_dir():
        raise OutputError(f"--out {out}: no directory {out.parent} (create it first)")


@contextlib.contextmanager
def claim_output(out: str | Path, inputs: list[str | Path], need_bytes: int = 0) -> Iterator[Path]:
    """Take ``out`` for one run, before any work: it is none of ``inputs``, its directory exists, takes a
    file and has about ``need_bytes`` free, and no other run writes it (an exclusive lock on its partial
    file, held until the run ends). Yields the partial file's path. If the run fails or is interrupted, a
    partial file this run made that holds no answered row is removed; one with rows stays, for a rerun."""
    out = Path(out)
    check_output_path(out, inputs)
    parent = out.parent
    part = partial_path(out)
    existed = part.exists()
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
    except OSError as err:
        raise OutputError(f"--out {out}: cannot write in {parent} ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"--out {out}: cannot lock {part} ({err.strerror})") from None
            raise OutputError(f"--out {out}: another run is writing it now ({part} is locked); wait for it to "
                              "finish, or name another file") from None
        if not part.exists() or not os.path.samestat(os.fstat(fd), part.stat()):
            raise OutputError(f"--out {out}: another run just finished writing it; run again to overwrite it")
        free = shutil.disk_usage(parent).free
        if need_bytes > free:
            raise OutputError(f"--out {out}: {parent} has {free:,} bytes free; the predictions need about "
                              f"{need_bytes:,}")
        yield part
    except BaseException:
        if not existed and _answered_rows(part) == 0:
            part.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _answered_rows(part: Path) -> int:
    """Lines after the fingerprint and the header (0 for a missing or unreadable file)."""
    try:
        with part.open("rb") as fh:
            return max(0, sum(1 for _ in fh) - 2)
    except OSError:
        return 0


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
    plan = pred.plan(enc)  # a context that cannot fit the window is refused before the partial file is touched
    done = None
    part = None
    if out is not None:
        part = partial_path(out)
        done = _read_partial(part, key, columns)
        if done is None:
            with _writing(part), part.open("w") as fh:
                fh.write(f"# {FORMAT} {key}\n" + _csv_line(["row", *columns]))
    have = set() if done is None else set(done.index.tolist())
    blocks = [b for b in plan if not set(b.rows.tolist()) <= have]
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
                with _writing(part), part.open("a") as fh:
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
        with _writing(Path(out)), atomic_path(out) as tmp:
            result.to_csv(tmp, index=False)
        part.unlink()
    return result


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A write that fails (a full disk, a file system gone read-only) ends the run with one line that names
    the file; the rows already in the partial file stay for a rerun."""
    try:
        yield
    except OSError as err:
        raise StageFailed(f"writing {path} failed ({err.strerror or err}); free the space or fix the cause, "
                          "then rerun the same command: the rows saved so far are kept") from None
