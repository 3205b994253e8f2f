"""In-context prediction: a labelled table (the context) + unlabelled rows -> label probabilities.

One engine for evaluation, the API and serving. The context is encoded with the shared encoder
(statistics from the context rows only); query rows are answered up to ``max_queries`` per sequence (a
chunk). Labels are **scored, not parsed**: at each answer position the model's probability of every label
of the task is read, the most likely one is written into the answer, and decoding moves on to the next
query, so the output always parses and every row gets a full probability vector.

The work is planned as blocks (``Predictor.plan``): chunks that share the same shot rows. A context that
fits the window is one group of shots for every chunk; for one that does not, the queries are split into
groups of similar rows (k-means on the codes), each about as many rows as the window holds shots (at most
``GROUP_CHUNKS`` chunks), and each group gets the context rows nearest its queries, so queries that share
shots share one prefix without diluting them. The prefix (system + data header + shot rows) runs once per
group, and a block answers up to ``batch`` chunks side by side in one static KV cache (one forward pass per
answer position for the whole block). Blocks are independent and deterministic, which is what lets a long run write its results
block by block and resume after an interruption (``mllm.inference.job``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mllm.core.errors import InputError
from mllm.core.params import MAX_LABELS
from mllm.inference import DEFAULT_MAX_QUERIES
from mllm.inference.retrieval import nearest_shots
from mllm.inference.scoring import LabelTokens, label_tokens
from mllm.inference.table import check_finite
from mllm.text import prompt
from mllm.text.encoding import LabelMap, ordinal_encode, quantise
from mllm.text.tokenizer import reads_text

# Chunks per group of similar queries when the context needs shot retrieval, at most: the group's prefix
# (its retrieved shots, most of the window) is computed once for them all. Fewer when the window holds few
# shots: a group has no more query rows than the shots it gets (more dilutes each row's neighbours: digits
# at 128 shots lost 9 points with groups of 4 chunks, none with 2).
GROUP_CHUNKS = 4
# Jacobi iteration takes about this many passes per chunk; a block with fewer chunks than its queries per
# chunk / this is answered one chunk at a time that way (side by side it takes one pass per query).
JACOBI_PASSES = 3


class PredictionError(InputError):
    """A context or query table that cannot be predicted as given."""


@dataclass
class Encoded:
    shots: np.ndarray  # (m, d) int codes (text columns ordinal-coded): what retrieval measures
    shot_ids: np.ndarray  # (m,) label ids 0..K-1
    queries: np.ndarray  # (n, d) int codes
    labels: LabelMap
    shot_cells: np.ndarray | None = None  # (m, d) what the prompt shows, when text columns show as text
    query_cells: np.ndarray | None = None

    @property
    def shot_view(self) -> np.ndarray:
        return self.shots if self.shot_cells is None else self.shot_cells

    @property
    def query_view(self) -> np.ndarray:
        return self.queries if self.query_cells is None else self.query_cells


def _cells(codes: np.ndarray, frame: pd.DataFrame, text_columns: np.ndarray) -> np.ndarray:
    """Codes of the numeric columns and the text of the others (a missing cell as pandas writes it: nan)."""
    out = codes.astype(object)
    for j in np.flatnonzero(text_columns):
        out[:, j] = ["nan" if pd.isna(v) else str(v) for v in frame.iloc[:, j]]
    return out


def encode_tables(context: pd.DataFrame, y_context, queries: pd.DataFrame, text: bool = False) -> Encoded:
    """Shared encoder on user tables: ordinal codes, shot-only z-scores -> 0..999, labels -> 0..K-1. With
    ``text`` (a model that reads text), non-numeric columns also keep their text for the prompt, as the paper
    feeds them (no bucketing, no embedding); retrieval still measures their codes."""
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
    if labels.n_classes > MAX_LABELS:
        raise PredictionError(f"the context holds {labels.n_classes} classes; at most {MAX_LABELS} are supported")
    check_finite(context, "context")
    check_finite(queries, "query")
    context, queries = context.reset_index(drop=True), queries.reset_index(drop=True)
    s_num, q_num, categorical = ordinal_encode(context, queries)
    shots, qs = quantise(s_num, q_num)
    ids = labels.to_ids(y.to_numpy())
    if not (text and categorical.any()):
        return Encoded(shots, ids, qs, labels)
    return Encoded(shots, ids, qs, labels, _cells(shots, context, categorical), _cells(qs, queries, categorical))


@dataclass(frozen=True)
class Block:
    """Chunks of query rows (indices into the query table) answered side by side with the same shots."""

    group: int
    shots: np.ndarray  # indices of the context rows in the prompt (ascending)
    chunks: tuple[np.ndarray, ...]

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate(self.chunks)


def prediction_frame(classes: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """What prediction returns to a user: the predicted label and one ``proba_<class>`` column per class."""
    out = pd.DataFrame(proba, columns=[f"proba_{c}" for c in classes])
    out.insert(0, "prediction", classes[proba.argmax(axis=1)])
    return out


def _crop(cache, length: int) -> None:
    """Cut a KV cache back to ``length`` tokens (a negative count means "remove" in transformers 4 and 5)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class Predictor:
    """Label probabilities from a causal LM and its tokenizer (see module docstring).

    ``decode="batched"`` (default) answers the chunks of a block side by side: one forward pass per answer
    position for up to ``batch`` chunks (None: as many as ``kv_budget_mb`` of KV cache holds (None: 1 GiB
    on a CPU, half the free memory of a GPU), at most 32,
    and a block of few chunks for its queries per chunk one chunk at a time by Jacobi iteration), each
    position's label the most likely one given the labels before it (greedy, as written below).
    The per-chunk decoders answer one chunk at a time, each chunk with its own retrieved shots when the
    context does not fit: ``"parallel"`` finds the same greedy answer by Jacobi iteration (the labels of
    ``items_per_pass`` items scored in one pass given guessed earlier labels; items up to the first changed
    guess are final); ``"sequential"`` scores one query per forward pass; ``"generate"`` lets the model write
    the JSON answer and parses it (for models that only return text; the probabilities are one-hot).
    """

    def __init__(self, model, tokenizer, max_queries: int = DEFAULT_MAX_QUERIES, n_ensemble: int = 1, seed: int = 0,
                 cutoff_len: int | None = None, cache_prefix: bool = True, decode: str = "batched",
                 min_shots: int = 8, items_per_pass: int = 8, batch: int | None = None, kv_budget_mb: int | None = None):
        if not 1 <= max_queries <= prompt.MAX_QUERIES:
            raise PredictionError(f"max_queries must be 1..{prompt.MAX_QUERIES}, got {max_queries}")
        if n_ensemble < 1:
            raise PredictionError(f"n_ensemble must be at least 1, got {n_ensemble}")
        if items_per_pass < 1:
            raise PredictionError(f"items_per_pass must be at least 1, got {items_per_pass}")
        if batch is not None and batch < 1:
            raise PredictionError(f"batch must be at least 1, got {batch}")
        if decode not in ("batched", "parallel", "sequential", "generate"):
            raise PredictionError(f"decode must be batched, parallel, sequential or generate, got {decode!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_queries, self.n_ensemble, self.seed = max_queries, n_ensemble, seed
        self.cache_prefix = cache_prefix  # off only to measure what the cache saves
        self.decode, self.min_shots, self.items_per_pass = decode, min_shots, items_per_pass
        self.batch, self.kv_budget_mb = batch, kv_budget_mb
        window = getattr(model.config, "max_position_embeddings", None)
        if cutoff_len is not None and (cutoff_len < 64 or (window and cutoff_len > window)):
            raise PredictionError(f"cutoff_len {cutoff_len} is outside 64..{window} (the model's window)")
        self.cutoff_len = cutoff_len or window
        self.stats = {"sequences": 0, "retrieval_chunks": 0, "passes": 0, "prefixes": 0}
        forward = getattr(model, "get_base_model", lambda: model)().forward
        self._cache_kw = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        self._prefixes: dict[tuple[int, int], tuple] = {}  # (group, member) -> (length, per-layer KV, cache)
        self._prefix_owner: Encoded | None = None  # the tables those prefixes belong to
        self._static = None  # (owner, StaticCache, prefix KV, length) of the last block, reused by the next
        self._label_tokens: dict[int, LabelTokens] = {}

    # -- text pieces -------------------------------------------------------------------------------

    def _prefix_text(self, shots: np.ndarray, shot_ids: np.ndarray, n_classes: int | None = None) -> str:
        """Chat text up to the test rows (system, and the user prompt's shared head); with ``n_classes``
        the label set lists all of them (an upper bound on the head's length before the shots are chosen)."""
        head = prompt.user_head(shots, shot_ids, None if n_classes is None else range(n_classes))
        msgs = [{"role": "system", "content": prompt.SYSTEM_PROMPT}, {"role": "user", "content": head}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
        # cut at the end of the head: the test rows continue the same message
        return text[: text.rindex(head) + len(head)]

    def _suffix_text(self, queries: np.ndarray) -> str:
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "\x00" + prompt.user_tail(queries)}], tokenize=False, add_generation_prompt=True)
        return full[full.index("\x00") + 1:]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _labels(self, k: int) -> LabelTokens:
        """How this model writes the labels of a k-class task (a named error when it cannot)."""
        if k not in self._label_tokens:
            try:
                self._label_tokens[k] = label_tokens(self.tokenizer, k)
            except InputError as err:
                raise PredictionError(f"the context: {err}") from None
        return self._label_tokens[k]

    def _answer_ids(self, labels: np.ndarray, cand: list[int]) -> tuple[list[int], list[int]]:
        """Answer tokens for ``labels`` (single-token labels ``cand``) and, per item, the index of its label token."""
        ids, at = [], []
        for i, k in enumerate(labels):
            ids += self._ids(prompt.answer_piece(i))
            at.append(len(ids))
            ids.append(cand[int(k)])
        return ids, at

    def _probe(self, cache, pos: int, labels: LabelTokens) -> list:
        """Logits after each of the labels' probes (prefixes with a choice), the cache left at ``pos``."""
        out = []
        for node in labels.probes:
            logits, cache = self._forward(list(node), cache, pos)
            out.append(logits[-1:])
            _crop(cache, pos)
        self.stats["passes"] += len(out)
        return out

    # -- forward passes ----------------------------------------------------------------------------

    def _forward(self, ids: list[int], cache, pos: int, keep=1):
        """Run ``ids`` after ``cache``; logits only at ``keep`` (the last n positions, or these indices)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache() if cache is None else cache
        dev = self.model.device
        with torch.no_grad():
            out = self.model(input_ids=torch.as_tensor([ids], device=dev), use_cache=True,
                             position_ids=torch.arange(pos, pos + len(ids), device=dev)[None],
                             logits_to_keep=keep.to(dev) if torch.is_tensor(keep) else keep,
                             **{self._cache_kw: cache})
        return out.logits[0].cpu(), cache

    def _run_prefix(self, prefix: list[int]):
        self.stats["prefixes"] += 1
        return self._forward(prefix, None, 0)[1]

    def _score_chunk(self, cache, prefix_len: int, queries: np.ndarray, labels: LabelTokens, guess: int = 0) -> np.ndarray:
        """Greedy label probabilities of one chunk's queries after a cached prefix. Jacobi iteration
        ("parallel") needs single-token labels; with longer ones the chunk is scored query by query."""
        import torch

        n, cand = queries.shape[0], labels.first
        probs = np.zeros((n, len(cand)))
        _, cache = self._forward(self._ids(self._suffix_text(queries)), cache, prefix_len)
        base = cache.get_seq_length()  # prefix + query rows: shared by every pass below
        if self.decode == "sequential" or not labels.single:
            pending, pos = [], base
            for i in range(n):
                pending += self._ids(prompt.answer_piece(i))
                logits, cache = self._forward(pending, cache, pos)
                pos += len(pending)
                self.stats["passes"] += 1
                probs[i] = labels.proba(logits[-1:], self._probe(cache, pos, labels), np.array([i == n - 1]))[0].numpy()
                pending = list(labels.seqs[int(probs[i].argmax())])
        else:
            chosen = np.full(n, guess, dtype=np.int64)  # any guess gives the same answer; a good one saves passes
            ids, at = self._answer_ids(chosen, cand)
            start, lo = 0, 0  # items before `start` are final; tokens before `lo` are in the cache
            while start < n:
                end = min(n, start + self.items_per_pass)  # a pass scores items start..end-1
                _crop(cache, base + lo)
                logits, cache = self._forward(ids[lo:at[end - 1] + 1], cache, base + lo,
                                              keep=torch.as_tensor(at[start:end]) - lo - 1)
                p = torch.softmax(logits[:, cand].float(), dim=-1).numpy()
                self.stats["passes"] += 1
                new = p.argmax(axis=1)
                probs[start:end] = p
                changed = np.flatnonzero(new != chosen[start:end])
                if changed.size == 0:
                    start, lo = end, at[end - 1] + 1  # all items of the pass are final and cached
                    continue
                j = start + int(changed[0])  # item j's score saw the final earlier labels: j is final now
                chosen[start:end] = new
                for i in range(j, end):
                    ids[at[i]] = cand[int(chosen[i])]
                start, lo = j + 1, at[j]  # recompute from item j's (changed) label token
        _crop(cache, prefix_len)  # leave the shared prefix cache as it was
        return probs

    # -- planning: what fits the window ------------------------------------------------------------

    def _chunk_tokens(self, queries: np.ndarray, width: int) -> int:
        """Tokens a chunk of queries adds after the prefix (query rows, requirements, an answer whose labels
        are ``width`` tokens long)."""
        pieces = sum(len(self._ids(prompt.answer_piece(i))) for i in range(len(queries)))
        return len(self._ids(self._suffix_text(queries))) + pieces + width * len(queries) + 2

    def _row_costs(self, shots: np.ndarray, shot_ids: np.ndarray) -> np.ndarray:
        lines = [line + "\n" for line in prompt.shot_lines(shots, shot_ids)]
        return np.array([len(t) for t in self.tokenizer(lines, add_special_tokens=False)["input_ids"]]) + 1

    def _generate_chunk(self, prefix: list[int], queries: np.ndarray, k: int) -> np.ndarray:
        import torch

        ids = prefix + self._ids(self._suffix_text(queries))
        with torch.no_grad():
            out = self.model.generate(torch.as_tensor([ids], device=self.model.device), max_new_tokens=16 * len(queries) + 8, do_sample=False)
        text = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        try:
            labels = prompt.parse_answer(text.strip(), len(queries), k)
        except ValueError as err:
            raise PredictionError(f"the model's generated answer does not parse: {err}") from None
        return np.eye(k)[labels]

    def _member(self, enc: Encoded, v: int) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble member ``v``'s row and column order of the context (member 0: as given)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, v]))
        cols = rng.permutation(enc.shots.shape[1]) if v else np.arange(enc.shots.shape[1])
        rows = rng.permutation(enc.shots.shape[0]) if v else np.arange(enc.shots.shape[0])
        return rows, cols

    def predict_proba_encoded(self, enc: Encoded) -> np.ndarray:
        """(n_queries, K) probabilities, averaged over ``n_ensemble`` seeded row/column permutations."""
        k = enc.labels.n_classes
        labels = self._labels(k)  # before any work: can this model score k labels?
        if self.decode == "batched":
            out = np.zeros((enc.queries.shape[0], k))
            for block in self.plan(enc):
                out[block.rows] = self.predict_block(enc, block)
            return out
        total = np.zeros((enc.queries.shape[0], k))
        for v in range(self.n_ensemble):
            rows, cols = self._member(enc, v)
            total += self._predict_one(enc.shots[rows][:, cols], enc.shot_ids[rows], enc.queries[:, cols], k, labels,
                                       enc.shot_view[rows][:, cols], enc.query_view[:, cols])
        return total / self.n_ensemble

    # -- batched decoding: plan blocks, answer a block -------------------------------------------

    def _chunk_size(self, head: int, costs: np.ndarray, queries, width: int) -> tuple[int, bool]:
        """(query rows per chunk, whether the whole context fits beside such a chunk), given the prompt's
        ``head`` tokens, each shot row's token ``costs`` and the labels' ``width`` in tokens."""
        limit = self.cutoff_len or 10**9

        def fits(shot_tokens: int, c: int) -> bool:
            return head + shot_tokens + self._chunk_tokens(queries[:c], width) <= limit

        chunk = min(self.max_queries, queries.shape[0])
        while chunk > 1 and not fits(int(costs.sum()), chunk):
            chunk //= 2
        if fits(int(costs.sum()), chunk):
            return chunk, True
        need_min = int(np.sort(costs)[: self.min_shots].sum())
        chunk = min(self.max_queries, queries.shape[0], 10)
        while chunk > 1 and not fits(need_min, chunk):
            chunk //= 2
        if not fits(need_min, chunk):
            raise PredictionError(
                f"the context ({len(costs)} rows x {queries.shape[1]} features) does not fit the model's "
                f"{limit}-token window even with {min(self.min_shots, len(costs))} retrieved rows and one query row"
            )
        return chunk, False

    def _batch_size(self, tokens: int) -> int:
        """Chunks per block: as many sequences of ``tokens`` as ``kv_budget_mb`` of KV cache holds (1..32)."""
        if self.batch:
            return self.batch
        c = self.model.config
        c = getattr(c, "get_text_config", lambda: c)()
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        elem = next(self.model.parameters()).element_size()
        per_seq = 2 * c.num_hidden_layers * heads * head_dim * elem * tokens
        return int(max(1, min(32, self._kv_budget() // max(per_seq, 1))))

    def _kv_budget(self) -> int:
        """Bytes of KV cache a block may take: ``kv_budget_mb``, or on a GPU (None) half of its free memory."""
        import torch

        dev = self.model.device
        if self.kv_budget_mb is None:
            if dev.type != "cuda":
                return 1024 * 2**20
            return torch.cuda.mem_get_info(dev)[0] // 2
        return self.kv_budget_mb * 2**20

    def plan(self, enc: Encoded) -> list[Block]:
        """The blocks of work for ``enc``, in order; deterministic, and the same for every ensemble member
        (row and column permutations change neither token counts nor distances)."""
        k, n = enc.labels.n_classes, enc.queries.shape[0]
        width = self._labels(k).width
        head = len(self._ids(self._prefix_text(enc.shots[:0], enc.shot_ids[:0], k)))
        costs = self._row_costs(enc.shot_view, enc.shot_ids)
        chunk, fits_all = self._chunk_size(head, costs, enc.query_view, width)
        if fits_all:
            groups = [(np.arange(enc.shots.shape[0]), np.arange(n))]
        else:
            self.stats["retrieval_chunks"] += -(-n // chunk)
            groups = []
            fit = (self.cutoff_len - head - self._chunk_tokens(enc.query_view[:chunk], width)) // max(int(np.median(costs)), 1)
            per_group = max(1, min(GROUP_CHUNKS, fit // chunk))
            for rows in self._query_groups(enc.queries, chunk * per_group):
                widest = max(self._chunk_tokens(enc.query_view[rows[i:i + chunk]], width) for i in range(0, len(rows), chunk))
                groups.append((nearest_shots(enc.shots, enc.queries[rows], costs, self.cutoff_len - head - widest), rows))
        blocks, b = [], self._batch_size(self.cutoff_len or 4096)
        for g, (shots, rows) in enumerate(groups):
            chunks = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
            blocks += [Block(g, shots, tuple(chunks[i:i + b])) for i in range(0, len(chunks), b)]
        return blocks

    def _query_groups(self, queries: np.ndarray, size: int) -> list[np.ndarray]:
        """Query rows in groups of about ``size`` similar rows (k-means on the codes, seeded), each group's
        rows in table order, groups ordered by their first row."""
        n_groups = min(-(-queries.shape[0] // size), len(np.unique(queries, axis=0)))
        if n_groups <= 1:
            return [np.arange(queries.shape[0])]
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=n_groups, n_init=1, random_state=self.seed).fit(queries.astype(np.float64))
        groups = [np.flatnonzero(km.labels_ == g) for g in range(n_groups)]
        return sorted((g for g in groups if g.size), key=lambda g: g[0])

    def predict_block(self, enc: Encoded, block: Block) -> np.ndarray:
        """(len(block.rows), K) probabilities of a block's rows, averaged over the ensemble."""
        k = enc.labels.n_classes
        labels = self._labels(k)
        total = np.zeros((len(block.rows), k))
        keep = np.zeros(enc.shots.shape[0], dtype=bool)
        keep[block.shots] = True
        if self._prefix_owner is not enc or (self._prefixes and next(iter(self._prefixes))[0] != block.group):
            self._prefixes.clear()  # blocks come group by group: only the current group's prefixes are kept
            self._prefix_owner = enc
        for v in range(self.n_ensemble):
            rows, cols = self._member(enc, v)
            order = rows[keep[rows]]  # this member's shot order, restricted to the block's shots
            if (block.group, v) not in self._prefixes:
                prefix = self._ids(self._prefix_text(enc.shot_view[order][:, cols], enc.shot_ids[order]))
                cache = self._run_prefix(prefix)
                self._prefixes[(block.group, v)] = (len(prefix), [(lay.keys, lay.values) for lay in cache.layers], cache)
            length, kv, cache = self._prefixes[(block.group, v)]
            queries = [enc.query_view[c][:, cols] for c in block.chunks]
            if self.batch is None and labels.single and len(queries) * JACOBI_PASSES < max(len(q) for q in queries):
                guess = int(np.bincount(enc.shot_ids[block.shots], minlength=k).argmax())
                total += np.concatenate([self._score_chunk(cache, length, q, labels, guess) for q in queries])
            else:
                total += np.concatenate(self._score_batch(length, kv, queries, labels))
        return total / self.n_ensemble

    def _score_batch(self, prefix_len: int, prefix_kv: list, chunks: list[np.ndarray], labels: LabelTokens) -> list[np.ndarray]:
        """Greedy label probabilities of each chunk's queries, all chunks side by side after the same prefix.

        Each row of the batch is [prefix][padding][chunk's query rows + first answer piece]: the padding is
        masked and the positions skip it, so every row computes exactly its own sequence, and all rows end at
        the same slot, so one logit per row is read per pass. Each further pass appends the chosen label and
        the next answer piece to every row (left-padded the same way when labels differ in length). The
        labels' probes run in the slots after the answer position and are then overwritten."""
        import torch
        from transformers import StaticCache

        b, q = len(chunks), max(len(c) for c in chunks)
        heads = [self._ids(self._suffix_text(c)) + self._ids(prompt.answer_piece(0)) for c in chunks]
        width = max(map(len, heads))
        pieces = [self._ids(prompt.answer_piece(i)) for i in range(1, q)]
        probe_len = max(map(len, labels.probes), default=0)
        total_len = prefix_len + width + sum(labels.width + len(p) for p in pieces) + probe_len
        # The block's cache: the previous block's when it holds the same prefix (the same group and member,
        # as blocks come in order) for as many rows and is long enough; slots past the prefix are rewritten
        # before they are read. Lengths round up to 64 so that blocks of one group can share it.
        owner = (id(prefix_kv), b)
        if self._static is None or self._static[0] != owner or self._static[3] < total_len:
            length = -(-total_len // 64) * 64
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            for layer, (key, value) in zip(cache.layers, prefix_kv, strict=True):
                layer.lazy_initialization(key.expand(b, -1, -1, -1), value.expand(b, -1, -1, -1))
                layer.keys[:, :, :prefix_len] = key
                layer.values[:, :, :prefix_len] = value
            self._static = (owner, cache, prefix_kv, length)  # prefix_kv kept alive: its id stays unique
        cache = self._static[1]
        for layer in cache.layers:
            layer.cumulative_length.fill_(prefix_len)
        pad = self.tokenizer.pad_token_id or 0
        nxt = torch.full((b,), prefix_len, dtype=torch.long)  # each row's next position
        mask = torch.ones((b, prefix_len), dtype=torch.long)

        def step(rows: list[list[int]]):
            """Append each row's tokens, left-padded to one width; the pass's logits at the last slot."""
            nonlocal nxt, mask
            w = max(map(len, rows))
            ids = torch.full((b, w), pad, dtype=torch.long)
            pos = nxt[:, None].repeat(1, w)
            new = torch.zeros((b, w), dtype=torch.long)
            for r, t in enumerate(rows):
                ids[r, w - len(t):] = torch.as_tensor(t)
                pos[r, w - len(t):] += torch.arange(len(t))
                new[r, w - len(t):] = 1
            nxt = nxt + new.sum(dim=1)
            mask = torch.cat([mask, new], dim=1)
            return self._pass(ids, pos, mask, cache)

        def probe(node: tuple[int, ...]):
            """The logits after ``node`` in every row, then its slots given back."""
            ids = torch.as_tensor(node).expand(b, -1)
            logits = self._pass(ids, nxt[:, None] + torch.arange(len(node)),
                                torch.cat([mask, torch.ones_like(ids)], dim=1), cache)
            for layer in cache.layers:
                layer.cumulative_length.sub_(len(node))
            return logits

        ends = np.array([len(c) for c in chunks]) - 1
        probs = np.zeros((b, q, len(labels.seqs)))
        root = step(heads)
        for i in range(q):
            p = labels.proba(root, [probe(node) for node in labels.probes], ends == i).cpu()
            probs[:, i] = p.numpy()
            self.stats["passes"] += 1 + len(labels.probes)
            if i + 1 == q:
                break
            root = step([list(labels.seqs[c]) + pieces[i] for c in p.argmax(dim=1).tolist()])
        self.stats["sequences"] += b
        return [probs[r, :len(c)] for r, c in enumerate(chunks)]

    def _pass(self, ids, pos, mask, cache):
        """One forward pass of a block: logits at the last slot of each row."""
        import torch

        dev = self.model.device
        with torch.no_grad():
            out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                             use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1]

    def _predict_one(self, shots, shot_ids, queries, k, labels, shot_view, query_view) -> np.ndarray:
        """``shots``/``queries``: codes (what retrieval measures); the views: what the prompt shows."""
        out = np.zeros((queries.shape[0], k))
        head = self._ids(self._prefix_text(shot_view[:0], shot_ids[:0], k))
        costs = self._row_costs(shot_view, shot_ids)
        limit = self.cutoff_len or 10**9
        # all shots with the largest chunk of queries that leaves room for them (the prefix cache makes
        # small chunks cheap); else nearest-neighbour shots per chunk of at most 10 queries
        chunk, fits_all = self._chunk_size(len(head), costs, query_view, labels.width)
        cache = None
        if fits_all:
            prefix = self._ids(self._prefix_text(shot_view, shot_ids))
            cache = self._run_prefix(prefix) if self.cache_prefix and self.decode != "generate" else None
        guess = int(np.bincount(shot_ids, minlength=k).argmax())  # the shots' majority class
        for start in range(0, queries.shape[0], chunk):
            q = query_view[start:start + chunk]
            if not fits_all:  # nearest-neighbour shots for this chunk
                budget = limit - len(head) - self._chunk_tokens(q, labels.width)
                keep = nearest_shots(shots, queries[start:start + chunk], costs, budget)
                prefix = self._ids(self._prefix_text(shot_view[keep], shot_ids[keep]))
                self.stats["retrieval_chunks"] += 1
            self.stats["sequences"] += 1
            if self.decode == "generate":
                out[start:start + chunk] = self._generate_chunk(prefix, q, k)
                continue
            c = cache if (fits_all and self.cache_prefix) else self._run_prefix(prefix)
            out[start:start + chunk] = self._score_chunk(c, len(prefix), q, labels, guess)
        return out

    def encode(self, context: pd.DataFrame, y_context, queries: pd.DataFrame) -> Encoded:
        """The tables as this model reads them: text columns as text, unless its tokenizer's saved metadata
        says it reads codes only (the embedded base and what is trained from it)."""
        return encode_tables(context, y_context, queries, text=reads_text(self.tokenizer))

    def predict_proba(self, context: pd.DataFrame, y_context, queries: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(classes, probabilities) for ``queries`` given the labelled ``context``."""
        enc = self.encode(context, y_context, queries)
        return enc.labels.classes, self.predict_proba_encoded(enc)
