"""Teacher-forced label scoring of encoded (e.g. held-out synthetic) corpus sequences: a quick progress
measure used while building the embedded base, not the evaluation.

    python research/score_corpus.py --model models/tiny-base --corpus data/corpus/full --limit 200 [--by-position]

prints the label-scoring accuracy next to the majority class of each task's shots; ``--by-position`` adds each
shot label scored from the rows before it, next to the majority class and a 5-nearest-neighbour vote on those
rows (does the model use the features at all?).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mllm.inference.scoring import label_token_ids
from mllm.model.loading import load_trained_with_tokenizer
from mllm.model.training_data import IGNORE, tokenize_example
from mllm.text.corpus import read_corpus
from mllm.text.prompt import ANSWER_LABEL, parse_answer, parse_user_prompt


def score_sequence(model, tokenizer, messages: list[dict], n_classes: int) -> np.ndarray:
    """(n_queries, n_classes) label probabilities at the answer's label positions."""
    import torch

    full = tokenizer.apply_chat_template(messages, tokenize=False)
    answer_at = full.rfind(messages[2]["content"])
    spans = [(answer_at + m.start(1), answer_at + m.end(1)) for m in ANSWER_LABEL.finditer(messages[2]["content"])]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"]).reshape(-1, 2)
    starts = {int(a): i for i, (a, b) in enumerate(offsets) if b > a}
    positions = [starts[a] for a, _ in spans]
    cand = label_token_ids(tokenizer, n_classes)
    with torch.no_grad():
        ids = torch.as_tensor([enc["input_ids"]])
        logits = model(input_ids=ids).logits[0]
    sel = logits[torch.as_tensor(positions) - 1][:, cand].float()
    return torch.softmax(sel, dim=-1).numpy()


def evaluate_corpus(model, tokenizer, rows: list[dict]) -> dict:
    """Accuracy of argmax label scores vs the majority class of each task's shots, over corpus rows
    (dicts with ``messages`` and ``n_classes``)."""
    correct = majority = total = 0
    model.eval()
    for row in rows:
        msgs, k = row["messages"], row["n_classes"]
        table = parse_user_prompt(msgs[1]["content"])
        truth = parse_answer(msgs[2]["content"], table["queries"].shape[0], k)
        probs = score_sequence(model, tokenizer, msgs, k)
        correct += int((probs.argmax(axis=1) == truth).sum())
        majority += int((truth == np.bincount(table["shot_labels"], minlength=k).argmax()).sum())
        total += truth.size
    return {"queries": total, "accuracy": correct / max(total, 1), "majority": majority / max(total, 1)}


SHOT_BUCKETS = (1, 8, 32, 96)  # shot-position buckets: rows 1-7, 8-31, 32-95, 96+


def shot_label_accuracy(model, tokenizer, rows: list[dict], buckets=SHOT_BUCKETS, knn_k: int = 5) -> list[dict]:
    """Does the model learn *in context*? Each shot row's label scored from the rows before it (the shot-label
    objective), by shot position, next to what the same preceding rows give the majority class and a
    k-nearest-neighbour vote. A model that only learned class frequencies matches the majority column at every
    position; one that uses the features climbs towards kNN as the position grows. ~100 labels per sequence,
    so far more sensitive than the 10-20 query answers of ``evaluate_corpus``."""
    import torch
    from sklearn.neighbors import KNeighborsClassifier


    hits = np.zeros((len(buckets), 3))
    counts = np.zeros(len(buckets), dtype=np.int64)
    model.eval()
    for row in rows:
        msgs, k = row["messages"], row["n_classes"]
        table = parse_user_prompt(msgs[1]["content"])
        X, y = table["shots"].astype(np.float64), table["shot_labels"]
        ex = tokenize_example(tokenizer, msgs, shot_label_loss=True)
        pos = np.flatnonzero(ex["labels"] != IGNORE)[: y.size]  # shot labels come before the answer
        cand = label_token_ids(tokenizer, k)
        if not np.array_equal(ex["input_ids"][pos], np.asarray(cand)[y]):
            raise ValueError("shot label positions do not hold the shot labels (tokenizer mismatch?)")
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None]).logits[0]
        pred = logits[torch.as_tensor(pos) - 1][:, cand].float().argmax(-1).numpy()
        for i in range(1, y.size):
            b = int(np.searchsorted(buckets, i, side="right")) - 1
            maj = np.bincount(y[:i], minlength=k).argmax()
            nn = KNeighborsClassifier(n_neighbors=min(knn_k, i)).fit(X[:i], y[:i]).predict(X[i:i + 1])[0]
            hits[b] += [pred[i] == y[i], maj == y[i], nn == y[i]]
            counts[b] += 1
    out = []
    for b, lo in enumerate(buckets):
        hi = f"-{buckets[b + 1] - 1}" if b + 1 < len(buckets) else "+"
        n = int(counts[b])
        out.append({"shots_before": f"{lo}{hi}", "labels": n,
                    **{name: (hits[b, j] / n if n else None) for j, name in enumerate(("model", "majority", f"knn{knn_k}"))}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="trained model dir (full model or LoRA adapter)")
    ap.add_argument("--corpus", required=True, help="corpus dir of shard-*.parquet (e.g. data/corpus/full)")
    ap.add_argument("--limit", type=int, default=200, help="sequences to score")
    ap.add_argument("--by-position", action="store_true", help="also every shot label, by position")
    args = ap.parse_args(argv)
    model, tok = load_trained_with_tokenizer(args.model)
    rows = []
    for path in sorted(Path(args.corpus).glob("shard-*.parquet")):
        rows.extend(read_corpus(path).select(["messages", "n_classes"]).to_pylist())
    if not rows:
        print(f"error: no corpus shards under {args.corpus}", file=sys.stderr)
        return 2
    rows = rows[: args.limit]
    out = {"model": args.model, "sequences": len(rows), **evaluate_corpus(model, tok, rows)}
    if args.by_position:
        out["shot_labels"] = shot_label_accuracy(model, tok, rows)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
