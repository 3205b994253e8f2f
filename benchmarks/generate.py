"""Generator throughput vs tabicl's PriorDataset, and the shape of the generated task distribution.

    python benchmarks/generate.py [--quick]

Settings shared by both generators: 1024 rows a task (tabicl: seq_len 1023-1024, as it needs min < max;
ours: 974 shots + 50 queries), 5-50 features, at most 10 classes, the 70/30 MLP/tree mix. Every
single-process measurement runs in a fresh subprocess pinned to one core with one BLAS/OpenMP/torch
thread, so "per core" means per core. The last line is the per-core ratio (ours / tabicl).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, pinned


def _ours_params(num_tasks: int, shots: tuple[int, int] = (974, 974), queries: int = 50):
    from mllm.core.params import GenerateParams, load_params

    # params.yaml's generator, with the settings both generators share here pinned
    return GenerateParams.model_validate({
        **load_params(ROOT / "params.yaml").generate.model_dump(), "num_tasks": num_tasks, "shard_size": num_tasks,
        "prior": "mix", "features": {"min": 5, "max": 50}, "classes": {"min": 2, "max": 10},
        "shots": {"min": shots[0], "max": shots[1]}, "queries": queries})


# ---- measurements, each run in its own pinned subprocess ------------------------------------------


def measure_ours(n: int, full_shard: bool) -> dict:
    from mllm.data.prior import generate_task

    p = _ours_params(n)
    import tempfile

    from mllm.core.params import GenerateParams
    from mllm.data.generate import generate_shard

    generate_task(0, 10**6, p)  # warm-up: imports and first-call costs
    t0 = time.perf_counter()
    if full_shard:  # what the stage does per shard: generate + GX checks + Parquet write
        with tempfile.TemporaryDirectory() as tmp:
            generate_shard(0, 0, GenerateParams.model_validate(p.model_dump()), tmp)
    else:
        for i in range(n):
            generate_task(0, i, p)
    return {"tasks": n, "seconds": time.perf_counter() - t0}


def measure_tabicl(n: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    np.random.seed(0)
    torch.manual_seed(0)
    from tabicl.prior import PriorDataset

    batch = 8
    ds = PriorDataset(
        batch_size=batch, batch_size_per_gp=4, min_features=5, max_features=50, max_classes=10,
        min_seq_len=1023, max_seq_len=1024, prior_type="mix_scm", n_jobs=1, num_threads_per_generate=1,
        device="cpu",
    )
    ds.get_batch()  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        ds.get_batch()
        done += batch
    return {"tasks": done, "seconds": time.perf_counter() - t0}


def _shard_worker(args):
    start, stop = args
    from threadpoolctl import threadpool_limits

    from mllm.data.prior import generate_task

    p = _ours_params(stop)
    with threadpool_limits(1):
        for i in range(start, stop):
            generate_task(0, i, p)
    return stop - start


def measure_ours_workers(n: int, workers: int) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, n // (workers * 4))
    ranges = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_shard_worker, [(10**6, 10**6 + 1)] * workers))  # warm the workers
        t0 = time.perf_counter()
        done = sum(pool.map(_shard_worker, ranges))
    return {"tasks": done, "seconds": time.perf_counter() - t0}


# ---- distribution -----------------------------------------------------------------------------------


def distribution(n: int) -> list[str]:
    """Shares by K and d, categorical share, class balance, and how often RF(30) beats majority."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from threadpoolctl import threadpool_limits

    from mllm.core.params import load_params
    from mllm.data.prior import generate_task

    p = load_params(ROOT / "params.yaml").generate  # the default pipeline's distribution (8-1024 shots)
    rows = []
    with threadpool_limits(1):
        for i in range(n):
            t = generate_task(0, i, p)
            s = t.n_shots
            counts = np.bincount(t.y[:s], minlength=t.n_classes)
            rf = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=1).fit(t.X[:s], t.y[:s])
            acc = float((rf.predict(t.X[s:]) == t.y[s:]).mean())
            maj = float((t.y[s:] == counts.argmax()).mean())
            rows.append({
                "prior": t.prior, "K": t.n_classes, "d": t.n_features, "shots": s,
                "cat_task": bool(t.categorical.any()), "cat_cols": float(t.categorical.mean()),
                "balance": float(counts[counts > 0].min() / counts.max()),
                "rf": acc, "maj": maj, "beats": acc > maj,
            })
    df = pd.DataFrame(rows)
    df["d_bin"] = pd.cut(df.d, [4, 10, 20, 30, 40, 50])
    df["shot_bin"] = pd.cut(df.shots, [7, 32, 128, 512, 1024])
    out = [f"distribution of {n} tasks from params.yaml (seed 0):"]
    out.append("share by K:     " + "  ".join(f"{k}:{v:.2f}" for k, v in df.K.value_counts(normalize=True).sort_index().items()))
    out.append("share by d:     " + "  ".join(f"{k}:{v:.2f}" for k, v in df.d_bin.value_counts(normalize=True, sort=False).items()))
    out.append(f"categorical:    {df.cat_task.mean():.2f} of tasks have categorical columns; "
               f"{df.cat_cols.mean():.2f} of all columns are categorical")
    out.append(f"class balance:  min/max class count in the shots, mean {df.balance.mean():.2f}, "
               f"median {df.balance.median():.2f}")
    out.append(f"RF(30) vs majority on queries: RF beats majority in {df.beats.mean():.2f} of tasks "
               f"(mean acc RF {df.rf.mean():.3f} vs majority {df.maj.mean():.3f}; RF >= 0.99 in {(df.rf >= 0.99).mean():.2f})")
    for key in ("prior", "shot_bin"):
        g = df.groupby(key, observed=True)[["beats", "rf", "maj"]].mean()
        out.append(f"  by {key}: " + "; ".join(
            f"{k}: beats {r.beats:.2f}, RF {r.rf:.2f}, maj {r.maj:.2f}" for k, r in g.iterrows()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a faithful run in about a minute")
    args = ap.parse_args()
    n_ours, n_tab, n_dist = (400, 48, 150) if args.quick else (3000, 400, 1000)

    tab = pinned("generate", f"measure_tabicl({n_tab})")
    ours = pinned("generate", f"measure_ours({n_ours}, full_shard=False)")
    ours_shard = pinned("generate", f"measure_ours({n_ours}, full_shard=True)")
    ours2 = measure_ours_workers(n_ours * 2, workers=2)

    rate = {k: v["tasks"] / v["seconds"] for k, v in
            {"tabicl": tab, "ours": ours, "ours_shard": ours_shard, "ours2": ours2}.items()}
    print(f"machine: {machine()}")
    print("settings: 1024 rows/task, 5-50 features, <=10 classes, mix prior (70% MLP / 30% tree)")
    print(f"tabicl PriorDataset, 1 core:              {rate['tabicl']:8.1f} tasks/s ({tab['tasks']} tasks)")
    print(f"mllm generate_task, 1 core:               {rate['ours']:8.1f} tasks/s ({ours['tasks']} tasks)")
    print(f"mllm shard (generate+GX+Parquet), 1 core: {rate['ours_shard']:8.1f} tasks/s")
    print(f"mllm generate_task, 2 workers:            {rate['ours2']:8.1f} tasks/s "
          f"(ratio vs tabicl 1 core {rate['ours2'] / rate['tabicl']:.1f}, scaling {rate['ours2'] / rate['ours']:.2f}x)")
    print(f"shard pipeline vs tabicl per core: ratio {rate['ours_shard'] / rate['tabicl']:.1f}")
    print()
    for line in distribution(n_dist):
        print(line)
    print()
    print(f"generate per-core tasks/s: mllm {rate['ours']:.1f} vs tabicl {rate['tabicl']:.1f}, "
          f"ratio {rate['ours'] / rate['tabicl']:.1f}")


if __name__ == "__main__":
    main()
