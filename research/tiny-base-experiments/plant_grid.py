"""What the SCM corpus's loss prefers: plant the base with other settings and score each, teacher-forced, on the
evaluate stage's held-out synthetic tasks (the mean cross-entropy of the answers' label tokens and the accuracy
of the best token of the task's label set), without training anything.

    python research/tiny-base-experiments/plant_grid.py SHOTS N relevance_gain=0 relevance_gain=5,tau=24 ...

Each argument is one base: params.yaml's `plant` with those settings replaced. The tasks are the first N
held-out tasks, their first SHOTS rows cut to fit encode.cutoff_len, 10 query rows each."""

import sys
import time

import torch
import torch.nn.functional as F

from mllm.core.params import load_params
from mllm.evaluation.synthetic import _first, heldout_tasks
from mllm.model.plant import plant_base
from mllm.model.training_data import IGNORE, collate, tokenize_example
from mllm.text.corpus import encode_task
from mllm.text.tokenizer import load_tokenizer


def main() -> None:
    params, tok = load_params("params.yaml"), load_tokenizer("models/tiny-base")
    shots, n = int(sys.argv[1]), int(sys.argv[2])
    batches = []
    for task in heldout_tasks(params, n, shots=shots):
        cut = _first(task, shots, 10)
        seq = encode_task(cut, tok, params.seed, params.encode.model_copy(update={"max_queries": cut.n_queries}))
        ex = tokenize_example(tok, seq.messages, shot_label_loss=False, answer_loss="labels")
        label_ids = torch.tensor([tok.convert_tokens_to_ids(str(k)) for k in range(int(task.y.max()) + 1)])
        batches.append((collate([ex], tok.pad_token_id), label_ids))
    for spec in sys.argv[3:]:
        settings = {k: float(v) for k, v in (x.split("=") for x in spec.split(","))}
        t = time.time()
        model = plant_base(tok, params.plant.model_copy(update=settings))
        total, count, right = 0.0, 0, 0
        for b, label_ids in batches:
            target = b["labels"][:, 1:]
            keep = (target != IGNORE).any(dim=0).nonzero().squeeze(1)
            with torch.no_grad():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=keep,
                               use_cache=False).logits[0].float()
            y = target[0, keep]
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            count += len(y)
            right += int((label_ids[logits[:, label_ids].argmax(1)] == y).sum())
        print(f"{spec}: loss {total / count:.4f} accuracy {right / count:.4f} ({count} answers, "
              f"{time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
