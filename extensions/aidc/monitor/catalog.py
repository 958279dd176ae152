"""The metrics the monitor records: one declaration each, read by the store's API (which
names exist), the collector (what it writes) and the Prometheus exposition (help text).

A name here is the history API's name; Prometheus sees it as ``aidc_<name>``. Where
NVIDIA's dcgm-exporter has the same figure its name is in the help text, so people who
know one find the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    labels: tuple[str, ...]
    #: "gauge", "counter" (a counter only grows: energy, bytes sent) or "histogram"
    #: (Prometheus text only; its count and sum are kept in history as counters)
    type: str = "gauge"
    #: in the metrics service's Prometheus text; False: history only (another service
    #: exports it: a second copy would be counted twice)
    exported: bool = True


GPU = ("gpu", "uuid")

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("gpu_utilization_percent", "GPU utilization in percent (dcgm-exporter: DCGM_FI_DEV_GPU_UTIL).", GPU),
    Metric("gpu_memory_used_bytes", "GPU memory in use (dcgm-exporter: DCGM_FI_DEV_FB_USED, in MiB there).", GPU),
    Metric("gpu_memory_total_bytes", "GPU memory in all (dcgm-exporter: DCGM_FI_DEV_FB_FREE + DCGM_FI_DEV_FB_USED).", GPU),
    Metric("gpu_temperature_celsius", "GPU temperature (dcgm-exporter: DCGM_FI_DEV_GPU_TEMP).", GPU),
    Metric("gpu_power_watts", "GPU power draw (dcgm-exporter: DCGM_FI_DEV_POWER_USAGE).", GPU),
    Metric("gpu_energy_joules", "GPU energy since the driver loaded (dcgm-exporter: DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, in mJ there).",
           GPU, "counter"),
    Metric("gpu_sm_clock_hertz", "GPU SM clock (dcgm-exporter: DCGM_FI_DEV_SM_CLOCK, in MHz there).", GPU),
    Metric("gpu_memory_clock_hertz", "GPU memory clock (dcgm-exporter: DCGM_FI_DEV_MEM_CLOCK, in MHz there).", GPU),
    Metric("gpu_xid_errors", "XID errors the driver reported for this GPU since the metrics service started "
           "(dcgm-exporter: DCGM_FI_DEV_XID_ERRORS holds the last XID's number; here it is api/current's xid_last).",
           GPU, "counter"),
    Metric("gpu_process_memory_bytes",
           "GPU memory of the processes of one ledger holder (server, job or deployment) on one GPU "
           "(no dcgm-exporter equivalent; its per-pod attribution is the closest).",
           ("gpu", "uuid", "user", "holder")),
    Metric("user_cpu_percent", "CPU use of a platform user's processes (server, kernels, jobs) in percent of one core.",
           ("user",)),
    Metric("user_memory_bytes", "Resident memory of a platform user's processes (server, kernels, jobs).", ("user",)),
    Metric("holder_cpu_percent", "CPU use of one server's, job's or deployment's processes (holder as in the GPU "
           "ledger: server:USER/NAME, job:ID, deployment:MODEL) in percent of one core.", ("user", "holder")),
    Metric("holder_memory_bytes", "Resident memory of one server's, job's or deployment's processes.",
           ("user", "holder")),
    Metric("host_cpu_percent", "Host CPU use in percent of all cores.", ()),
    Metric("host_memory_used_bytes", "Host memory in use (total minus available).", ()),
    Metric("host_memory_total_bytes", "Host memory in all.", ()),
    Metric("host_disk_used_bytes", "Disk space in use on the data directory's file system.", ()),
    Metric("host_disk_total_bytes", "Disk space in all on the data directory's file system.", ()),
    Metric("host_network_sent_bytes", "Bytes sent on every network interface since boot.", (), "counter"),
    Metric("host_network_received_bytes", "Bytes received on every network interface since boot.", (), "counter"),
    Metric("gpu_queue_claims", "Claims waiting in the GPU ledger's queue, by unit kind: whole, mig, share "
           "(no dcgm-exporter equivalent).", ("kind",)),
    Metric("gpu_queue_oldest_wait_seconds", "How long the claim waiting longest in the GPU queue has waited, by "
           "unit kind; 0 when none waits.", ("kind",)),
    Metric("jobs_by_status", "Jobs in the jobs service's store by status: queued, running, completed, failed, "
           "cancelled.", ("status",)),
    Metric("jobs_running_gpus", "GPUs held by running jobs.", ()),
    Metric("jobs_oldest_wait_seconds", "How long the job queued longest has waited for its start; 0 when none "
           "waits.", ()),
    Metric("endpoint_requests", "Inference requests the models service answered per model and version "
           "(its aidc_endpoint_requests_total, summed over codes; kept here as history only).",
           ("model", "version"), "counter", exported=False),
    Metric("endpoint_errors", "Inference requests answered with an error (the models service's "
           "aidc_endpoint_request_errors_total; history only).", ("model", "version"), "counter", exported=False),
    Metric("endpoint_request_seconds", "Seconds the models service took to answer inference requests, in all "
           "(its aidc_endpoint_request_duration_seconds_sum; history only).", ("model", "version"), "counter",
           exported=False),
    Metric("endpoint_latency_p50_seconds", "Median time to answer an inference request, over the requests "
           "since the previous read of the models service (its request-duration histogram; history only).",
           ("model", "version"), exported=False),
    Metric("endpoint_latency_p99_seconds", "99th percentile of the time to answer an inference request, over "
           "the requests since the previous read (history only).", ("model", "version"), exported=False),
    Metric("endpoint_batch_size_p50", "Median rows per model run of the endpoint's replicas since the previous "
           "read (their aidc_model_batch_size histograms; history only).", ("model", "version"), exported=False),
    Metric("hub_users", "Users the hub knows (JupyterHub: jupyterhub_total_users).", ()),
    Metric("hub_active_users", "Users active within the period: 24h, 7d or 30d (JupyterHub: jupyterhub_active_users).",
           ("period",)),
    Metric("hub_running_servers", "User servers running (JupyterHub: jupyterhub_running_servers).", ()),
    Metric("hub_spawns", "User-server spawns that ended since the hub started, by status: success, failure, ... "
           "(JupyterHub: jupyterhub_server_spawn_duration_seconds_count).", ("status",), "counter"),
    Metric("hub_spawn_seconds", "Seconds the ended spawns took in all, by status (JupyterHub: "
           "jupyterhub_server_spawn_duration_seconds_sum); its increase over a range divided by "
           "hub_spawns' is the mean spawn time.", ("status",), "counter"),
    Metric("hub_spawn_duration_seconds", "How long user-server spawns took, by status (JupyterHub: "
           "jupyterhub_server_spawn_duration_seconds, its buckets); history keeps its count and sum as "
           "hub_spawns and hub_spawn_seconds.", ("status",), "histogram"),
)}
