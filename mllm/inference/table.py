"""User tables: labelled CSVs (the context) and the rows to predict, read the same way for the CLI,
evaluation and benchmarks. Errors name the file and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mllm.core.errors import InputError


class TableError(InputError):
    """A table that cannot be evaluated; the message names the file and the problem."""


def load_table(path: str | Path, label: str = "label") -> tuple[pd.DataFrame, pd.Series]:
    """A CSV whose last column (or ``label``) is the target. Errors name the file and what is wrong."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise TableError(f"{path}: not a readable CSV table ({err})") from None
    if df.shape[0] == 0:
        raise TableError(f"{path}: no data rows")
    if df.shape[1] < 2:
        raise TableError(f"{path}: needs at least one feature column and a label column")
    target = label if label in df.columns else df.columns[-1]
    y = df.pop(target)
    if y.isna().any():
        raise TableError(f"{path}: {int(y.isna().sum())} rows have no label")
    return coerce_numeric(df), y


def coerce_numeric(df: pd.DataFrame, share: float = 0.9) -> pd.DataFrame:
    """A text column whose values are at least ``share`` numbers is numeric; its other cells ("?", "n/a",
    garbage) become missing values. Columns below the share stay categorical."""
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_numeric_dtype(s) or s.notna().sum() == 0:
            continue
        num = pd.to_numeric(s, errors="coerce")
        if num.notna().sum() >= share * s.notna().sum():
            out[col] = num
    return out


def read_queries(path: str | Path, columns: list[str], target: str) -> tuple[pd.DataFrame, pd.Series | None]:
    """The rows to predict from a CSV: the context's ``columns`` (in that order), and the ``target`` column
    when the file has one (for accuracy)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    df = pd.read_csv(path)
    truth = df.pop(target) if target in df.columns else None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: missing the context's columns {missing[:5]}")
    return coerce_numeric(df[list(columns)]), truth
