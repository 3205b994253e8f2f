"""Corpus cost: tokens per table cell of our encoding vs natural language and raw floats, and the
throughput of filter, encode and the whole corpus path (generate + filter + encode).

    python benchmarks/corpus.py [--quick]

Token counts use (a) the embedded default tokenizer and (b) the real Qwen2.5 vocabulary (`qwen.tiktoken`
from the `dashscope` wheel: Qwen splits numbers into single digits), on real tables from
../shared/datasets (or scikit-learn's bundled ones when that folder is absent). The same rows are written
three ways, each as a full prompt + answer:
  ours      the mllm prompt (z-scored integers 0..999, `v1,...|label`, JSON answer)
  natural   "age is 39, job is technician, ..., label is 1" rows with the real column names and values
  raw       the mllm layout but with the raw values as they appear in the table
Throughput is measured on default-params tasks, in processes pinned to one core each. The last line is
the Qwen token ratio natural / ours (higher is better).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATASETS, machine, pinned

SHOTS, QUERIES = 128, 50


# ---- token efficiency -----------------------------------------------------------------------------


def _tables(limit: int):
    import pandas as pd

    if SHARED_DATASETS.is_dir():
        for path in sorted(SHARED_DATASETS.glob("*.csv"))[:limit]:
            yield path.stem, pd.read_csv(path)
    else:  # pragma: no cover - a checkout without ../shared
        from sklearn import datasets

        for name in ("iris", "wine", "breast_cancer", "digits")[:limit]:
            b = getattr(datasets, f"load_{name}")(as_frame=True)
            yield name, b.frame.rename(columns={"target": "label"})


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if v != v else repr(v)
    return str(v)


def _natural_prompt(cols, shots, shot_y, queries, n_classes) -> str:
    def row(values):
        return ", ".join(f"{c} is {_fmt(v)}" for c, v in zip(cols, values))

    labels = ", ".join(str(k) for k in range(n_classes))
    lines = [f"[Data]\nEach sample is described by its {len(cols)} features and a label, one of: {labels}.", "",
             "[Training set]"]
    lines += [f"{row(r)}, label is {y}." for r, y in zip(shots, shot_y)]
    lines += ["", "[Test set]"] + [f"ID {i}: {row(r)}." for i, r in enumerate(queries)]
    return "\n".join(lines)


def _raw_prompt(shots, shot_y, queries) -> str:
    """The authors' format with the raw cell values (no codes)."""
    import numpy as np

    from mllm.text import prompt

    return prompt.user_prompt(np.array([[_fmt(v) for v in r] for r in shots], dtype=object), shot_y,
                              np.array([[_fmt(v) for v in r] for r in queries], dtype=object))


def token_efficiency(n_tables: int) -> dict:
    import dashscope
    from dashscope.tokenizers.qwen_tokenizer import QwenTokenizer

    from mllm.text import prompt
    from mllm.text.encoding import LabelMap, ordinal_encode, quantise
    from mllm.text.tokenizer import build_tokenizer

    qwen = QwenTokenizer(str(Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"))
    ours_tok = build_tokenizer("whole")
    counters = {
        "qwen": lambda t: len(qwen.encode(t)),
        "mllm": lambda t: len(ours_tok.encode(t, add_special_tokens=False)),
    }
    totals = {f"{tk}_{fmt}": 0 for tk in counters for fmt in ("ours", "natural", "raw")}
    cells = 0
    used = []
    for name, df in _tables(n_tables):
        df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
        y_all = df.pop("label")
        if len(df) < SHOTS + QUERIES:
            continue
        shots_df, query_df = df.iloc[:SHOTS], df.iloc[SHOTS:SHOTS + QUERIES]
        lm = LabelMap.fit(y_all.iloc[:SHOTS])
        keep = y_all.iloc[SHOTS:SHOTS + QUERIES].isin(lm.classes).to_numpy()
        query_df = query_df[keep]
        shot_y = lm.to_ids(y_all.iloc[:SHOTS])
        query_y = lm.to_ids(y_all.iloc[SHOTS:SHOTS + QUERIES][keep])
        s_num, q_num, _ = ordinal_encode(shots_df, query_df)
        s_q, q_q = quantise(s_num, q_num)
        k = lm.n_classes
        answer = prompt.answer(query_y)
        texts = {
            "ours": prompt.user_prompt(s_q, shot_y, q_q),
            "natural": _natural_prompt(list(df.columns), shots_df.to_numpy().tolist(), shot_y,
                                       query_df.to_numpy().tolist(), k),
            "raw": _raw_prompt(shots_df.to_numpy().tolist(), shot_y, query_df.to_numpy().tolist()),
        }
        for tk, count in counters.items():
            for fmt, text in texts.items():
                totals[f"{tk}_{fmt}"] += count(prompt.SYSTEM_PROMPT) + count(text) + count(answer)
        cells += (len(shots_df) + len(query_df)) * (df.shape[1] + 1)
        used.append(name)
    return {"tables": used, "cells": cells, **{k: v / cells for k, v in totals.items()}}


# ---- throughput -------------------------------------------------------------------------------------


def _default_params():
    from mllm.core.params import load_params

    return load_params(ROOT / "params.yaml")


def _gen_shard(tmp: Path, start: int, n: int) -> Path:
    from mllm.data.generate import generate_shard

    params = _default_params()
    p = params.generate.model_copy(update={"num_tasks": start + n, "shard_size": n})
    generate_shard(params.seed, start // n, p, tmp)
    return tmp / f"shard-{start // n:05d}.parquet"


def measure_stages(n: int) -> dict:
    """One core: seconds of filter on ``n`` default-params tasks, and of encode on the kept ones."""
    from mllm.data.filter import filter_shard
    from mllm.data.shards import read_shard
    from mllm.text.corpus import encode_shard
    from mllm.text.tokenizer import build_tokenizer

    params = _default_params()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shard = _gen_shard(tmp / "gen", 0, n)
        t0 = time.perf_counter()
        filter_shard(shard, tmp / "filt", params.seed, params.filter)
        t_filter = time.perf_counter() - t0
        kept = tmp / "filt" / "full" / shard.name
        n_kept = read_shard(kept).num_rows
        tok = build_tokenizer(params.tokenizer.numbers)
        t0 = time.perf_counter()
        stats = encode_shard(kept, tmp / "enc.parquet", tok, params.seed, params.encode)
        t_encode = time.perf_counter() - t0
    return {"tasks": n, "kept": n_kept, "filter_s": t_filter, "encode_s": t_encode, "sequences": stats["sequences"],
            "tokens": stats["tokens"]}


def _pipeline_chunk(args) -> dict:
    start, n = args
    from threadpoolctl import threadpool_limits

    from mllm.data.filter import filter_shard
    from mllm.text.corpus import encode_shard
    from mllm.text.tokenizer import build_tokenizer

    params = _default_params()
    tok = build_tokenizer(params.tokenizer.numbers)
    with tempfile.TemporaryDirectory() as d, threadpool_limits(1):
        tmp = Path(d)
        shard = _gen_shard(tmp / "gen", start, n)
        filter_shard(shard, tmp / "filt", params.seed, params.filter)
        stats = encode_shard(tmp / "filt" / "full" / shard.name, tmp / "enc.parquet", tok, params.seed,
                             params.encode)
    return {"tasks": n, "sequences": stats["sequences"]}


def measure_end_to_end(n: int, workers: int, chunk: int) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    starts = list(range(0, n, chunk))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_pipeline_chunk, [(10**6 + i * 4, 4) for i in range(workers)]))  # warm the workers
        t0 = time.perf_counter()
        out = list(pool.map(_pipeline_chunk, [(s, chunk) for s in starts]))
        seconds = time.perf_counter() - t0
    return {"tasks": sum(o["tasks"] for o in out), "sequences": sum(o["sequences"] for o in out), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a faithful run in about a minute")
    args = ap.parse_args()
    n_tables, n_stage, n_e2e, chunk = (8, 96, 192, 48) if args.quick else (30, 512, 1536, 128)

    eff = token_efficiency(n_tables)
    stage = pinned("corpus", f"measure_stages({n_stage})")
    e2e = measure_end_to_end(n_e2e, workers=2, chunk=chunk)
    params = _default_params()

    print(f"machine: {machine()}")
    print(f"tables: {len(eff['tables'])} from {SHARED_DATASETS if SHARED_DATASETS.is_dir() else 'sklearn'}, "
          f"{SHOTS} shots + up to {QUERIES} queries each, {eff['cells']} cells")
    print("tokens per table cell (whole prompt + answer / cells):")
    print(f"  {'':10s} {'ours':>8s} {'natural':>8s} {'raw':>8s}   natural/ours  raw/ours")
    for tk, label in (("mllm", "embedded"), ("qwen", "qwen2.5")):
        o, n, r = eff[f"{tk}_ours"], eff[f"{tk}_natural"], eff[f"{tk}_raw"]
        print(f"  {label:10s} {o:8.2f} {n:8.2f} {r:8.2f}   {n / o:12.2f}  {r / o:8.2f}")
    print(f"filter {stage['tasks'] / stage['filter_s']:.1f} tasks/s per core "
          f"({stage['kept']}/{stage['tasks']} kept, RF {params.filter.n_estimators} trees)")
    print(f"encode {stage['kept'] / stage['encode_s']:.1f} tasks/s per core "
          f"({stage['tokens'] / stage['encode_s']:.0f} tokens/s, cutoff_len {params.encode.cutoff_len})")
    print(f"end to end (generate + filter + encode), 2 workers: {e2e['tasks'] / e2e['seconds']:.1f} generated tasks/s")
    print(f"corpus {e2e['sequences'] / e2e['seconds']:.1f} tasks/s "
          f"({e2e['sequences']} corpus sequences from {e2e['tasks']} generated tasks in {e2e['seconds']:.1f}s, 2 cores)")
    print(json.dumps({"tables": eff["tables"]}))
    print(f"qwen2.5 tokens per cell: natural language {eff['qwen_natural']:.2f} vs ours {eff['qwen_ours']:.2f}, "
          f"ratio {eff['qwen_natural'] / eff['qwen_ours']:.2f}")


if __name__ == "__main__":
    main()
