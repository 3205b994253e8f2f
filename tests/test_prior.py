import numpy as np
import pytest

from mllm.data.prior import generate_task, task_rng
from mllm.data.prior.activations import ACTIVATIONS, apply_activation
from mllm.data.prior.causes import sample_causes
from mllm.data.prior.classify import discretise_columns, to_classes
from mllm.data.prior.sampler import TaskGenerationError
from mllm.data.prior.tree_scm import _leaf_means, _leaves
from tests.conftest import section


def _params(**kw):
    return section("generate", num_tasks=100, shard_size=10, **kw)


def _check_task(t, p):
    n = t.n_shots + t.n_queries
    assert t.X.shape == (n, t.n_features) and t.X.dtype == np.float32
    assert t.y.shape == (n,)
    assert p.features.min <= t.n_features <= p.features.max
    assert p.shots.min <= t.n_shots <= p.shots.max
    assert t.n_queries == p.queries
    assert np.isfinite(t.X).all()
    assert t.y.min() == 0 and t.y.max() == t.n_classes - 1
    assert 2 <= t.n_classes <= p.classes.max
    assert np.unique(t.y[: t.n_shots]).size >= 2
    assert (np.ptp(t.X[: t.n_shots], axis=0) > 0).all(), "constant shot columns must be dropped"
    assert t.categorical.shape == (t.n_features,)
    cats = t.X[:, t.categorical]
    assert np.array_equal(cats, np.round(cats)), "categorical columns hold integer codes"


@pytest.mark.parametrize("prior", ["mlp", "tree"])
def test_each_prior_makes_valid_tasks(prior):
    p = _params(prior=prior, shots={"min": 8, "max": 300})
    tasks = [generate_task(7, i, p) for i in range(60)]
    for t in tasks:
        assert t.prior == prior
        _check_task(t, p)
    hps = [t.hyperparams for t in tasks]
    assert {h["causal"] for h in hps} == {True, False}
    assert {h["class_mode"] for h in hps} == {"rank", "value"}
    assert {h["cause_sampling"] for h in hps} == {"normal", "uniform", "mixed"}
    assert any(t.categorical.any() for t in tasks)
    assert len({t.n_classes for t in tasks}) >= 4
    if prior == "mlp":
        acts = {a for h in hps for a in h["activations"]}
        assert len(acts) >= 8
        assert {"n_layers", "width", "init_std", "noise_std", "dropout"} <= hps[0].keys()
    else:
        assert {h["ensemble"] for h in hps} == {"forest", "boosting"}
        assert {"n_trees", "depth", "noise_std"} <= hps[0].keys()


def test_mix_share_and_binary_share():
    p = _params(shots={"min": 8, "max": 64}, features={"min": 5, "max": 10})
    tasks = [generate_task(3, i, p) for i in range(300)]
    mlp = np.mean([t.prior == "mlp" for t in tasks])
    assert 0.6 < mlp < 0.8
    binary = np.mean([t.hyperparams["k_requested"] == 2 for t in tasks])
    assert 0.4 < binary < 0.6


def test_shots_are_log_uniform():
    p = _params(shots={"min": 8, "max": 1024}, features={"min": 5, "max": 6})
    shots = np.array([generate_task(5, i, p).n_shots for i in range(400)])
    assert shots.min() >= 8 and shots.max() <= 1024
    # log-uniform: about half the mass below the geometric mean (~91)
    assert 0.4 < np.mean(shots < 91) < 0.6


def test_task_depends_only_on_seed_and_index():
    p = _params(shots={"min": 8, "max": 128})
    a = generate_task(11, 17, p)
    for i in (3, 99, 17):  # generating other tasks in between changes nothing
        generate_task(11, i, p)
    b = generate_task(11, 17, p)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y) and a.hyperparams == b.hyperparams
    c = generate_task(12, 17, p)
    assert not (c.X.shape == a.X.shape and np.array_equal(c.X, a.X))


def test_impossible_params_raise_a_clear_error():
    # 2 shots can never hold 2 classes when every task needs >= 5 non-constant columns... and
    # with a single attempt we surface the redraw limit with the params in the message.
    p = _params(shots={"min": 2, "max": 2}, max_attempts=1, features={"min": 50, "max": 50})
    with pytest.raises(TaskGenerationError, match="max_attempts"):
        for i in range(50):
            generate_task(0, i, p)


def test_to_classes_rank_mode_and_compaction():
    rng = np.random.default_rng(0)
    y = np.arange(1000, dtype=float)
    labels = to_classes(rng, y, 4, "rank")
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # thresholds on rank: labels are constant on contiguous runs of the sorted target
    assert np.count_nonzero(np.diff(labels)) == 3
    # a constant target collapses to one class and is compacted to label 0
    assert set(to_classes(rng, np.ones(50), 5, "rank")) == {0}


def test_to_classes_value_mode_uses_standard_normal_cuts():
    rng = np.random.default_rng(1)
    y = rng.normal(5.0, 3.0, size=5000)
    labels = to_classes(rng, y, 2, "value")
    # one N(0,1) cut on the standardised target: both classes present, boundary monotone in y
    order = np.argsort(y)
    assert np.count_nonzero(np.diff(labels[order])) == 1


def test_discretise_columns_gives_permuted_codes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 6))
    out, mask = discretise_columns(rng, x.copy(), share=1.0)
    assert mask.all()
    for j in range(6):
        codes = np.unique(out[:, j])
        assert 2 <= codes.size <= 10
        assert np.array_equal(codes, np.arange(codes.size))


def test_causes_kinds():
    rng = np.random.default_rng(3)
    x, kinds = sample_causes(rng, 400, 40, "mixed")
    assert x.shape == (400, 40) and set(kinds) == {"normal", "uniform", "multinomial", "zipf"}
    for j, k in enumerate(kinds):
        if k in ("multinomial", "zipf"):
            assert np.array_equal(x[:, j], np.round(x[:, j]))
    with pytest.raises(ValueError, match="unknown cause sampling"):
        sample_causes(rng, 10, 2, "bogus")


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_are_finite_and_shaped(name):
    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, size=(200, 7))
    out = apply_activation(name, z, rng)
    assert out.shape == z.shape and np.isfinite(out).all()


def test_random_trees_route_rows_to_leaves_and_fit_targets():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 4))
    leaf = _leaves(rng, z, n_trees=3, depth=3)
    assert leaf.shape == (300, 3) and leaf.min() >= 0 and leaf.max() < 8
    target = rng.normal(size=(300, 3))
    fitted = _leaf_means(leaf, target, 8)
    for t in range(3):  # every row gets the mean of its leaf's targets
        for lf in np.unique(leaf[:, t]):
            rows = leaf[:, t] == lf
            np.testing.assert_allclose(fitted[rows, t], target[rows, t].mean())


def test_rng_streams_are_independent_per_task():
    a = task_rng(1, 0).random(4)
    b = task_rng(1, 1).random(4)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, task_rng(1, 0).random(4))
