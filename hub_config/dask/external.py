"""Jobs on an external Dask scheduler: copy to `<data-dir>/config.d/40-dask.py`.

Start the scheduler and the workers yourself (see README.md), then point the jobs
service at the scheduler. The service only connects to it: stopping the platform leaves
the scheduler and its workers running. The same can be said without this file by
setting AIDC_DASK_SCHEDULER=tls://... (with the TLS files below) in the platform's environment.
"""

c = get_config()  # noqa: F821 (defined when traitlets loads this file)

# the scheduler's address as `dask scheduler --protocol tls` prints it ("Scheduler at: tls://...")
c.JobCluster.scheduler_address = "tls://dask-scheduler.example.org:8786"

# or: the file written by `dask scheduler --scheduler-file /shared/dask/scheduler.json`
# c.JobCluster.scheduler_file = "/shared/dask/scheduler.json"

# how long the service waits for the scheduler at start before giving up
c.JobCluster.connect_timeout = 30

# mutual TLS: the CA that signed the cluster's certificates, and the certificate the
# service presents (readable by the platform's account only). Left empty, distributed's
# own settings apply (distributed.comm.tls.* in the Dask config, e.g.
# /etc/dask/distributed.yaml). A plain tcp:// scheduler is refused: anyone who reaches
# it can run code on it and on its workers, which start jobs as root. Only for a network
# no user can reach: c.JobCluster.allow_insecure_tcp = True
c.JobCluster.tls_ca_file = "/etc/aidc/dask-tls/ca.pem"
c.JobCluster.tls_client_cert = "/etc/aidc/dask-tls/cert.pem"
c.JobCluster.tls_client_key = "/etc/aidc/dask-tls/key.pem"
