import pytest

from mllm.config import ParamsError, load_params, parse_params

BASE = {"seed": 1, "generate": {"num_tasks": 10, "shard_size": 5}}


def _with(**gen):
    return {"seed": 1, "generate": {**BASE["generate"], **gen}}


def test_defaults_are_the_papers_ranges():
    p = parse_params(BASE).generate
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
        ({"n_features": 3}, ["generate.n_features", "Extra inputs"]),
    ],
)
def test_invalid_params_name_the_parameter(gen, names):
    with pytest.raises(ParamsError) as err:
        parse_params(_with(**gen))
    for name in names:
        assert name in str(err.value)


def test_negative_seed():
    with pytest.raises(ParamsError, match="seed"):
        parse_params({"seed": -1, "generate": BASE["generate"]})


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("seed: 1\n")
    with pytest.raises(ParamsError, match="generate: missing"):
        load_params(missing)


def test_overrides_merge(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("seed: 3\ngenerate: {num_tasks: 10, shard_size: 5, features: {min: 5, max: 9}}\nlater_stage: {x: 1}\n")
    p = load_params(f, {"generate": {"features": {"max": 7}}})
    assert (p.generate.features.min, p.generate.features.max) == (5, 7)
    assert p.seed == 3
