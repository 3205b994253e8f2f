"""User tables: labelled CSVs (the context) and the rows to predict, read the same way for the CLI,
evaluation and benchmarks. Errors name the file and what is wrong."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from mllm.core.errors import InputError


class TableError(InputError):
    """A table that cannot be evaluated; the message names the file and the problem."""


def check_finite(table: pd.DataFrame, where: str) -> None:
    """Infinite numbers are refused, naming their columns, whichever API brought them (a CSV's "inf", a
    DataFrame, a numpy array): a missing value is an empty cell or NaN."""
    numeric = table.select_dtypes("number")
    bad = [str(c) for c in numeric.columns if np.isinf(numeric[c].to_numpy(dtype=np.float64, na_value=np.nan)).any()]
    if bad:
        raise TableError(f"infinite values in the {where} rows, column(s) {', '.join(bad[:5])}: give finite "
                         "numbers, or leave the cells empty (NaN) for missing values")


def _read(path: Path, **kw) -> pd.DataFrame:
    """``pd.read_csv`` with the ways a file can fail named: missing, a directory, not UTF-8, not a table."""
    if path.is_dir():
        raise TableError(f"{path}: is a directory; name a CSV file")
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, **kw)
    except UnicodeDecodeError as err:
        raise TableError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         "save the table as UTF-8 CSV") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as err:
        raise TableError(f"{path}: not a readable CSV table ({err})") from None
    _check_header(path)
    return df


def _check_header(path: Path) -> None:
    """Column names are unique: pandas would silently rename a repeated ``x`` to ``x.1``."""
    with path.open(encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    repeated = [name for name, count in Counter(n.strip() for n in header).items() if count > 1]
    if repeated:
        raise TableError(f"{path}: repeated column name(s) {', '.join(map(repr, repeated[:5]))}; "
                         "give every column its own name")


def read_labels(path: Path, column: str) -> pd.Series:
    """A label column as the strings written in the file (``1`` stays "1" beside an empty cell, "None" and
    "NA" are labels); an empty cell is a missing label (NaN)."""
    y = _read(path, usecols=[column], dtype=str, keep_default_na=False)[column].str.strip()
    return y.where(y != "", None).rename(column)


def load_table(path: str | Path, label: str | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """A labelled CSV: features and the label column (``label``; when None, a column named "label", else
    the last column), labels read as the strings in the file. Errors name the file and what is wrong."""
    path = Path(path)
    df = _read(path)
    if df.shape[0] == 0:
        raise TableError(f"{path}: no data rows")
    if df.shape[1] < 2:
        raise TableError(f"{path}: needs at least one feature column and a label column")
    if label is not None and label not in df.columns:
        raise TableError(f"{path}: no label column {label!r}; its columns are {_names(df.columns)}")
    target = label if label is not None else ("label" if "label" in df.columns else df.columns[-1])
    y = read_labels(path, target)
    if y.isna().any():
        raise TableError(f"{path}: {int(y.isna().sum())} rows have no label (column {target!r})")
    X = coerce_numeric(df.drop(columns=[target]))
    check_finite(X, f"{path.name} context")
    return X, y


def _names(columns, at_most: int = 8) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names[:at_most]) + (f" ... ({len(names)} columns)" if len(names) > at_most else "")


# A number written with thousands separators ("5,120", "-1,234,567.5"), as spreadsheets export them.
_GROUPED = re.compile(r"^\s*[+-]?\d{1,3}(,\d{3})+(\.\d*)?\s*$")


def _ungroup(s: pd.Series) -> pd.Series:
    """``s`` with thousands separators dropped, when every cell holding a comma is such a number (a column
    where a comma means anything else, a decimal comma or a list, is left as it is)."""
    text = s.astype(str)
    comma = s.notna() & text.str.contains(",", regex=False)
    if not comma.any() or not text[comma].str.match(_GROUPED).all():
        return s
    return s.where(~comma, text.str.replace(",", "", regex=False))


def coerce_numeric(df: pd.DataFrame, share: float = 0.9) -> pd.DataFrame:
    """A text column whose values are at least ``share`` numbers is numeric (numbers written with thousands
    separators count); its other cells ("?", "n/a", garbage) become missing values. Columns below the share
    stay categorical."""
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_numeric_dtype(s) or s.notna().sum() == 0:
            continue
        num = pd.to_numeric(_ungroup(s), errors="coerce")
        if num.notna().sum() >= share * s.notna().sum():
            out[col] = num
    return out


def read_queries(path: str | Path, columns: list[str], target: str) -> tuple[pd.DataFrame, pd.Series | None]:
    """The rows to predict from a CSV: the context's ``columns`` (in that order), and the ``target`` column
    when the file has one (strings, as ``read_labels``; rows with an empty cell count for no accuracy)."""
    path = Path(path)
    df = _read(path)
    if df.shape[0] == 0:
        raise TableError(f"{path}: no data rows")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: missing the context's columns {missing[:5]}")
    truth = read_labels(path, target) if target in df.columns else None
    queries = coerce_numeric(df[list(columns)])
    check_finite(queries, f"{path.name} query")
    return queries, truth


def match_labels(truth: pd.Series, classes) -> pd.Series:
    """Test labels in the context's spelling: a label written as another number of the same value ("0" for
    the context's "0.0", "1e1" for "10") is that class; others are kept as written. Missing stay missing."""
    spelled = {str(c) for c in classes}
    numeric: dict[float, str] = {}
    for c in spelled:
        try:
            numeric.setdefault(float(c), c)
        except ValueError:
            pass

    def one(v):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v in spelled:
            return v
        try:
            return numeric.get(float(v), v)
        except ValueError:
            return v

    return truth.map(one)
