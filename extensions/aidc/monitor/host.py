"""The host's CPU, memory, disk and network, through psutil (imported when first sampled)."""

from __future__ import annotations


def host_sample(disk_path: str) -> dict:
    """Figures named as in :mod:`.catalog` (without the ``host_`` prefix's owner: keys are
    the catalogue's names)."""
    import psutil

    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    net = psutil.net_io_counters()
    return {
        # since the previous call (the collector calls it once per interval)
        "host_cpu_percent": float(psutil.cpu_percent(interval=None)),
        "host_memory_used_bytes": float(mem.total - mem.available),
        "host_memory_total_bytes": float(mem.total),
        "host_disk_used_bytes": float(disk.used),
        "host_disk_total_bytes": float(disk.total),
        "host_network_sent_bytes": float(net.bytes_sent if net else 0),
        "host_network_received_bytes": float(net.bytes_recv if net else 0),
    }
