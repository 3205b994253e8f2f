"""Typed, validated parameters (``params.yaml``).

Every stage reads its section through these models, so a wrong value fails before any work starts with a
message that names the parameter (``generate.features: min 60 > max 50``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_CLASSES = 10  # the label vocabulary of the paper's recipe; more classes is a different problem


class ParamsError(ValueError):
    """Invalid parameters; the message names each offending parameter."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class GenerateParams(_Strict):
    """Synthetic task generation from SCM priors (TabICL-style)."""

    num_tasks: int = Field(gt=0)
    shard_size: int = Field(gt=0)
    n_workers: int = Field(default=1, ge=1)
    prior: Literal["mlp", "tree", "mix"] = "mix"
    mlp_share: float = Field(default=0.7, ge=0.0, le=1.0, description="share of MLP-SCM tasks when prior=mix")
    features: IntRange = IntRange(min=5, max=50)
    classes: IntRange = IntRange(min=2, max=10)
    shots: IntRange = IntRange(min=8, max=1024)
    queries: int = Field(default=50, ge=1)
    binary_share: float = Field(default=0.5, ge=0.0, le=1.0, description="P(K=2) when 2 is in range")
    categorical_task_share: float = Field(default=0.5, ge=0.0, le=1.0)
    max_attempts: int = Field(default=50, ge=1, description="redraws before a task is declared impossible")

    @model_validator(mode="before")
    @classmethod
    def _partial_ranges(cls, data):
        # `-S generate.classes.max=8` on a file without `classes` keeps the default min.
        if isinstance(data, dict):
            for name in ("features", "classes", "shots"):
                if isinstance(data.get(name), dict):
                    data = {**data, name: {**cls.model_fields[name].default.model_dump(), **data[name]}}
        return data

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


class Params(_Strict):
    seed: int = Field(ge=0)
    generate: GenerateParams


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "invalid params:\n  " + "\n  ".join(lines)


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Load and validate ``params.yaml``; ``overrides`` is a nested dict merged on top."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"params file {path} must hold a mapping at top level")
    if overrides:
        raw = deep_merge(raw, overrides)
    # Sections of later stages are validated by their own stage; keep only what we model here.
    known = {k: raw[k] for k in Params.model_fields if k in raw}
    missing = [k for k in Params.model_fields if k not in raw]
    if missing:
        raise ParamsError(f"invalid params:\n  {', '.join(missing)}: missing from {path}")
    return parse_params(known)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
