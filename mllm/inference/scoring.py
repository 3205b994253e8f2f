"""Label scoring: the predictor reads the model's probability of every label at each answer position
instead of parsing generated text, so every query gets a full probability vector.

A label is scored as the token sequence the model writes for it: one token in the embedded tokenizer
(0..999 are whole tokens), one digit per token in Qwen's. The labels of a task form a trie of token
sequences; a label's probability is the product, along its path, of the model's probability of each token
among the tokens the task allows at that point (the children of the node, and the token that ends the label
when the node is itself a label: the answer's next punctuation). That is the exact probability that decoding
constrained to the task's labels writes this label, and the probabilities of a query's labels sum to one.
With single-token labels it is the softmax over the label tokens; a node with one allowed token contributes
a factor of one, so only the nodes with a choice (``LabelTokens.probes``: "1" when labels 1 and 10..19 exist)
need the model's logits after them, one extra position each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mllm.core.errors import InputError
from mllm.core.params import MAX_LABELS
from mllm.text import prompt


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _writes_label(tokenizer, k: int) -> bool:
    """Whether label ``k``'s tokens stand on their own inside an answer: the answer's tokens are its pieces'
    tokens and the label's, so the label can be scored and written token by token."""
    seq = _ids(tokenizer, str(k))
    if not seq or tokenizer.decode(seq) != str(k):
        return False
    first, nxt = prompt.answer_piece(0), prompt.answer_piece(1)
    return all(_ids(tokenizer, a + str(k) + b) == _ids(tokenizer, a) + seq + _ids(tokenizer, b)
               for a, b in ((first, nxt), (nxt, prompt.ANSWER_END)))


def label_capacity(tokenizer) -> int:
    """How many labels 0, 1, 2, ... this tokenizer can write in an answer (at most ``MAX_LABELS``)."""
    for k in range(MAX_LABELS):
        if not _writes_label(tokenizer, k):
            return k
    return MAX_LABELS


@dataclass(frozen=True)
class LabelTokens:
    """The token sequences of labels 0..K-1 and the tokens that end a label (see the module docstring)."""

    seqs: tuple[tuple[int, ...], ...]
    end_next: int  # the token after a label that another item follows
    end_last: int  # the token after the answer's last label
    _paths: np.ndarray = field(init=False, repr=False, compare=False)
    _nodes: tuple = field(init=False, repr=False, compare=False)  # (nodes with a choice, their columns)

    def __post_init__(self):
        labels = {s: k for k, s in enumerate(self.seqs)}
        children: dict[tuple, list[int]] = {}
        for s in self.seqs:
            for j in range(len(s)):
                kids = children.setdefault(s[:j], [])
                if s[j] not in kids:
                    kids.append(s[j])
        # nodes with a choice: the root, and every label prefix with more than one allowed continuation
        nodes = [()] + sorted((n for n in children if n and len(children[n]) + (n in labels) > 1), key=lambda n: (len(n), n))
        index = {n: i for i, n in enumerate(nodes)}
        # each node's allowed tokens, in a flat list: (node, child tokens..., END when the node is a label)
        flat, offset = [], {}
        for n in nodes:
            offset[n] = len(flat)
            flat += [(index[n], t) for t in children[n]] + ([(index[n], None)] if n in labels else [])
        paths = np.full((len(self.seqs), max(map(len, self.seqs)) + 1), len(flat), dtype=np.int64)  # len(flat): log 1
        for k, s in enumerate(self.seqs):
            steps = [offset[s[:j]] + children[s[:j]].index(s[j]) for j in range(len(s)) if s[:j] in index]
            if s in index:
                steps.append(offset[s] + len(children[s]))  # the label ends here rather than going on
            paths[k, :len(steps)] = steps
        # per node: its child tokens' logit columns, and whether the label's end is allowed there
        cols = tuple(([t for m, t in flat if m == i and t is not None], (i, None) in flat) for i in range(len(nodes)))
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "_nodes", (nodes, cols))

    @property
    def single(self) -> bool:
        """Every label is one token (no probes, and an answer's labels all have the same length)."""
        return all(len(s) == 1 for s in self.seqs)

    @property
    def first(self) -> list[int]:
        """Each label's first token (its only one when ``single``)."""
        return [s[0] for s in self.seqs]

    @property
    def width(self) -> int:
        """Tokens of the longest label."""
        return max(map(len, self.seqs))

    @property
    def probes(self) -> list[tuple[int, ...]]:
        """The label prefixes after which the model's next-token logits are needed (the root's are read anyway)."""
        return self._nodes[0][1:]

    def proba(self, root, probes, last):
        """(b, K) label probabilities from the logits at the answer position (``root``: (b, V)) and after each
        of ``probes`` (a list of (b, V)); ``last`` (b,) bool: whether this position is the answer's last item
        (its label is ended by ``]``, the others' by the next item)."""
        import torch

        if self.single:  # a softmax over the label tokens
            return torch.softmax(root[:, self.first].float(), dim=-1)
        ends = torch.where(torch.as_tensor(last), self.end_last, self.end_next).to(root.device)
        parts = []
        for logits, (children, ends_here) in zip([root, *probes], self._nodes[1], strict=True):
            cols = logits[:, children].float()
            if ends_here:
                cols = torch.cat([cols, logits.gather(1, ends[:, None]).float()], dim=1)
            parts.append(torch.log_softmax(cols, dim=-1))
        lp = torch.cat(parts + [torch.zeros_like(parts[0][:, :1])], dim=1)
        return torch.softmax(lp[:, torch.as_tensor(self._paths, device=lp.device)].sum(-1), dim=-1)


def label_tokens(tokenizer, n_classes: int) -> LabelTokens:
    """How this model writes labels 0..n_classes-1; a named error when it cannot write them all."""
    if n_classes > MAX_LABELS:
        raise InputError(f"{n_classes} classes; at most {MAX_LABELS} are supported")
    bad = next((k for k in range(n_classes) if not _writes_label(tokenizer, k)), None)
    if bad is not None:
        raise InputError(f"{n_classes} classes, but this model's tokenizer cannot write label {bad} apart from the "
                         f"answer's punctuation: at most {bad} classes with this model")
    return LabelTokens(tuple(tuple(_ids(tokenizer, str(k))) for k in range(n_classes)),
                       _ids(tokenizer, prompt.answer_piece(1))[0], _ids(tokenizer, prompt.ANSWER_END)[0])


def label_token_ids(tokenizer, n_classes: int) -> list[int]:
    """The single token of each label 0..n_classes-1, for code that reads one position per label."""
    labels = label_tokens(tokenizer, n_classes)
    if not labels.single:
        raise InputError(f"{n_classes} classes: this model writes some labels as several tokens")
    return labels.first


def check_labels(tokenizer, n_classes: int) -> None:
    """Before any work: can this model score a table of ``n_classes`` classes? (a named error if not)"""
    label_tokens(tokenizer, n_classes)
