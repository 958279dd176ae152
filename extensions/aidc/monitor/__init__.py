"""Monitoring: what the GPUs and the host do, kept as history, and who used how much.

- :mod:`.catalog`: every metric's name, unit, help and dcgm-exporter equivalent, once;
- :mod:`.gpus`: GPU samples through :func:`aidc.gpu.inventory.read_nvml`, per-process GPU
  memory attributed to the ledger holder of that GPU (:mod:`.attribution`);
- :mod:`.host`: the host's CPU, memory, disk and network (psutil); :mod:`.accounts`: each
  user's, server's, job's and deployment's CPU and memory;
- :mod:`.hub`: the hub's own figures (JupyterHub's Prometheus text); :mod:`.jobs`: the jobs
  service's; :mod:`.endpoints`: each endpoint's requests and errors (history only);
- :mod:`.store`: a bounded time-series store with downsampling tiers, in the platform database;
- :mod:`.collect`: the collector that samples, records and keeps the latest snapshot;
- :mod:`.accounting`: GPU-hours and job-hours from the ledger's holdings, with costs;
- :mod:`.exposition`: Prometheus text written by ``prometheus_client``;
- :mod:`.service`: the ``metrics`` hub service at ``/services/metrics/``.
"""
