"""Jobs on a dask-gateway cluster: copy to `<data-dir>/config.d/40-dask.py`.

The jobs service asks the gateway for a new cluster when it starts (and shuts it down
when it stops), authenticating with its own JupyterHub token. Which cluster options
exist is decided by the gateway server (see README.md for a matching server config).
"""

c = get_config()  # noqa: F821 (defined when traitlets loads this file)

c.JobCluster.gateway_address = "https://dask-gateway.example.org/services/dask-gateway"
# the scheduler proxy, when it is not at the gateway's own address
c.JobCluster.gateway_proxy_address = "gateway://dask-gateway.example.org:8786"
# "jupyterhub": the service's hub token (JUPYTERHUB_API_TOKEN) goes to the gateway
c.JobCluster.gateway_auth = "jupyterhub"

# options of the new cluster, checked by the gateway server
c.JobCluster.gateway_cluster_options = {
    "worker_cores": 4,  # CPU cores of each worker (the notebook kernel uses them)
    "worker_memory": 16.0,  # GiB
    "image": "registry.example.org/aidc/worker:latest",
}
# workers to ask for; with gateway_adaptive, the most that adaptive scaling may reach
c.JobCluster.gateway_workers = 4
c.JobCluster.gateway_adaptive = True

# or use a cluster someone keeps running on the gateway (only connected to, never stopped)
# c.JobCluster.gateway_cluster_name = "aidc.1f2e3d4c5b6a"
