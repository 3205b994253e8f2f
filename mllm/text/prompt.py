"""The prompt: MachineLearningLM's chat format, written and read back.

system: the task statement; user: ``[Data]`` (shape, label set, row format), ``[Training set]`` rows
``v1,...,vd|label``, ``[Test set]`` rows ``ID i:v1,...,vd``, ``[Output requirements]``; assistant: the
answer, a JSON array ``[{"id":i,"label":k},...]``.
"""

from __future__ import annotations

import json
import re

import numpy as np

from mllm.core.params import MAX_QUERIES

SYSTEM_PROMPT = "You are an AI assistant. Your task is supervised classification."


def data_header(n_features: int, n_classes: int) -> str:
    labels = ", ".join(str(k) for k in range(n_classes))
    return (
        "[Data]\n"
        f"Each row has {n_features} features and 1 label. The label is one of: {labels}.\n"
        f"Training rows are v1,v2,...,v{n_features}|label and test rows are ID i:v1,v2,...,v{n_features}. "
        "Every value is an integer from 0 to 999."
    )


OUTPUT_REQUIREMENTS = (
    "[Output requirements]\n"
    'Answer with only a JSON array with one object per test row, in order: [{"id":i,"label":k},...]. '
    "Use only the labels listed above."
)


def shot_lines(shots: np.ndarray, labels: np.ndarray) -> list[str]:
    return [",".join(map(str, row)) + f"|{int(k)}" for row, k in zip(shots.tolist(), labels.tolist())]


def query_lines(queries: np.ndarray) -> list[str]:
    return [f"ID {i}:" + ",".join(map(str, row)) for i, row in enumerate(queries.tolist())]


def user_prompt(shots: np.ndarray, shot_labels: np.ndarray, queries: np.ndarray, n_classes: int) -> str:
    if queries.shape[0] > MAX_QUERIES:
        raise ValueError(f"{queries.shape[0]} query rows in one prompt; at most {MAX_QUERIES}")
    return "\n".join([
        data_header(shots.shape[1], n_classes), "",
        "[Training set]", *shot_lines(shots, shot_labels), "",
        "[Test set]", *query_lines(queries), "",
        OUTPUT_REQUIREMENTS,
    ])


def answer(query_labels: np.ndarray) -> str:
    return json.dumps([{"id": i, "label": int(k)} for i, k in enumerate(np.asarray(query_labels).tolist())],
                      separators=(",", ":"))


def messages(shots, shot_labels, queries, n_classes, query_labels=None) -> list[dict]:
    out = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(shots, shot_labels, queries, n_classes)},
    ]
    if query_labels is not None:
        out.append({"role": "assistant", "content": answer(query_labels)})
    return out


ANSWER_LABEL = re.compile(r'"label":(\d+)')   # a label value inside the JSON answer (group 1)
_ROW = re.compile(r"^(\d+(?:,\d+)*)\|(\d+)$")
_QUERY = re.compile(r"^ID (\d+):(\d+(?:,\d+)*)$")
_HEADER = re.compile(r"Each row has (\d+) features and 1 label\. The label is one of: ([\d, ]+)\.")


def parse_user_prompt(text: str) -> dict:
    """Read a user prompt back into arrays (the inverse of ``user_prompt``)."""
    m = _HEADER.search(text)
    if not m:
        raise ValueError("not an mllm prompt: no [Data] header")
    d = int(m.group(1))
    n_classes = len(m.group(2).split(","))
    shots, labels, queries = [], [], []
    section = None
    for line in text.splitlines():
        if line.startswith("["):
            section = line
            continue
        if section == "[Training set]" and (r := _ROW.match(line)):
            shots.append([int(v) for v in r.group(1).split(",")])
            labels.append(int(r.group(2)))
        elif section == "[Test set]" and (q := _QUERY.match(line)):
            if int(q.group(1)) != len(queries):
                raise ValueError(f"test row ids out of order at ID {q.group(1)}")
            queries.append([int(v) for v in q.group(2).split(",")])
    return {
        "n_features": d,
        "n_classes": n_classes,
        "shots": np.array(shots, dtype=np.int16).reshape(-1, d),
        "shot_labels": np.array(labels, dtype=np.int64),
        "queries": np.array(queries, dtype=np.int16).reshape(-1, d),
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
        if not isinstance(item, dict) or item.get("id") != i or not isinstance(item.get("label"), int):
            raise ValueError(f"answer item {i} is not {{\"id\":{i},\"label\":k}}: {item!r}")
        if not 0 <= item["label"] < n_classes:
            raise ValueError(f"answer item {i}: label {item['label']} outside 0..{n_classes - 1}")
        out[i] = item["label"]
    return out
