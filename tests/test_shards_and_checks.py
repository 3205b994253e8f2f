import numpy as np
import pyarrow as pa
import pytest

from mllm.data import generate as gen
from mllm.data.checks import DataCheckError, check_shard, task_summary
from mllm.data.prior import Task, generate_task
from mllm.data.shards import iter_tasks, read_shard, shard_name, tasks_to_table, write_shard
from tests.conftest import section

P = section("generate", num_tasks=24, shard_size=10, shots={"min": 8, "max": 64}, features={"min": 5, "max": 12})


def _tasks(n=6, seed=0):
    return [generate_task(seed, i, P) for i in range(n)]


def test_round_trip_and_same_bytes(tmp_path):
    tasks = _tasks()
    write_shard(tasks_to_table(tasks), tmp_path / "a.parquet")
    write_shard(tasks_to_table(_tasks()), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    back = list(iter_tasks(read_shard(tmp_path / "a.parquet")))
    assert len(back) == len(tasks)
    for a, b in zip(tasks, back):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.categorical, b.categorical)
        assert (a.task_id, a.prior, a.n_shots, a.n_classes, a.hyperparams) == (
            b.task_id, b.prior, b.n_shots, b.n_classes, b.hyperparams)
    assert not list(tmp_path.glob(".*tmp")), "no temp files left behind"


def test_read_shard_rejects_other_parquet(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not a task shard"):
        read_shard(tmp_path / "x.parquet")


def test_checks_pass_on_generated_tasks():
    res = check_shard(tasks_to_table(_tasks()), P, "ok")
    assert res.success and res.failed == 0 and res.evaluated >= 10


def _corrupt(task: Task, **changes) -> Task:
    for k, v in changes.items():
        setattr(task, k, v)
    return task


@pytest.mark.parametrize(
    "mutate, expectation",
    [
        (lambda t: _corrupt(t, X=np.where(np.arange(t.X.size).reshape(t.X.shape) == 3, np.nan, t.X).astype(np.float32)),
         "n_nonfinite"),
        (lambda t: _corrupt(t, y=np.where(np.arange(t.y.size) == 0, t.n_classes, t.y).astype(np.int8)), "label_max"),
        (lambda t: _corrupt(t, y=np.zeros_like(t.y)), "shot_classes"),
        (lambda t: _corrupt(t, n_shots=t.n_shots + 1), "declared_rows"),
        (lambda t: _corrupt(t, X=np.concatenate([t.X] * 9, axis=1)), "n_features"),
    ],
)
def test_checks_fail_with_a_readable_report(mutate, expectation):
    tasks = _tasks()
    tasks[2] = mutate(tasks[2])
    with pytest.raises(DataCheckError) as err:
        check_shard(tasks_to_table(tasks), P, "bad-shard")
    msg = str(err.value)
    assert "bad-shard" in msg and "FAILED" in msg and expectation in msg


def test_summary_counts():
    s = task_summary(tasks_to_table(_tasks(3)))
    assert list(s.declared_rows) == list(s.label_rows) == list(s.feature_rows)
    assert (s.n_nonfinite == 0).all()
    assert check_shard(tasks_to_table(_tasks(3)), P, "three").success


def test_failing_shard_is_never_written(tmp_path, monkeypatch):
    good = gen.generate_task

    def bad_task(seed, i, p):
        t = good(seed, i, p)
        if i == 3:
            t.y = np.full_like(t.y, 9)  # labels outside 0..K-1
        return t

    monkeypatch.setattr(gen, "generate_task", bad_task)
    with pytest.raises(DataCheckError, match="label_max"):
        gen.generate_shard(0, 0, P, tmp_path)
    assert not list(tmp_path.iterdir())
    gen.generate_shard(0, 1, P, tmp_path)  # tasks 10..19 are fine
    assert [f.name for f in tmp_path.iterdir()] == [shard_name(1)]


def test_shard_ranges_cover_every_task_once():
    p = section("generate", num_tasks=23, shard_size=5)
    ranges = gen.shard_ranges(p)
    ids = [i for a, b in ranges for i in range(a, b)]
    assert ids == list(range(23)) and len(ranges) == 5
