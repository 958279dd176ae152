"""The JupyterHub application as ``aidc up`` runs it.

Two changes to JupyterHub's own start and stop, both about what a person at the
terminal sees:

- **Services start side by side, after the hub answers.** JupyterHub starts managed
  services one after another and waits for each to answer before it routes anything,
  so the login page stayed a 404 for the sum of every service's start-up (about 5 s
  of imports here). :class:`PlatformHub` starts them all at once in the background,
  routes the hub at once, prints ``aidc is ready: URL`` when the login page answers and
  ``aidc: all N services are up`` when the last service does. A service that fails to
  start still stops the platform, as in JupyterHub.
- **Services stop side by side** (JupyterHub stops them one after another), and
  ``aidc up`` says which ones it is still waiting for after a second.
- **Under internal TLS each managed service gets a key of its own**
  (:func:`aidc.security.internal_tls.service_files`): JupyterHub would give all of them,
  started side by side, the same file names, each start rewriting the last one's key.
  JupyterHub also checks a new service with its *server* TLS context, which cannot make
  a client connection; aidc drops it, so JupyterHub makes the client context. A service
  that forwards requests to other services as the proxy does (``ManagedService.proxy_paths``:
  the inference router) also gets a client key signed by the proxy's client authority
  (:func:`aidc.security.internal_tls.proxy_client_files`).
- **A second Ctrl-C does not start a second shutdown.** It says that the shutdown is
  in progress; a third one stops at once, without waiting for the clean-up.
"""

from __future__ import annotations

import asyncio
import os
import time

from jupyterhub.app import JupyterHub


class PlatformHub(JupyterHub):
    """JupyterHub with concurrent service start-up and a patient Ctrl-C."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._service_starts: dict[str, asyncio.Task] = {}
        self._signals = 0
        self._shutting_down = False
        self._started_at = time.monotonic()
        #: set when a service failed to start (``aidc up`` then exits with 1)
        self.failed = False

    async def start_service(self, service_name, service, ssl_context=None) -> bool:
        if self.internal_ssl and service.managed:
            from ..security import internal_tls

            files = internal_tls.service_files(
                self.internal_certs_location, service_name,
                self.internal_trust_bundles[internal_tls.NOTEBOOKS_CA])
            # Spawner.environment comes last in the service's environment: these win
            service.environment = {**service.environment, **files.as_env()}
            if service.environment.get(internal_tls.ENV_WANTS_PROXY_CLIENT):
                service.environment.update(internal_tls.proxy_client_files(
                    self.internal_certs_location, service_name,
                    self.internal_trust_bundles[internal_tls.PROXY_CLIENT_CA]))
            # JupyterHub.start() hands its own *server* context (Purpose.CLIENT_AUTH) to the
            # service check, whose client socket then fails ("Cannot create a client socket
            # with a PROTOCOL_TLS_SERVER context") until the service counts as not started;
            # with None, start_service makes the client context it should have had
            ssl_context = None
        if not (service.managed and service.url) or self._start_future.done():
            return await super().start_service(service_name, service, ssl_context)
        # while the hub starts: in the background, all at once
        task = asyncio.ensure_future(super().start_service(service_name, service, ssl_context))
        self._service_starts[service_name] = task
        task.add_done_callback(lambda t, name=service_name: self._service_started(name, t))
        return True

    def _service_started(self, name: str, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        if task.exception() is not None or not task.result():
            if not self._shutting_down:
                self.failed = True
                self.log.critical("Service %s did not start; stopping the platform", name)
                asyncio.ensure_future(self.shutdown_cancel_tasks())
            return
        if all(t.done() and not t.cancelled() and not t.exception() and t.result()
               for t in self._service_starts.values()):
            took = time.monotonic() - self._started_at
            print(f"aidc: all {len(self._service_starts)} services are up ({took:.1f} s)", flush=True)

    async def start(self):
        await super().start()
        waiting = sorted(n for n, t in self._service_starts.items() if not t.done())
        print(f"aidc is ready: {getattr(self.proxy, 'edge_url', self.proxy.public_url)}", flush=True)
        if waiting:
            print(f"aidc: still starting: {', '.join(waiting)}", flush=True)

    async def cleanup(self):
        """Stop the managed services all at once, then JupyterHub's own clean-up."""
        services = {name: s for name, s in self._service_map.items() if s.managed}
        if services:
            self.log.info("Stopping %d services...", len(services))
            stops = {asyncio.ensure_future(s.stop()): name for name, s in services.items()}
            done, pending = await asyncio.wait(stops, timeout=1)
            if pending:
                self.log.info("Waiting for %s to stop",
                              ", ".join(sorted(stops[t] for t in pending)))
                await asyncio.wait(pending)
            for task in stops:
                if not task.cancelled() and task.exception() is not None:
                    self.log.error("Service %s did not stop cleanly: %s", stops[task],
                                   task.exception())
        # JupyterHub's own stops them again, which finds each already stopped
        await super().cleanup()

    async def shutdown_cancel_tasks(self, sig=None):
        self._signals += sig is not None
        if self._shutting_down:
            if self._signals >= 3:
                self.log.critical("Stopping at once, without waiting for the clean-up")
                os._exit(128 + int(sig or 0))
            self.log.warning(
                "Shutdown is in progress (servers and services are stopping); "
                "press Ctrl-C once more to stop at once, without clean-up"
            )
            return
        self._shutting_down = True
        for task in self._service_starts.values():
            task.cancel()
        await super().shutdown_cancel_tasks(sig)
