"""Notebook jobs: run a parameterized notebook as a batch job on the platform's Dask cluster.

From a notebook or script::

    import aidc
    job = aidc.jobs.submit("train.ipynb", parameters={"epochs": 3}, gpus=1)
    job.wait()
    job.metrics            # {"accuracy": 0.97, ...}, recorded with aidc.record(...)

The client side (this package's top level) only speaks HTTP to the jobs service; the
service side is :mod:`aidc.jobs.service` (REST API), :mod:`~aidc.jobs.manager` (queue,
GPUs, retries, schedules), :mod:`~aidc.jobs.execute` (papermill on a Dask worker),
:mod:`~aidc.jobs.kernels` (fresh kernels, fast), :mod:`~aidc.jobs.cluster` (which Dask)
and :mod:`~aidc.jobs.store` (the durable record).
"""

from .client import Job, Schedule, Sweep, get, list_jobs, schedule, submit, sweep

__all__ = ["Job", "Schedule", "Sweep", "get", "list_jobs", "schedule", "submit", "sweep"]
