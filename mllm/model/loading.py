"""Models: the embedded tiny causal LM, any local or cached hub causal LM, and LoRA adapters on them.

Nothing here downloads: a base that is not on local disk (or in the local Hugging Face cache) is an error
that names it. Weights load from safetensors only, and no remote code runs unless asked for.
"""

from __future__ import annotations

from pathlib import Path

from mllm.core.errors import InputError
from mllm.core.params import ModelParams

TINY_BASE_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny-base"


class ModelError(InputError):
    """A model that cannot be loaded or adapted as asked; the message says which and why."""


# Weight files that load by unpickling, which can run code stored in them: never loaded.
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(directory: Path) -> None:
    """``directory``'s weights are safetensors files whose headers and data are complete; pickled weights
    alone are refused (mllm never unpickles a model file)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(f.name for f in directory.iterdir() if f.suffix in PICKLED_WEIGHTS)
        if pickled:
            raise ModelError(f"{directory} holds pickled weights only ({', '.join(pickled)}): mllm loads "
                             "safetensors files only, because loading a pickle can run code stored in it; "
                             "save the model with save_pretrained(..., safe_serialization=True)")
        raise ModelError(f"{directory} has no weights (no *.safetensors file)")
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(f, "pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as err:  # truncated, corrupt or unreadable
            raise ModelError(f"{f} is not a complete safetensors file ({err}); it may be truncated: copy or "
                             "download it again") from None


def tiny_config(mp: ModelParams, tokenizer):
    """A small Qwen2-architecture config sized by ``model.tiny`` for the project's tokenizer."""
    from transformers import Qwen2Config

    t = mp.tiny
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.kv_heads,
        max_position_embeddings=t.max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def resolve_base(base: str) -> str:
    """``tiny`` -> the committed embedded base; anything else is a local dir or a cached hub id."""
    if base == "tiny":
        if not (TINY_BASE_DIR / "config.json").is_file():
            raise ModelError(f"model.base=tiny but no embedded base at {TINY_BASE_DIR}; use model.base=scratch")
        return str(TINY_BASE_DIR)
    return base


def pick_device(device: str | None = None) -> str:
    """The device models run on: the one asked for, else the first GPU when there is one, else the CPU."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: str):
    """``model.dtype`` as a torch dtype: ``auto`` is bfloat16 on a GPU that computes in it, else float32
    (a CPU without native bf16 emulates it far slower, and the compiled tiny base needs fp32 precision)."""
    import torch

    if name == "auto":
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def _from_local(name: str, trust_remote_code: bool = False, dtype=None, rope_scaling: dict | None = None):
    """A causal LM from a local dir or the local HF cache: safetensors only, loaded straight into ``dtype``
    (default float32; never a float32 copy of bf16 weights), its context stretched by ``rope_scaling``
    ({rope_type, factor}), nothing downloaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if Path(name).is_dir():
        check_weights(Path(name))
    config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
    if rope_scaling:
        scale_rope(config, rope_scaling)
    return AutoModelForCausalLM.from_pretrained(name, config=config, local_files_only=True, use_safetensors=True,
                                                trust_remote_code=trust_remote_code, dtype=dtype or torch.float32)


def scale_rope(config, rope_scaling: dict) -> None:
    """Stretch ``config``'s context: ``rope_scaling`` {rope_type, factor} over its current length."""
    original = config.max_position_embeddings
    params = dict(getattr(config, "rope_parameters", None) or {})
    if params.get("rope_type", "default") != "default":
        raise ModelError(f"the base already scales its rotary positions ({params}); set model.rope_scaling to null")
    params.update(rope_type=rope_scaling["rope_type"], factor=float(rope_scaling["factor"]),
                  original_max_position_embeddings=original)
    config.rope_parameters = params
    config.max_position_embeddings = int(original * rope_scaling["factor"])


def load_base(mp: ModelParams, tokenizer, seed: int, device: str | None = None):
    """The base causal LM: ``scratch`` (random init of the tiny config), ``tiny``, a path or a hub id; in
    ``model.dtype`` for ``device`` (where it will train; it is left on the CPU for the caller to place)."""
    import torch

    dtype = resolve_dtype(mp.dtype, pick_device(device))
    if mp.base == "scratch":
        from transformers import Qwen2ForCausalLM

        torch.manual_seed(seed)
        config = tiny_config(mp, tokenizer)
        if mp.rope_scaling:
            scale_rope(config, mp.rope_scaling.model_dump())
        return Qwen2ForCausalLM(config).to(dtype)
    name = resolve_base(mp.base)
    try:
        rope = mp.rope_scaling.model_dump() if mp.rope_scaling else None
        model = _from_local(name, trust_remote_code=mp.trust_remote_code, dtype=dtype, rope_scaling=rope)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.base {mp.base!r} cannot be loaded from local files (nothing is downloaded): {err}") from None
    # An adapter records its base as params name it ('tiny', not this checkout's absolute path), so the
    # trained model's bytes do not depend on where the repo lies and load_trained resolves it in any checkout.
    model.config._name_or_path = model.name_or_path = mp.base
    own = Path(name) / "tokenizer.json"
    if own.is_file():  # a base that ships its tokenizer must be fed by that tokenizer's vocabulary
        from mllm.text.tokenizer import load_tokenizer

        if load_tokenizer(Path(name)).get_vocab() != tokenizer.get_vocab():
            raise ModelError(f"the tokenizer (encode.tokenizer) is not the one model.base {mp.base!r} was trained "
                             f"with ({name}); re-encode with encode.tokenizer pointing at {name}")
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ModelError(
            f"model.base {mp.base!r} has {model.get_input_embeddings().weight.shape[0]} embeddings but the tokenizer "
            f"has {len(tokenizer)} tokens: the tokenizer does not belong to this model"
        )
    return model


def add_adapter(model, mp: ModelParams, resume_adapter: str | None = None):
    """Wrap ``model`` for training: LoRA (new, or resumed from ``resume_adapter``) or full fine-tuning."""
    if mp.adapter == "full":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume_adapter:
        check_weights(Path(resume_adapter))
        return PeftModel.from_pretrained(model, resume_adapter, is_trainable=True)
    cfg = LoraConfig(
        r=mp.lora.r, lora_alpha=mp.lora.alpha, lora_dropout=mp.lora.dropout, bias="none",
        target_modules=mp.lora.target_modules, task_type="CAUSAL_LM",
        modules_to_save=list(mp.lora.modules_to_save) or None,
    )
    names = [n for n, _ in model.named_modules()]
    for want in mp.lora.modules_to_save:  # peft's rule (the name ends with it); peft skips a miss silently
        if not any(n.endswith(want) for n in names):
            raise ModelError(f"model.lora.modules_to_save {want!r} names no module of model.base {mp.base!r}")
    try:
        return get_peft_model(model, cfg)
    except ValueError as err:
        raise ModelError(f"LoRA target modules {mp.lora.target_modules!r} match nothing in model.base "
                         f"{mp.base!r}: {err}") from None


def save_trained(model, out: Path, state_dict: dict | None = None) -> None:
    """Save a trained model (full, or a LoRA adapter without its base) as safetensors into ``out``; with
    ``state_dict``, those weights (the whole tensors of a sharded model) instead of the module's own."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    # What peft's 'auto' decides, without its look-up of the base on the Hub: the vocabulary is never
    # resized here (load_base refuses a tokenizer larger than the embeddings), so embeddings are saved
    # exactly when LoRA adapted them.
    adapted = any(isinstance(m, BaseTunerLayer) and name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES
                  for name, m in model.named_modules())
    for cfg in model.peft_config.values():
        # peft keeps 'all-linear' resolved as a set, written in hash-seed order: sorted, the bytes are the same
        if isinstance(cfg.target_modules, set):
            cfg.target_modules = sorted(cfg.target_modules)
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=adapted, state_dict=state_dict)


def load_trained_with_tokenizer(path: str | Path, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) of a trained model directory: what every prediction entry point needs."""
    from mllm.text.tokenizer import load_tokenizer

    return load_trained(path, device, dtype), load_tokenizer(path)


def load_trained(path: str | Path, device: str | None = None, dtype: str = "auto"):
    """A trained model directory (``data/train/model``): a full model, or a LoRA adapter merged into its
    base; on ``device`` (default: a GPU when there is one) in ``dtype`` (``auto``: bf16 on a GPU that has it,
    else fp32), in eval mode."""
    device = pick_device(device)
    model = _load_trained(Path(path), resolve_dtype(dtype, device))
    return model.to(device).eval()


def check_trained_dir(path: str | Path) -> None:
    """What loading needs, checked without loading: a directory with a full model (config.json) or a LoRA
    adapter (adapter_config.json), complete safetensors weights, and a tokenizer."""
    from mllm.text.tokenizer import check_tokenizer_files

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"no model directory {path}")
    if _is_adapter(path):
        _check_adapter_files(path)
    else:
        check_weights(path)
    check_tokenizer_files(path)


def _is_adapter(path: Path) -> bool:
    """Whether ``path`` holds a LoRA adapter (else a full model); a directory with neither is a named error."""
    if (path / "adapter_config.json").is_file():
        return True
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a trained model directory (no config.json or adapter_config.json)")
    return False


def _check_adapter_files(path: Path) -> None:
    check_weights(path)  # first: it says why when there is no safetensors file at all (pickled weights)
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelError(f"the adapter in {path} has no adapter_model.safetensors")


def _load_trained(path: Path, dtype):
    if _is_adapter(path):
        import json

        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"the adapter in {path} does not name its base model (base_model_name_or_path)")
        _check_adapter_files(path)
        meta = path / "mllm_model.json"  # what training changed in the base's config (its rotary scaling)
        rope = json.loads(meta.read_text()).get("rope_scaling") if meta.is_file() else None
        try:
            model = _from_local(resolve_base(base), dtype=dtype, rope_scaling=rope)
        except ModelError:
            raise
        except (OSError, ValueError) as err:
            raise ModelError(f"the base {base!r} of the adapter in {path} cannot be loaded from local files: {err}") from None
        # merged for inference: the same function without the adapter's extra matmuls per layer
        return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    try:
        return _from_local(str(path), dtype=dtype)
    except ModelError:
        raise
    except (OSError, ValueError) as err:
        raise ModelError(f"the model in {path} cannot be loaded: {err}") from None
