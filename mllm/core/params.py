"""Typed, validated parameters (``params.yaml``).

Every stage reads its section through these models, so a wrong value fails before any work starts with a
message that names the parameter (``generate.features: min 60 > max 50``). ``params.yaml`` is the one place
defaults live: these models carry none, so every section and key is required and an unknown one (a typo) is
an error that names it. The name lists other modules use are derived from the ``Literal`` types here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mllm.core.errors import InputError

MAX_CLASSES = 10  # classes of a synthetic task (the paper's prior)
MAX_LABELS = 100  # classes of a table the in-context model predicts (the authors' benchmark goes to 100)
MAX_QUERIES = 50  # query rows one prompt answers at most (the paper's)
MAX_SHARDS = 100_000  # shards of a stage: their names (shard-00000.parquet) sort in task order up to here

Prior = Literal["mlp", "tree", "mix"]
NumberMode = Literal["whole", "digits"]  # 0..999 one token each (LLaMA-3 style) or digit tokens (Qwen2)
CORPUS_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a corpus directory: the encode stage's two, or imported ones
CorpusName = Literal["full", "warmup"]  # the filter stage's two task sets and the encode stage's two corpora
SklearnDataset = Literal["iris", "wine", "breast_cancer", "digits"]  # bundled with scikit-learn: load offline
BaselineName = Literal["knn", "random_forest", "xgboost", "logistic_regression", "majority"]

FULL, WARMUP = get_args(CorpusName)
NUMBER_MODES: tuple[str, ...] = get_args(NumberMode)
SKLEARN_DATASETS: tuple[str, ...] = get_args(SklearnDataset)
BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)


class ParamsError(InputError):
    """Invalid parameters; the message names each offending parameter."""


class _Strict(BaseModel):
    # strict: a value of the wrong type is an error, not a coercion (`num_tasks: true` is not 1)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Range(_Strict):
    """A ``{min, max}`` pair with min <= max; subclasses give the value type."""

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class IntRange(_Range):
    min: int = Field(ge=0)
    max: int = Field(ge=0)


class GenerateParams(_Strict):
    """Synthetic task generation from SCM priors (TabICL-style)."""

    num_tasks: int = Field(gt=0)
    shard_size: int = Field(gt=0)
    n_workers: int = Field(ge=1)
    prior: Prior
    mlp_share: float = Field(ge=0.0, le=1.0, description="share of MLP-SCM tasks when prior=mix")
    features: IntRange
    classes: IntRange
    shots: IntRange
    queries: int = Field(ge=1)
    binary_share: float = Field(ge=0.0, le=1.0, description="P(K=2) when 2 is in range")
    categorical_task_share: float = Field(ge=0.0, le=1.0)
    max_attempts: int = Field(ge=1, description="redraws before a task is declared impossible")

    @model_validator(mode="after")
    def _shard_count(self):
        shards = -(-self.num_tasks // self.shard_size)
        if shards > MAX_SHARDS:
            raise ValueError(f"num_tasks {self.num_tasks:,} in shards of {self.shard_size:,} makes {shards:,} shards; "
                             f"at most {MAX_SHARDS:,} (raise shard_size, or generate fewer tasks)")
        return self

    @field_validator("features")
    @classmethod
    def _features(cls, v: IntRange) -> IntRange:
        if v.min < 1:
            raise ValueError("min must be >= 1")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: IntRange) -> IntRange:
        if v.min < 2:
            raise ValueError(f"min {v.min} < 2 (a task needs at least two classes)")
        if v.max > MAX_CLASSES:
            raise ValueError(f"max {v.max} > {MAX_CLASSES} (the supported label limit)")
        return v

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: IntRange) -> IntRange:
        if v.min < 2:
            raise ValueError(f"min {v.min} < 2 (two classes need two shot rows)")
        return v


class FloatRange(_Range):
    min: float
    max: float


class FilterParams(_Strict):
    """Random-forest teacher gates (task level) and consensus (sample level)."""

    n_estimators: int = Field(ge=1)
    p_value_max: float = Field(gt=0.0, le=1.0, description="one-sided binomial test vs chance")
    kappa_min: float = Field(ge=-1.0, le=1.0)
    balanced_accuracy_margin: float = Field(ge=0.0, le=1.0, description="over 1/K")
    min_predicted_classes: int = Field(ge=1)
    max_dominant_share: float = Field(gt=0.0, le=1.0)
    kept_share: FloatRange
    n_workers: int = Field(ge=1)


class TokenizerParams(_Strict):
    """The embedded default tokenizer (built by the ``tokenizer`` stage)."""

    numbers: NumberMode


class EncodeParams(_Strict):
    """Compact encoding of filtered tasks into chat sequences."""

    tokenizer: str = Field(description="tokenizer dir, or a locally cached hub id")
    cutoff_len: int = Field(ge=64, description="max tokens per sequence; shots are dropped to fit")
    min_shots: int = Field(ge=1, description="a task that cannot keep this many shots is skipped")
    max_queries: int = Field(ge=1, le=MAX_QUERIES, description="query rows answered per sequence (the first ones)")
    n_workers: int = Field(ge=1)


class PlantParams(_Strict):
    """The compiled embedded base (``mllm plant``, models/tiny-base). tau = kernel sharpness per unit of
    summed code similarity (one unit = one identical value); the value code has ``nfreq`` frequencies in half
    turns under a Gaussian taper of width ``sigma_f`` (one frequency: cos(pi |u - v| / 1998) per column), and
    each column has 2 nfreq summary dims of its own (96 / (2 nfreq) columns). Column relevance: the vote
    weights column c by silu(relevance_gain (r_c + relevance_offset)), r_c = the shots' between-class share of
    its variance (each shot's class mean so far against the mean so far, the first shots damped by
    exp(-relevance_warmup / (shots so far / 2 + 1))); gain 0 = every column weighs 1. ``seed`` draws its random
    token codes (its own, so the pipeline seed does not change the base)."""

    tau: float = Field(gt=0.0)
    nfreq: int = Field(ge=1)
    sigma_f: float = Field(gt=0.0)
    relevance_gain: float = Field(ge=0.0)
    relevance_offset: float
    relevance_warmup: float = Field(ge=0.0)
    seed: int = Field(ge=0)


class TinyModelParams(_Strict):
    """Shape of the embedded tiny model (a Qwen2-architecture causal LM), used when training from scratch."""

    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    max_positions: int = Field(ge=64)

    @model_validator(mode="after")
    def _heads(self) -> TinyModelParams:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        return self


class LoraParams(_Strict):
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: str | list[str]
    modules_to_save: list[str] = Field(default_factory=list, description=(
        "modules trained whole beside the LoRA adapters and saved with them (peft's modules_to_save: every "
        "module whose name ends with one of these, e.g. layers.12.input_layernorm)"))


class RopeScaling(_Strict):
    """Rotary position scaling that stretches a base's context (the authors use YaRN x4 for 131k tokens)."""

    rope_type: Literal["yarn", "linear", "dynamic"]
    factor: float = Field(gt=1.0)


class ModelParams(_Strict):
    base: str = Field(description="tiny | scratch | a local model dir | a cached hub id")
    adapter: Literal["lora", "full"]
    lora: LoraParams
    tiny: TinyModelParams
    trust_remote_code: bool
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        description="the frozen weights' dtype: auto = bfloat16 on a GPU that has it, else float32")
    rope_scaling: RopeScaling | None = Field(default=None, description=(
        "stretch the base's context by this factor (training and inference alike); null: as the base has it"))

    @model_validator(mode="after")
    def _scratch_is_full(self) -> ModelParams:
        if self.base == "scratch" and self.adapter != "full":
            raise ValueError("base 'scratch' (random init) trains all weights: set model.adapter to 'full'")
        return self


class TrainStage(_Strict):
    """One curriculum stage: a corpus, a learning rate, and how long."""

    name: str
    corpus: str = Field(pattern=CORPUS_NAME, description=(
        "a corpus directory under the corpus dir: full or warmup (the encode stage's), or one written by "
        "`mllm import-corpus` (e.g. the authors' LLaMA-Factory files)"))
    lr: float = Field(gt=0.0)
    epochs: float = Field(gt=0.0)
    max_steps: int | None = Field(ge=1, description="optimizer steps; caps epochs")
    max_examples: int | None = Field(ge=1)
    part: list[int] | None = Field(default=None, min_length=2, max_length=2, description=(
        "[i, n]: only the i-th of n contiguous slices of the corpus shards (the paper trains on its full "
        "corpus in parts, one stage each)"))

    @model_validator(mode="after")
    def _part_in_range(self) -> TrainStage:
        if self.part is not None and not 0 <= self.part[0] < self.part[1]:
            raise ValueError(f"part {self.part}: expected [i, n] with 0 <= i < n")
        return self

    @property
    def source(self) -> str:
        """The data this stage reads: its corpus, and the part of it."""
        return self.corpus if self.part is None else f"{self.corpus}[{self.part[0]}/{self.part[1]}]"


class TrainParams(_Strict):
    """Continued pretraining (the curriculum runs its stages in order, each resuming the previous weights)."""

    stages: list[TrainStage] = Field(min_length=1)
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(ge=1)
    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    weight_decay: float = Field(ge=0.0)
    max_grad_norm: float = Field(gt=0.0)
    shot_label_loss: bool
    answer_loss: Literal["all", "labels"] = Field(
        description="all: the whole JSON answer carries loss (the paper); labels: only its "
        "label values (a model read by label scoring that never writes the JSON, e.g. the compiled base)")
    permute_labels: bool = Field(description="the control run: each sequence's labels shuffled among its rows, "
                                 "so the corpus keeps its format and label counts but not what features say")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"]
    gradient_checkpointing: Literal["auto"] | bool
    checkpoint_every: int = Field(ge=1, description="optimizer steps between checkpoints")
    snapshot_every: int = Field(ge=0, description="optimizer steps between snapshots of the trained weights, "
                                "which the evaluate stage scores into the accuracy-vs-tokens curve (0: none)")
    num_processes: int = Field(ge=1, description="data-parallel processes (torchrun) on this machine")
    log_every: int = Field(ge=1)


class SyntheticParams(_Strict):
    """Held-out synthetic tasks (the training prior, a seed stream no corpus draws) scored beside the tables."""

    tasks: int = Field(ge=0, description="held-out tasks (0: none)")
    shots: int = Field(ge=2, description="context rows per task: its first ones")
    queries: int = Field(ge=1, description="query rows scored per task, at most")


class CurveParams(_Strict):
    """The accuracy-vs-training-tokens curve: the base, each training snapshot and the trained model, scored
    on a slice of the evaluation (one seed) so that every point costs seconds, not minutes."""

    shots: int = Field(ge=2, description="context rows per real table")
    max_test: int = Field(ge=1, description="test rows per real table")
    synthetic_tasks: int = Field(ge=0, description="the first N of the held-out synthetic tasks (0: none)")


class EvaluateParams(_Strict):
    """Evaluation on real tables (the paper's protocol) and the registry gate."""

    sklearn_datasets: list[SklearnDataset]
    csv_dir: str | None = Field(description="a directory of CSV tables (last column the label)")
    max_csv: int | None = Field(ge=1, description="use only the first N CSVs (sorted by name)")
    shots: list[int] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    max_test: int | None = Field(ge=1, description="cap on test rows per table (None: all)")
    test_chunk: int = Field(ge=1, description="test rows that share one draw of shots (the authors': 50)")
    baselines: list[BaselineName]
    include_base: bool = Field(description="also evaluate the untrained base model")
    compare_champion: bool = Field(description="also evaluate the registry's current champion")
    max_queries: int = Field(ge=1, le=MAX_QUERIES)
    cutoff_len: int | None = Field(ge=64, description="tokens per prediction sequence, at most each model's "
                                   "window (None: the window); a context over it is answered from its "
                                   "nearest-neighbour shots")
    n_ensemble: int = Field(ge=1)
    registered_model: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    synthetic: SyntheticParams
    curve: CurveParams

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        if any(s < 2 for s in v):
            raise ValueError(f"every shot count must be >= 2, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _majority(self) -> EvaluateParams:
        if "majority" not in self.baselines:
            raise ValueError("baselines must include 'majority' (the promotion gate compares against it)")
        if not self.sklearn_datasets and self.csv_dir is None:
            raise ValueError("no datasets: list sklearn_datasets or set csv_dir")
        return self


class PipelineParams(_Strict):
    """The scheduled pipeline (``mllm serve``)."""

    cron: str = Field(description="cron schedule of the served pipeline deployment")
    deployment: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"cron needs 5 fields (minute hour day month weekday), got {v!r}")
        return v


class RunnerParams(_Strict):
    """Where fan-out stages (generate, filter, encode) run their shards."""

    kind: Literal["process", "dask"]
    dask_address: str | None = Field(description="scheduler address; None = a local cluster")


class Params(_Strict):
    seed: int = Field(ge=0)
    runner: RunnerParams
    generate: GenerateParams
    filter: FilterParams
    tokenizer: TokenizerParams
    plant: PlantParams
    encode: EncodeParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    pipeline: PipelineParams


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "missing (params.yaml holds every section and key with its default)"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        else:
            msg = f"{msg}, got {e['input']!r}"
        lines.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "invalid params:\n  " + "\n  ".join(lines)


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that ``1e-4`` is a float (YAML 1.2) rather than a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    """A params file or one ``-S`` value, read the same way."""
    return yaml.load(text, Loader=_Loader)


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Load and validate ``params.yaml``; ``overrides`` is a nested dict merged on top. Every section and key
    is required (this file is where the defaults live) and an unknown one is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"params file {path} must hold a mapping at top level")
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return parse_params(raw)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
