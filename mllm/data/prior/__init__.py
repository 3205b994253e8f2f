"""Synthetic classification tasks from structural causal model (SCM) priors.

``generate_task(seed, index, params)`` is the entry point: task ``index`` depends only on ``(seed, index)``,
so any shard can be regenerated alone and the bytes never depend on the worker count.
"""

from mllm.data.prior.sampler import Task, generate_task, task_rng

__all__ = ["Task", "generate_task", "task_rng"]
