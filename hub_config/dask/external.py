"""Jobs on an external Dask scheduler: copy to `<data-dir>/config.d/40-dask.py`.

Start the scheduler and the workers yourself (see README.md), then point the jobs
service at the scheduler. The service only connects to it: stopping the platform leaves
the scheduler and its workers running. The same can be said without this file by
setting AIDC_DASK_SCHEDULER=tcp://... in the platform's environment.
"""

c = get_config()  # noqa: F821 (defined when traitlets loads this file)

# the scheduler's address as `dask scheduler` prints it ("Scheduler at: tcp://...")
c.JobCluster.scheduler_address = "tcp://dask-scheduler.example.org:8786"

# or: the file written by `dask scheduler --scheduler-file /shared/dask/scheduler.json`
# c.JobCluster.scheduler_file = "/shared/dask/scheduler.json"

# how long the service waits for the scheduler at start before giving up
c.JobCluster.connect_timeout = 30

# TLS (tls:// addresses): certificates come from the Dask config of the service's
# environment, e.g. /etc/dask/distributed.yaml:
#   distributed: {comm: {tls: {ca-file: ..., client: {cert: ..., key: ...}}}}
