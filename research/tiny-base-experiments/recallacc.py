"""Recall probe: shot labels of rows already seen earlier in the context (copyable) vs unseen rows, the
answers' labels, and "the most frequent label so far" on the seen rows (what a class-frequency model gets).

    python research/tiny-base-experiments/recallacc.py MODEL_DIR CORPUS_DIR/full N
"""
import glob
import sys

import numpy as np
import torch

from mllm.inference.scoring import label_token_ids
from mllm.model.loading import load_trained_with_tokenizer
from mllm.model.training_data import IGNORE, tokenize_example
from mllm.text.corpus import read_corpus
from mllm.text.prompt import parse_user_prompt

model_dir, corpus, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, tok = load_trained_with_tokenizer(model_dir)
model.eval()
rows = read_corpus(sorted(glob.glob(corpus + "/*.parquet"))[0]).column("messages").to_pylist()[:limit]
label_tok = tok.convert_tokens_to_ids("label")
hits = {"seen": [0, 0], "unseen": [0, 0], "answers": [0, 0], "majority so far (seen)": [0, 0]}
by_d: dict[int, list[int]] = {}
for msgs in rows:
    t = parse_user_prompt(msgs[1]["content"])
    k, X, y = t["n_classes"], t["shots"], t["shot_labels"]
    ex = tokenize_example(tok, msgs, True)
    ids, labels = ex["input_ids"], ex["labels"]
    cand = label_token_ids(tok, k)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=torch.as_tensor(ids)[None]).logits[0].float()
    pos = np.flatnonzero(labels != IGNORE)
    pred = logits[torch.as_tensor(pos[: y.size]) - 1][:, cand].argmax(-1).numpy()
    seen: set = set()
    for i in range(y.size):
        key = tuple(X[i])
        name = "seen" if key in seen else "unseen"
        hits[name][0] += int(pred[i] == y[i])
        hits[name][1] += 1
        if name == "seen":
            maj = np.bincount(y[:i], minlength=k).argmax()
            hits["majority so far (seen)"][0] += int(maj == y[i])
            hits["majority so far (seen)"][1] += 1
            d = by_d.setdefault(X.shape[1], [0, 0])
            d[0] += int(pred[i] == y[i])
            d[1] += 1
        seen.add(key)
    # answer labels: the token after `label":` (the running ids are number tokens too)
    apos = [p for p in pos[y.size:] if p >= 2 and ids[p - 2] == label_tok]
    pa = logits[torch.as_tensor(apos) - 1][:, cand].argmax(-1).numpy()
    ya = np.array([cand.index(ids[p]) for p in apos])
    hits["answers"][0] += int((pa == ya).sum())
    hits["answers"][1] += len(ya)
print("  ".join(f"{name} {c / n:.3f} (n={n})" for name, (c, n) in hits.items()))
print("seen rows by number of features:", {d: round(c / n, 3) for d, (c, n) in sorted(by_d.items())})
