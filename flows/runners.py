"""Task runners for fan-out stages: threads for one worker, processes for several on one machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner


def make_task_runner(n_workers: int, kind: str = "process", dask_address: str | None = None) -> TaskRunner:
    """``process``: local processes (threads for one worker); ``dask``: Prefect's Dask task runner on the
    cluster at ``dask_address``, or on a local cluster of ``n_workers`` single-threaded processes."""
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    # The stages are CPU-bound numpy/sklearn code holding the GIL between small ops: threads do not scale.
    if n_workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    return ProcessPoolTaskRunner(max_workers=n_workers)


def runner_for(params, stage: str) -> TaskRunner:
    """The task runner of a fan-out stage: ``<stage>.n_workers`` workers of the kind ``runner`` says."""
    return make_task_runner(getattr(params, stage).n_workers, params.runner.kind, params.runner.dask_address)


@contextlib.contextmanager
def api_shared_with_subprocesses() -> Iterator[None]:
    """Point process-pool workers at this flow's Prefect API.

    Without a configured PREFECT_API_URL every worker process would start its own temporary server
    (seconds each, and task runs split over several databases). Call inside a running flow, around the
    submissions; the variable is restored afterwards.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def gather(futures: list, desc: str, unit: str = "shard") -> list:
    """Results of ``futures`` in their order (whichever worker finishes first, a float summed over them comes
    out the same), awaited as they complete, with a progress bar.

    On the first failure the not-yet-started futures are cancelled and the running ones awaited before
    the error propagates, so no worker writes into an output directory that is being discarded.
    """
    from prefect.futures import as_completed, wait
    from tqdm import tqdm

    index = {id(fut): i for i, fut in enumerate(futures)}
    results = [None] * len(futures)
    try:
        for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit=unit, disable=None):
            results[index[id(fut)]] = fut.result()
    except BaseException:
        for fut in futures:
            wrapped = getattr(fut, "wrapped_future", None)
            if wrapped is not None:
                wrapped.cancel()
        wait([f for f in futures if not getattr(getattr(f, "wrapped_future", None), "cancelled", lambda: False)()])
        raise
    return results
