"""XID errors (the driver's reports of GPU faults) from NVML's events, counted per GPU.

NVML delivers an XID as an event to an event set the GPU is registered with, not as a
reading, so a thread of its own waits on one set for the service's life (NVML counts
initialisations: the collector's own sessions do not end this one). A GPU that cannot
report XIDs (MIG-only handles, some boards), or no NVML at all, is simply not counted.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("aidc.monitor")


class XidWatcher:
    """``counts[uuid]`` = ``{"count": n, "last": xid}`` since the watcher started."""

    def __init__(self, wait_ms: int = 1000):
        self.counts: dict[str, dict] = {}
        self.wait_ms = wait_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aidc-xid", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.wait_ms / 1000 + 5)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no driver: there are no XIDs to watch
            return
        events = None
        try:
            events = pynvml.nvmlEventSetCreate()
            for i in range(pynvml.nvmlDeviceGetCount()):
                try:
                    pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(i),
                                                    pynvml.nvmlEventTypeXidCriticalError, events)
                except pynvml.NVMLError as e:
                    log.info("aidc monitor: GPU %d does not report XID errors (%s)", i, e)
            while not self._stop.is_set():
                try:
                    data = pynvml.nvmlEventSetWait_v2(events, self.wait_ms)
                except pynvml.NVMLError_Timeout:
                    continue
                uuid = pynvml.nvmlDeviceGetUUID(data.device)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                seen = self.counts.setdefault(uuid, {"count": 0, "last": None})
                seen["count"] += 1
                seen["last"] = int(data.eventData)
                log.warning("aidc monitor: XID %d on GPU %s", data.eventData, uuid)
        except Exception as e:
            log.error("aidc monitor: stopped watching XID errors: %s", e)
        finally:
            if events is not None:
                try:
                    pynvml.nvmlEventSetFree(events)
                except Exception:
                    pass
            pynvml.nvmlShutdown()
