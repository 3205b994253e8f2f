import pytest
import yaml

from mllm.core.params import (
    BASELINE_NAMES,
    FULL,
    SKLEARN_DATASETS,
    WARMUP,
    ParamsError,
    load_params,
    parse_params,
)
from tests.conftest import ROOT, params_dict


def _with(**gen):
    return params_dict(seed=1, generate={"num_tasks": 10, "shard_size": 5, **gen})


def test_params_yaml_holds_the_papers_ranges():
    p = load_params(ROOT / "params.yaml").generate
    assert (p.features.min, p.features.max) == (5, 50)
    assert (p.classes.min, p.classes.max) == (2, 10)
    assert (p.shots.min, p.shots.max) == (8, 1024)
    assert p.queries == 50 and p.prior == "mix" and p.mlp_share == 0.7


@pytest.mark.parametrize(
    "gen, names",
    [
        ({"features": {"min": 60, "max": 50}}, ["generate.features", "min 60 > max 50"]),
        ({"classes": {"min": 2, "max": 11}}, ["generate.classes", "max 11 > 10"]),
        ({"classes": {"min": 1, "max": 5}}, ["generate.classes", "min 1 < 2"]),
        ({"num_tasks": -3}, ["generate.num_tasks"]),
        ({"shard_size": 0}, ["generate.shard_size"]),
        ({"queries": -1}, ["generate.queries"]),
        ({"prior": "gaussian"}, ["generate.prior", "mlp", "tree", "mix"]),
        ({"mlp_share": 1.5}, ["generate.mlp_share"]),
        ({"shots": {"min": 1, "max": 8}}, ["generate.shots"]),
        ({"n_features": 3}, ["generate.n_features", "unknown key"]),
    ],
)
def test_invalid_params_name_the_parameter(gen, names):
    with pytest.raises(ParamsError) as err:
        parse_params(_with(**gen))
    for name in names:
        assert name in str(err.value)


def test_negative_seed():
    with pytest.raises(ParamsError, match="seed"):
        parse_params(params_dict(seed=-1))


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_every_section_and_key_is_required(tmp_path):
    """params.yaml is the one place defaults live: a missing section or key is named, never filled in."""
    raw = params_dict()
    del raw["evaluate"]
    del raw["train"]["weight_decay"]
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as err:
        load_params(f)
    assert "evaluate: missing" in str(err.value) and "train.weight_decay: missing" in str(err.value)


@pytest.mark.parametrize("typo, named", [
    ({"evalute": {"max_test": 5}}, "evalute: unknown key"),
    ({"generate": {"num_task": 5}}, "generate.num_task: unknown key"),
    ({"train": {"stages": [{"name": "w", "corpus": "warmup", "lr": 1e-5, "epochs": 1, "max_steps": 1,
                            "max_examples": None, "max_step": 2}]}}, "train.stages.0.max_step: unknown key"),
])
def test_unknown_sections_and_keys_are_errors(tmp_path, typo, named):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params_dict(**typo)))
    with pytest.raises(ParamsError, match=named):
        load_params(f)
    with pytest.raises(ParamsError, match=named):  # the same typo as a -S override
        load_params(ROOT / "params.yaml", typo)


def test_overrides_merge(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params_dict(seed=3, generate={"features": {"min": 5, "max": 9}})))
    p = load_params(f, {"generate": {"features": {"max": 7}}})
    assert (p.generate.features.min, p.generate.features.max) == (5, 7)
    assert p.seed == 3


def test_name_lists_come_from_the_literal_types():
    from typing import get_args

    from mllm.core.params import EvaluateParams, TrainStage

    assert BASELINE_NAMES == get_args(get_args(EvaluateParams.model_fields["baselines"].annotation)[0])
    assert SKLEARN_DATASETS == get_args(get_args(EvaluateParams.model_fields["sklearn_datasets"].annotation)[0])
    assert all(TrainStage(name="s", corpus=c, lr=1e-5, epochs=1, max_steps=None, max_examples=None).corpus == c
               for c in (FULL, WARMUP, "MachineLearningLM_Corpus_All_0"))
    with pytest.raises(ValueError, match="corpus"):
        TrainStage(name="s", corpus="../elsewhere", lr=1e-5, epochs=1, max_steps=None, max_examples=None)
