"""Jobs on Slurm batch nodes through dask-jobqueue: copy to `<data-dir>/config.d/40-dask.py`.

The jobs service runs the Dask scheduler itself and submits one Slurm job per Dask
worker with `sbatch` (so `sbatch`, `squeue` and `scancel` must work for the account
the platform runs as). The batch script comes from jobqueue.yaml beside this file:
copy it to /etc/dask/jobqueue.yaml (or to a folder named by DASK_CONFIG) on the hub host.
Slurm jobs end when the service stops; if it is killed, each worker exits when it has
lost the scheduler for `death-timeout` seconds.
"""

c = get_config()  # noqa: F821 (defined when traitlets loads this file)

c.JobCluster.cluster_class = "dask_jobqueue.SLURMCluster"
c.JobCluster.cluster_kwargs = {
    # mutual TLS with a certificate made at each start: dask-jobqueue writes the workers'
    # copy into shared_temp_directory (a folder on the shared file system that only the
    # platform's account and the batch jobs' account can read) and names it in the batch
    # script. Without TLS anyone who reaches the scheduler runs code on it (the service
    # refuses a plain tcp:// scheduler unless c.JobCluster.allow_insecure_tcp is set).
    "security": True,
    "shared_temp_directory": "/shared/aidc/dask-tls",
    # batch nodes must reach the scheduler: listen on the hub host's cluster network
    "scheduler_options": {
        "interface": "ib0",
        "dashboard": False,
        "dashboard_address": "127.0.0.1:0",  # its HTTP server: local, any free port
    },
}
# submit Slurm jobs as notebook jobs queue up, give them back when idle
c.JobCluster.cluster_adapt = {"minimum": 0, "maximum": 8}
# or a fixed number of worker jobs:
# c.JobCluster.n_workers = 4
