"""What the SCM corpus's loss prefers: plant the base with other settings and score each, teacher-forced, on the
evaluate stage's held-out synthetic tasks (the mean cross-entropy of the answers' label tokens and the accuracy
of the best token of the task's label set), without training anything.

    python research/tiny-base-experiments/plant_grid.py SHOTS N relevance_gain=0 relevance_gain=5,tau=24 ...

Each argument is one base: params.yaml's `plant` with those settings replaced. The tasks are the first N
held-out tasks, their first SHOTS rows cut to fit encode.cutoff_len, 10 query rows each."""

import sys
import time
from pathlib import Path

from mllm.core.params import load_params
from mllm.evaluation.synthetic import _first, heldout_tasks
from mllm.model.plant import plant_base
from mllm.text.corpus import encode_task
from mllm.text.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_sweep import teacher_forced  # the sweep's scorer: the same loss and accuracy


def main() -> None:
    params, tok = load_params("params.yaml"), load_tokenizer("models/tiny-base")
    shots, n = int(sys.argv[1]), int(sys.argv[2])
    held = []
    for task in heldout_tasks(params, n, shots=shots):
        cut = _first(task, shots, 10)
        held.append(encode_task(cut, tok, params.seed,
                                params.encode.model_copy(update={"max_queries": cut.n_queries})).messages)
    for spec in sys.argv[3:]:
        settings = {k: float(v) for k, v in (x.split("=") for x in spec.split(","))}
        t = time.time()
        score = teacher_forced(plant_base(tok, params.plant.model_copy(update=settings)), tok, held, "cpu", batch=1)
        print(f"{spec}: loss {score['loss']:.4f} accuracy {score['accuracy']:.4f} ({score['n']} answers, "
              f"{time.time() - t:.0f} s)", flush=True)

if __name__ == "__main__":
    main()
