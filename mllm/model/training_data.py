"""Corpus sequences -> token ids and loss labels.

Only the answer carries loss (the JSON array and the closing ``<|im_end|>``; with ``answer_loss="labels"``
only the label values in it, for a model that is read by label scoring and never writes the JSON), plus,
when ``shot_label_loss`` is on, the label of every shot row (each predicted from the rows before it: the
same skill, learned from every row instead of 50 queries).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mllm.text.prompt import ANSWER_LABEL, permute_labels, shot_label_spans

IGNORE = -100


def tokenize_example(tokenizer, messages: list[dict], shot_label_loss: bool, answer_loss: str = "all") -> dict:
    """``input_ids`` and ``labels`` (IGNORE where no loss) of one system/user/assistant sequence;
    ``answer_loss``: "all" (the whole answer) or "labels" (only its label values)."""
    if answer_loss not in ("all", "labels"):
        raise ValueError(f"answer_loss must be 'all' or 'labels', not {answer_loss!r}")
    if [m["role"] for m in messages] not in (["system", "user", "assistant"], ["user", "assistant"]):
        raise ValueError("a training sequence must be system (optional), user, assistant messages")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    answer_end = len(prompt) + len(messages[-1]["content"])
    eos = tokenizer.eos_token or ""
    if full.startswith(eos, answer_end):
        answer_end += len(eos)  # the model must also learn to stop
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    real = offsets[:, 1] > offsets[:, 0]
    if answer_loss == "all":
        mask = (offsets[:, 0] >= len(prompt)) & (offsets[:, 1] <= answer_end) & real
    else:
        mask = np.zeros(len(ids), dtype=bool)
        for hit in ANSWER_LABEL.finditer(messages[-1]["content"]):
            a, b = len(prompt) + hit.start(1), len(prompt) + hit.end(1)
            mask |= (offsets[:, 0] >= a) & (offsets[:, 1] <= b) & real
    if shot_label_loss:
        user_at = full.find(messages[-2]["content"])
        for a, b in shot_label_spans(messages[-2]["content"]):
            a, b = a + user_at, b + user_at
            mask |= (offsets[:, 0] >= a) & (offsets[:, 1] <= b) & real
    labels = np.where(mask, ids, IGNORE)
    return {"input_ids": ids, "labels": labels}


class CorpusDataset:
    """A map-style dataset over corpus shards, tokenized on access, in a seeded order; with ``permute``, each
    sequence's labels shuffled among its rows (seeded by the sequence: every process draws the same).

    The shards' messages are copied once (by the first process on each machine, batch by batch) into an
    uncompressed Arrow file in ``cache_dir`` that every rank memory-maps: a rank's memory holds the pages of
    the rows it reads, not the corpus."""

    def __init__(self, paths: list[str | Path], tokenizer, shot_label_loss: bool, seed: int, cache_dir: str | Path,
                 max_examples: int | None = None, answer_loss: str = "all", accelerator=None,
                 permute: bool = False):
        self.messages = mapped_messages(paths, cache_dir, accelerator)
        n = len(self.messages)
        if not n:
            raise ValueError(f"empty corpus: no sequences in {[str(p) for p in paths]}")
        order = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1])).permutation(n)
        self.order = order if max_examples is None else order[:max_examples]
        self.tokenizer = tokenizer
        self.shot_label_loss = shot_label_loss
        self.answer_loss = answer_loss
        self.permute, self.seed = permute, seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        k = int(self.order[i])
        row = self.messages[k].as_py()
        if self.permute:  # the control corpus: the same sequence with labels that the features do not predict
            row = permute_labels(row, np.random.default_rng(np.random.SeedSequence([self.seed, 0xC0DE, k])))
        return tokenize_example(self.tokenizer, row, self.shot_label_loss, self.answer_loss)


def mapped_messages(paths: list[str | Path], cache_dir: str | Path, accelerator=None):
    """The ``messages`` column of the shards, memory-mapped from an Arrow file in ``cache_dir`` named by the
    shards' names, sizes and modification times (written atomically if missing)."""
    import hashlib

    import pyarrow as pa

    from mllm.core.atomic import atomic_path
    from mllm.text.corpus import CORPUS_SCHEMA

    h = hashlib.sha256()
    for p in map(Path, paths):
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    target = Path(cache_dir) / f"messages-{h.hexdigest()[:16]}.arrow"
    writer_here = accelerator is None or accelerator.is_local_main_process
    if writer_here and not target.is_file():
        schema = pa.schema([CORPUS_SCHEMA.field("messages")])
        with atomic_path(target) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for p in paths:
                pf = pq.ParquetFile(p)
                if not pf.schema_arrow.equals(CORPUS_SCHEMA, check_metadata=False):
                    raise ValueError(f"{p}: not a corpus shard (schema differs from mllm.text.corpus.CORPUS_SCHEMA)")
                for batch in pf.iter_batches(columns=["messages"], batch_size=256):
                    w.write_batch(batch)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return pa.ipc.open_file(pa.memory_map(str(target), "r")).read_all().column("messages")


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest sequence in the batch (pads carry no loss and no attention)."""
    import torch

    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.as_tensor(b["input_ids"])
        labels[i, :k] = torch.as_tensor(b["labels"])
        attn[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def corpus_lengths(paths: list[str | Path]) -> np.ndarray:
    return np.concatenate([pq.read_table(p, columns=["n_tokens"]).column("n_tokens").to_numpy() for p in paths])
