"""In-context prediction: a labelled table (the context) + unlabelled rows -> label probabilities.

One engine for evaluation, the API and serving. The context is encoded with the shared encoder
(statistics from the context rows only); query rows are answered up to ``max_queries`` per sequence; the
shared prefix (system + data header + shot rows) is run once and its KV cache reused for every chunk of
queries. Labels are **scored, not parsed**: at each answer position the model's probability of every label
of the task is read, the most likely one is written into the answer, and decoding moves on to the next
query, so the output always parses and every row gets a full probability vector.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mllm import prompt
from mllm.config import MAX_CLASSES
from mllm.encoding import LabelMap, ordinal_encode, quantise
from mllm.errors import InputError
from mllm.scoring import label_token_ids


class PredictionError(InputError):
    """A context or query table that cannot be predicted as given."""


@dataclass
class Encoded:
    shots: np.ndarray  # (m, d) int codes
    shot_ids: np.ndarray  # (m,) label ids 0..K-1
    queries: np.ndarray  # (n, d) int codes
    labels: LabelMap


def encode_tables(context: pd.DataFrame, y_context, queries: pd.DataFrame) -> Encoded:
    """Shared encoder on user tables: ordinal codes, shot-only z-scores -> 0..999, labels -> 0..K-1."""
    if len(context) == 0:
        raise PredictionError("the context table has no rows")
    if len(queries) == 0:
        raise PredictionError("no rows to predict")
    if context.shape[1] == 0:
        raise PredictionError("the context table has no feature columns")
    y = pd.Series(y_context).reset_index(drop=True)
    if y.isna().any():
        raise PredictionError(f"{int(y.isna().sum())} context rows have no label")
    labels = LabelMap.fit(y.to_numpy())
    if labels.n_classes < 2:
        raise PredictionError(f"the context holds a single class ({labels.classes[0]!r}); at least 2 are needed")
    if labels.n_classes > MAX_CLASSES:
        raise PredictionError(f"the context holds {labels.n_classes} classes; at most {MAX_CLASSES} are supported")
    s_num, q_num, _ = ordinal_encode(context.reset_index(drop=True), queries.reset_index(drop=True))
    shots, qs = quantise(s_num, q_num)
    return Encoded(shots, labels.to_ids(y.to_numpy()), qs, labels)


def answer_piece(i: int) -> str:
    """The answer text between label i-1 and label i (``[{"id":0,"label":`` first). Pieces end and start at
    digits, where every supported tokenizer splits, so piecewise tokens equal the training sequence's."""
    return ('[{"id":0,"label":' if i == 0 else f'}},{{"id":{i},"label":')


class Predictor:
    """Label probabilities from a causal LM and its tokenizer (see module docstring)."""

    def __init__(self, model, tokenizer, max_queries: int = 50, n_ensemble: int = 1, seed: int = 0,
                 cutoff_len: int | None = None, cache_prefix: bool = True):
        if not 1 <= max_queries <= prompt.MAX_QUERIES:
            raise PredictionError(f"max_queries must be 1..{prompt.MAX_QUERIES}, got {max_queries}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_queries, self.n_ensemble, self.seed = max_queries, n_ensemble, seed
        self.cache_prefix = cache_prefix  # off only to measure what the cache saves
        self.cutoff_len = cutoff_len or getattr(model.config, "max_position_embeddings", None)

    # -- one sequence family: a prefix, then chunks of queries ---------------------------------------

    def _prefix_text(self, shots: np.ndarray, shot_ids: np.ndarray, n_classes: int) -> str:
        header = prompt.data_header(shots.shape[1], n_classes)
        user_head = "\n".join([header, "", "[Training set]", *prompt.shot_lines(shots, shot_ids), "", "[Test set]"])
        msgs = [{"role": "system", "content": prompt.SYSTEM_PROMPT}, {"role": "user", "content": user_head + "\n"}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
        # cut at the end of the user content: the test rows continue the same message
        return text[: text.rindex(user_head) + len(user_head) + 1]

    def _suffix_text(self, queries: np.ndarray) -> str:
        user_tail = "\n".join([*prompt.query_lines(queries), "", prompt.OUTPUT_REQUIREMENTS])
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "\x00" + user_tail}], tokenize=False, add_generation_prompt=True)
        return full[full.index("\x00") + 1:]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _score_chunk(self, cache, prefix_len: int, queries: np.ndarray, cand: list[int]) -> np.ndarray:
        import torch

        probs = np.zeros((queries.shape[0], len(cand)))
        pending = self._ids(self._suffix_text(queries))
        past = copy.deepcopy(cache) if self.cache_prefix else cache  # chunks must not extend the shared cache
        pos = prefix_len
        for i in range(queries.shape[0]):
            pending += self._ids(answer_piece(i))
            with torch.no_grad():
                out = self.model(input_ids=torch.as_tensor([pending]), past_key_values=past, use_cache=True,
                                 position_ids=torch.arange(pos, pos + len(pending))[None])
            past, pos = out.past_key_values, pos + len(pending)
            p = torch.softmax(out.logits[0, -1, cand].float(), dim=-1).numpy()
            probs[i] = p
            pending = [cand[int(p.argmax())]]
        return probs

    def _run_prefix(self, prefix: list[int]):
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.as_tensor([prefix]), use_cache=True).past_key_values

    def _fits(self, n_prefix: int, n_rows: int, d: int) -> bool:
        if self.cutoff_len is None:
            return True
        per_query = 2 * d + 12  # a test row and its answer item, generously (exact counts vary by tokenizer)
        return n_prefix + n_rows * per_query + 64 <= self.cutoff_len

    def predict_proba_encoded(self, enc: Encoded) -> np.ndarray:
        """(n_queries, K) probabilities, averaged over ``n_ensemble`` seeded row/column permutations."""
        k = enc.labels.n_classes
        cand = label_token_ids(self.tokenizer, k)
        total = np.zeros((enc.queries.shape[0], k))
        for v in range(self.n_ensemble):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, v]))
            cols = rng.permutation(enc.shots.shape[1]) if v else np.arange(enc.shots.shape[1])
            rows = rng.permutation(enc.shots.shape[0]) if v else np.arange(enc.shots.shape[0])
            shots, shot_ids, queries = enc.shots[rows][:, cols], enc.shot_ids[rows], enc.queries[:, cols]
            prefix = self._ids(self._prefix_text(shots, shot_ids, k))
            chunk = self.max_queries
            while chunk > 1 and not self._fits(len(prefix), chunk, shots.shape[1]):
                chunk //= 2
            if not self._fits(len(prefix), chunk, shots.shape[1]):
                raise PredictionError(
                    f"the context ({shots.shape[0]} rows x {shots.shape[1]} features, {len(prefix)} tokens) does not "
                    f"fit the model's {self.cutoff_len}-token context with even one query row"
                )
            cache = self._run_prefix(prefix) if self.cache_prefix else None
            for start in range(0, queries.shape[0], chunk):
                c = cache if self.cache_prefix else self._run_prefix(prefix)
                total[start:start + chunk] += self._score_chunk(c, len(prefix), queries[start:start + chunk], cand)
        return total / self.n_ensemble

    def predict_proba(self, context: pd.DataFrame, y_context, queries: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(classes, probabilities) for ``queries`` given the labelled ``context``."""
        enc = encode_tables(context, y_context, queries)
        return enc.labels.classes, self.predict_proba_encoded(enc)
