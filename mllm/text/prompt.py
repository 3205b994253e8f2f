"""The prompt: MachineLearningLM's chat format, byte for byte, written and read back.

The authors' released model was trained on this text and their released corpora are written in it, so it is
an interface, like a file format (their ``concat`` prompt style, feature descriptions off). system: the task
statement; user: a ``[Data]`` block (features, ``Label set = [0, 1, ...]`` of the shot rows' labels, row
syntax), ``[Training set]`` with a row count and rows ``v1,...,vd|label``, ``[Test set]`` with a row count
and rows ``ID i:v1,...,vd``, ``[Output requirements]``; assistant: ``[{"id": 0, "label": 1}, ...]`` (JSON
with its default ``, `` and ``: `` separators). Values are the integer codes of ``mllm.text.encoding`` or,
for a model that reads text, text with its commas written as spaces (the authors' rule: a comma separates
values) and line breaks as spaces (a row is one line).
"""

from __future__ import annotations

import json
import re

import numpy as np

from mllm.core.params import MAX_QUERIES

SYSTEM_PROMPT = "You are an AI assistant. Your task is supervised classification."

OUTPUT_REQUIREMENTS = (
    "[Output requirements]\n"
    "Return **only** a JSON array.\n"
    'Each element: {"id": <ID>, "label": <predicted_label>}\n'
    "\n"
    "Begin when ready. Do not output anything except the JSON array.\n"
)


def value_text(v) -> str:
    """One cell as the prompt writes it: an integer code as digits, text with commas and line breaks as spaces."""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return re.sub(r"[,\r\n]", " ", str(v))


def row_text(row) -> str:
    return ",".join(value_text(v) for v in row)


def shot_lines(shots: np.ndarray, labels: np.ndarray) -> list[str]:
    return [row_text(row) + f"|{int(k)}" for row, k in zip(shots.tolist(), np.asarray(labels).tolist())]


def query_lines(queries: np.ndarray) -> list[str]:
    return [f"ID {i}:" + row_text(row) for i, row in enumerate(queries.tolist())]


def label_set(shot_labels, labels=None) -> str:
    """``[0, 1, 2]``: the distinct labels of the shot rows, sorted (or ``labels`` when given)."""
    values = sorted({int(k) for k in np.asarray(shot_labels).tolist()}) if labels is None else [int(k) for k in labels]
    return str(values)


def user_head(shots: np.ndarray, shot_labels: np.ndarray, labels=None) -> str:
    """The user prompt up to the test rows' count: everything that does not depend on the test rows (a
    prefix that chunks of test rows share)."""
    rows = shot_lines(shots, shot_labels)
    return (
        "\n[Data]\n"
        f"• Each sample = {shots.shape[1]} features + 1 label.  Label set = {label_set(shot_labels, labels)}.  \n"
        '• Features in a row are comma-separated.  Features and label are separated by "|".\n'
        "\n\n"
        "[Training set]  (order of rows does NOT matter)  \n"
        f"{len(rows)} rows:  \n"
        + "\n".join(rows) + "\n\n"
        "[Test set]  (keep original order!)  \n"
        "Each row = ID, then N features (ID is NOT a feature).  \n"
    )


def user_tail(queries: np.ndarray) -> str:
    """The rest of the user prompt: the test rows' count, the test rows and the output requirements."""
    if queries.shape[0] > MAX_QUERIES:
        raise ValueError(f"{queries.shape[0]} query rows in one prompt; at most {MAX_QUERIES}")
    rows = query_lines(queries)
    return f"{len(rows)} rows:  \n" + "\n".join(rows) + "\n\n" + OUTPUT_REQUIREMENTS


def user_prompt(shots: np.ndarray, shot_labels: np.ndarray, queries: np.ndarray) -> str:
    return user_head(shots, shot_labels) + user_tail(queries)


def answer_piece(i: int) -> str:
    """The answer text before label i (after label i-1): ``[{"id": 0, "label": `` first. Pieces end at the
    space before a label's digits, where every supported tokenizer splits, so piecewise tokens equal the
    whole answer's."""
    return '[{"id": 0, "label": ' if i == 0 else f'}}, {{"id": {i}, "label": '


ANSWER_END = "}]"


def answer(query_labels: np.ndarray) -> str:
    labels = np.asarray(query_labels).tolist()
    return "".join(answer_piece(i) + str(int(k)) for i, k in enumerate(labels)) + (ANSWER_END if labels else "[]")


def messages(shots, shot_labels, queries, query_labels=None) -> list[dict]:
    out = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(shots, shot_labels, queries)},
    ]
    if query_labels is not None:
        out.append({"role": "assistant", "content": answer(query_labels)})
    return out


ANSWER_LABEL = re.compile(r'"label": ?(\d+)')   # a label value inside a JSON answer (group 1)
TRAINING_ROWS = re.compile(r"\[Training set\][^\n]*\n\d+ rows: *\n")   # what precedes the first shot row
_HEADER = re.compile(r"Each sample = (\d+) features \+ 1 label\.  Label set = \[([\d, ]*)\]\.")
_TEST_ROWS = re.compile(r"\[Test set\][^\n]*\n[^\n]*\n\d+ rows: *\n")
_QUERY = re.compile(r"^ID (\d+):(.*)$")


def shot_section(user: str) -> tuple[int, int]:
    """Character span of the shot rows (``v1,...,vd|k`` lines) in a user prompt; (-1, -1) if it has none."""
    m = TRAINING_ROWS.search(user)
    if not m:
        return -1, -1
    end = user.find("\n\n", m.end())
    return m.end(), (len(user) if end < 0 else end)


def shot_label_spans(user: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the labels of the ``[Training set]`` rows of a user prompt."""
    spans = []
    pos, end = shot_section(user)
    while 0 <= pos < end:
        nl = user.find("\n", pos, end)
        line_end = end if nl < 0 else nl
        bar = user.rfind("|", pos, line_end)
        if bar >= 0:
            spans.append((bar + 1, line_end))
        pos = line_end + 1
    return spans


def _shuffle_spans(text: str, spans: list[tuple[int, int]], rng) -> str:
    values = [text[a:b] for a, b in spans]
    values = [values[i] for i in rng.permutation(len(values))]
    out, at = [], 0
    for (a, b), v in zip(spans, values, strict=True):
        out += [text[at:a], v]
        at = b
    return "".join(out) + text[at:]


def permute_labels(messages: list[dict], rng) -> list[dict]:
    """A control sequence: the same task with its shot labels shuffled among the shot rows and its answer's
    labels among the queries. The label counts, the label set and every token count stay; what the features
    say about the labels goes."""
    out = [dict(m) for m in messages]
    out[-2]["content"] = _shuffle_spans(out[-2]["content"], shot_label_spans(out[-2]["content"]), rng)
    answer = out[-1]["content"]
    out[-1]["content"] = _shuffle_spans(answer, [m.span(1) for m in ANSWER_LABEL.finditer(answer)], rng)
    return out


def _numbers(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what}: not integer codes: {text[:80]!r}") from None


def parse_user_prompt(text: str, codes: bool = True) -> dict:
    """Read a user prompt back into arrays (the inverse of ``user_prompt``): integer codes, or with
    ``codes=False`` the cells as written (text values included)."""
    cells = _numbers if codes else (lambda row, what: row.split(","))
    m = _HEADER.search(text)
    if not m:
        raise ValueError("not a MachineLearningLM prompt: no '[Data]' line 'Each sample = d features + 1 label.  "
                         "Label set = [...]'")
    d = int(m.group(1))
    label_values = [int(v) for v in m.group(2).split(",") if v.strip()]
    shots, labels, queries = [], [], []
    a, b = shot_section(text)
    for line in text[a:b].split("\n") if a >= 0 and b > a else []:
        values, bar, k = line.rpartition("|")
        if not bar or not k.isdigit():
            raise ValueError(f"training row is not v1,...,v{d}|label: {line[:80]!r}")
        shots.append(cells(values, "training row"))
        labels.append(int(k))
    t = _TEST_ROWS.search(text)
    if t:
        for line in text[t.end():].split("\n"):
            if not (q := _QUERY.match(line)):
                break
            if int(q.group(1)) != len(queries):
                raise ValueError(f"test row ids out of order at ID {q.group(1)}")
            queries.append(cells(q.group(2), "test row"))
    for row in shots + queries:
        if len(row) != d:
            raise ValueError(f"a row has {len(row)} values; the header says {d} features")
    return {
        "n_features": d,
        "n_classes": max(label_values + labels, default=-1) + 1,
        "label_set": label_values,
        "shots": np.array(shots, dtype=np.int64 if codes else object).reshape(-1, d),
        "shot_labels": np.array(labels, dtype=np.int64),
        "queries": np.array(queries, dtype=np.int64 if codes else object).reshape(-1, d),
    }


def parse_answer(text: str, n_queries: int, n_classes: int) -> np.ndarray:
    """Labels from a JSON answer; raises ``ValueError`` naming what is wrong."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"answer is not JSON: {err}") from None
    if not isinstance(items, list) or len(items) != n_queries:
        raise ValueError(f"answer must be a JSON array of {n_queries} objects")
    out = np.empty(n_queries, dtype=np.int64)
    for i, item in enumerate(items):
        label = item.get("label") if isinstance(item, dict) else None
        if not isinstance(item, dict) or item.get("id") != i or not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(f"answer item {i} is not {{\"id\": {i}, \"label\": k}}: {item!r}")
        if not 0 <= item["label"] < n_classes:
            raise ValueError(f"answer item {i}: label {item['label']} outside 0..{n_classes - 1}")
        out[i] = item["label"]
    return out
