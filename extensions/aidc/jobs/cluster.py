"""The Dask cluster the jobs service runs notebooks on.

One :class:`JobCluster` per jobs service, configured with traitlets like JupyterHub
(``c.JobCluster.scheduler_address = "tcp://10.0.0.5:8786"`` in a drop-in file of
``<data-dir>/config.d/``). It picks one of five kinds of cluster, in this order:

``external``
    ``scheduler_address`` (default: the ``AIDC_DASK_SCHEDULER`` environment variable)
    or ``scheduler_file``: a scheduler someone else runs (``dask scheduler`` plus
    ``dask worker --nthreads 1`` / ``dask cuda worker`` on GPU hosts, a dask-jobqueue
    or Kubernetes deployment). :meth:`JobCluster.close` only disconnects from it.
``gateway``
    ``gateway_address``: a cluster asked of a dask-gateway server
    (:class:`dask_gateway.Gateway`); a new one (shut down by :meth:`close`), or the
    existing ``gateway_cluster_name`` (only disconnected from).
``managed``
    ``cluster_class``: any Dask cluster manager (``dask_jobqueue.SLURMCluster``,
    ``dask_kubernetes.operator.KubeCluster``) created with ``cluster_kwargs``, owned by
    the service and closed by :meth:`close`.
``local-cuda`` / ``local`` (the default: nothing above configured)
    An embedded cluster of worker processes on this host, scheduler on 127.0.0.1 at a
    random port, no dashboard unless ``dashboard_address`` asks for one.

Who may talk to the cluster. Its scheduler and workers run as root (a worker switches
to a job's owner only for the job's kernel), and any local account can list the ports
they listen on. Whoever connects to a Dask scheduler may run code in it and on every
worker (``Client.run``), so the embedded cluster speaks only mutual TLS with a
certificate made for it at start and kept in the service's memory
(:meth:`distributed.security.Security.temporary`): a connection without that
certificate fails its handshake. The scheduler's and workers' HTTP servers (which
distributed always starts) serve no routes at all unless a dashboard is asked for:
``/info``, ``/metrics`` and the ``/proxy`` route are gone. An external or managed
scheduler must be reached over TLS too (``tls_*`` settings or the Dask config);
a plain ``tcp://`` one is refused unless ``allow_insecure_tcp`` says otherwise.
    :class:`dask_cuda.LocalCUDACluster` (one worker per GPU) when ``use_cuda`` says so
    ("auto": the GPU inventory is real NVML), else :class:`distributed.LocalCluster`
    with ``n_workers`` single-threaded worker processes.

Each worker thread runs one notebook: papermill changes the process's working
directory, which is not thread-safe, so embedded workers have one thread each and a
warning is logged for external workers with more.

Embedded workers die with the service, even when it is killed outright: distributed's
worker processes already exit when a pipe held by their parent closes, and every
embedded worker also loads :data:`GUARD_PRELOAD`, a Dask preload that asks Linux for
SIGKILL when the service dies (:func:`aidc.process.die_with_parent`) and removes the service's
hub credentials (``scrub_env``) from the worker's environment, so that notebook kernels
started by the worker never see them.

Example::

    cluster = JobCluster(config=config, log=log)
    client = await cluster.start()           # distributed.Client(asynchronous=True)
    future = client.submit(run_notebook, job, pure=False)
    ...
    cluster.describe()   # {"kind": "local", "address": "tcp://127.0.0.1:40123", ...}
    await cluster.close()
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import shutil
import stat
import tempfile
from typing import Any

from traitlets import (
    Any as AnyTrait,
    Bool,
    Dict,
    Enum,
    Float,
    Integer,
    List,
    Unicode,
    Union,
    default,
)
from traitlets.config import LoggingConfigurable

from .. import process
from ..errors import PlatformError
from ..process import parent_death_signal as pdeathsig  # noqa: F401 - for checks and tests
from ..security.folders import others_can_change

#: the kinds :meth:`JobCluster.describe` reports
LOCAL, LOCAL_CUDA = "local", "local-cuda"
EXTERNAL, GATEWAY, MANAGED = "external", "gateway", "managed"

#: address schemes whose connections are encrypted and authenticated (dask-gateway's
#: ``gateway://`` is TLS to the gateway's proxy with a per-cluster certificate)
SECURE_SCHEMES = ("tls", "wss", "gateway", "ucx+tls")

#: loggers quieted to ``JobCluster.log_level`` in the service process (and workers)
DASK_LOGGERS = ("distributed", "dask", "dask_cuda", "dask_jobqueue", "dask_gateway", "bokeh")

class _CancelledIsNotAnError(logging.Filter):
    """Drops the tracebacks of cancelled tasks that distributed logs as errors.

    When an embedded scheduler closes before a worker has hung up (usual on a loaded
    machine), distributed cancels that worker's stream handler and logs the
    ``CancelledError`` with its traceback at ERROR: an orderly stop that would read as a
    crash in the service's log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


#: Source of the Dask preload every embedded worker process loads (``{parent}`` and
#: ``{scrub}`` are filled in). It runs when the worker is created, before it connects.
#: It loads :mod:`aidc.process` by path: importing ``aidc`` would load the jobs service.
GUARD_PRELOAD = """\
# aidc jobs: this embedded worker dies with the jobs service and drops its credentials
import importlib.util, logging, os, signal
spec = importlib.util.spec_from_file_location("_aidc_process", {process_path!r})
process = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process)
if not process.die_with_parent(signal.SIGKILL, parent={parent}):
    os._exit(1)  # the service died before that took effect
for name in {scrub!r}:
    os.environ.pop(name, None)
for name in {loggers!r}:
    logging.getLogger(name).setLevel({level!r})
"""


def guard_preload(parent_pid: int, scrub: list[str], log_level: str = "WARNING") -> str:
    """The preload (module source) for workers whose parent process is ``parent_pid``."""
    return GUARD_PRELOAD.format(
        parent=int(parent_pid), scrub=list(scrub), process_path=process.PATH,
        loggers=list(DASK_LOGGERS), level=log_level,
    )


def real_gpu_count(inventory=None) -> int:
    """How many GPUs real NVML reports (0 for a simulated inventory or no driver).

    ``inventory``: an :class:`aidc.gpu.inventory.Inventory` the caller already has;
    otherwise NVML is asked directly (``aidc.gpu.inventory.read_nvml``). Nothing from
    CUDA is imported here.
    """
    if inventory is None:
        try:
            from ..gpu.inventory import read_nvml

            inventory = read_nvml()
        except Exception:  # no pynvml, no driver (NVMLError_LibraryNotFound), NVML failure
            return 0
    return 0 if inventory.simulated else len(inventory.devices)


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


def import_object(path: str) -> Any:
    """``"package.module.Name"`` or ``"package.module:Name"`` → the object."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise PlatformError(f"{path!r} is not an import path like 'package.module.Name'")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise PlatformError(f"cannot import {path!r}: {e}") from None
    return obj


def _scratch_problem(dask_worker) -> str | None:
    """(Run on each worker.) Why its scratch folder is not root's alone, or None."""
    return others_can_change(dask_worker.local_directory)


def _checked_scratch(path: str, setting: str, link: bool = True) -> str:
    """``path`` made (0700) if missing, and checked: a folder of this account that no other
    account can change, nor any folder above it (:mod:`aidc.security.folders`). The workers
    run as root: a scratch folder another account can change would let that account steer
    their writes. ``link``: ``path`` may be a link (to such a folder)."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):  # check where the folder would be made first
        existing = os.path.dirname(existing)
    reason = others_can_change(existing) if existing != os.path.abspath(path) else None
    if reason is None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path) if link else os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            reason = f"it is not a folder of this account (uid {os.getuid()})"
        else:
            reason = others_can_change(path)
    if reason is not None:
        raise PlatformError(
            f"the jobs' scratch folder {path} (from {setting}) is not safe for the Dask "
            f"workers, which run as root: {reason}. Use a folder that only root can change "
            "(remove or fix it and start again)")
    return path


class JobCluster(LoggingConfigurable):
    """Which Dask cluster the jobs service runs notebooks on, and the client to it."""

    # --- external scheduler -------------------------------------------------------------
    scheduler_address = Unicode(
        config=True,
        help="""Address of an external Dask scheduler to run jobs on, e.g.
        "tcp://10.0.0.5:8786" (or "tls://..." with distributed's TLS settings in the Dask
        config). Empty: no external scheduler (gateway, managed or embedded cluster).
        Default: the AIDC_DASK_SCHEDULER environment variable.""",
    )

    @default("scheduler_address")
    def _default_scheduler_address(self):
        return os.environ.get("AIDC_DASK_SCHEDULER", "").strip()

    scheduler_file = Unicode(
        "",
        config=True,
        help="""A scheduler file written by `dask scheduler --scheduler-file PATH` (the
        address is read from it at start), instead of scheduler_address.""",
    )

    connect_timeout = Float(
        30.0,
        config=True,
        help="Seconds to wait for an external scheduler or gateway cluster to answer at start.",
    )

    tls_ca_file = Unicode(
        "",
        config=True,
        help="""External or managed scheduler over TLS: the CA certificate (PEM file) that
        signed the scheduler's and workers' certificates. Empty: distributed's own TLS
        settings of the Dask config (distributed.comm.tls.ca-file).""",
    )
    tls_client_cert = Unicode(
        "",
        config=True,
        help="""External or managed scheduler over TLS: the certificate (PEM file) the
        jobs service presents to the scheduler. Empty: the Dask config's
        distributed.comm.tls.client.cert.""",
    )
    tls_client_key = Unicode(
        "",
        config=True,
        help="""External or managed scheduler over TLS: the private key (PEM file) of
        tls_client_cert, if it is not in the same file. Keep it readable by the
        platform's account only.""",
    )
    allow_insecure_tcp = Bool(
        False,
        config=True,
        help="""Allow an external or managed scheduler reached over plain tcp://. Anyone
        who can reach a Dask scheduler can run any code on it and on its workers, which
        run jobs as root: only for a scheduler on a network no user can reach (e.g. a
        Kubernetes namespace closed by a NetworkPolicy). Default False: such a
        scheduler is refused at start, with the reason.""",
    )

    # --- dask-gateway -------------------------------------------------------------------
    gateway_address = Unicode(
        "",
        config=True,
        help="""Address of a dask-gateway server, e.g. "https://gateway.example.org"
        (used when no scheduler_address is set). Empty: no gateway.""",
    )
    gateway_proxy_address = Unicode(
        "",
        config=True,
        help="""The gateway's scheduler proxy ("gateway://host:port" or "host:port");
        empty: the gateway's own default (derived from gateway_address).""",
    )
    gateway_auth = Unicode(
        "jupyterhub",
        config=True,
        help="""How to authenticate to the gateway: "jupyterhub" (the service's own hub
        token, JUPYTERHUB_API_TOKEN), "kerberos", "basic", or an import path of a
        dask_gateway.auth.GatewayAuth class. Keyword arguments come from the Dask config
        (gateway.auth.kwargs).""",
    )
    gateway_cluster_name = Unicode(
        "",
        config=True,
        help="""Connect to this existing gateway cluster instead of asking for a new one;
        close() then only disconnects from it.""",
    )
    gateway_cluster_options = Dict(
        config=True,
        help="""Options for a new gateway cluster (gateway.new_cluster(**options)); which
        exist is up to the gateway server, e.g. {"worker_cores": 2, "worker_memory": 16}.
        Default options of the Dask config (gateway.cluster.options) apply when empty.""",
    )
    gateway_workers = Integer(
        1,
        min=0,
        config=True,
        help="""Workers to scale a new gateway cluster to (with gateway_adaptive: the
        maximum of adaptive scaling).""",
    )
    gateway_adaptive = Bool(
        False,
        config=True,
        help="Scale a new gateway cluster adaptively between 0 and gateway_workers workers.",
    )

    # --- managed cluster (dask-jobqueue, dask-kubernetes, ...) -----------------------------
    cluster_class = Unicode(
        "",
        config=True,
        help="""Import path of a Dask cluster manager the service creates and owns, e.g.
        "dask_jobqueue.SLURMCluster" (used when neither scheduler_address nor
        gateway_address is set). It is created as cluster_class(asynchronous=True,
        **cluster_kwargs), scaled by n_workers or cluster_adapt, and closed by close().""",
    )
    cluster_kwargs = Dict(
        config=True,
        help="""Keyword arguments for cluster_class, e.g. {"scheduler_options": {"host":
        "0.0.0.0"}} so that batch nodes can reach the scheduler in the service process.
        Options not given here come from the Dask config (e.g. jobqueue.slurm.*).""",
    )
    cluster_adapt = Dict(
        config=True,
        help="""Adaptive scaling for cluster_class: cluster.adapt(**cluster_adapt), e.g.
        {"minimum": 0, "maximum": 8}. Empty: cluster.scale(n_workers) when n_workers > 0.""",
    )

    # --- embedded cluster ---------------------------------------------------------------
    n_workers = Integer(
        0,
        min=0,
        config=True,
        help="""Embedded cluster: number of worker processes, each running one notebook at a
        time (one thread each: papermill's working-directory handling is not
        thread-safe). 0 (default): one per CPU core available to the service (at least
        1); for LocalCUDACluster one per GPU (never more than the GPUs). With
        cluster_class: the workers to scale to (0: leave scaling to cluster_adapt).""",
    )
    worker_memory_limit = Union(
        [Integer(min=0), Unicode()],
        default_value="auto",
        config=True,
        help="""Embedded cluster: memory limit of each worker process, "auto" (the
        machine's memory divided among the workers), bytes, or a string like "8GiB"; 0:
        no limit. The worker's nanny restarts a worker above it (notebook kernels are
        separate processes and not counted).""",
    )
    use_cuda = Enum(
        ["auto", True, False],
        default_value="auto",
        config=True,
        help="""Embedded cluster: use dask_cuda.LocalCUDACluster (one worker per GPU,
        CUDA_VISIBLE_DEVICES set per worker). "auto": when the GPU inventory is real NVML
        and LocalCUDACluster can start (else LocalCluster, with a warning); True: always
        (an error without real GPUs); False: never.""",
    )
    dashboard_address = Unicode(
        "",
        config=True,
        help="""Embedded cluster: where the scheduler serves its dashboard; empty (default):
        no dashboard, and the scheduler's and workers' HTTP servers serve nothing.
        "127.0.0.1:0" gives a random free port (see describe()). The dashboard has no
        authentication: every account on this host can read it (task names, workers,
        memory), though not run anything through it.""",
    )
    start_with = Enum(
        ["service", "first-job"],
        default_value="service",
        config=True,
        help="""Embedded cluster: when to start it. "service" (default): in the background as
        the jobs service starts, so the first job does not wait for Dask (an idle cluster
        costs about 0.04 of a core here). "first-job": only when the first job arrives
        (or at once when jobs or schedules wait from before), so an idle platform runs no
        Dask at all, and the first job waits a few seconds for it.""",
    )
    local_directory = Unicode(
        "",
        config=True,
        help="""Embedded cluster: scratch directory of the workers (spilled data, the
        output of a job being run). Empty: the platform's private
        `<data dir>/jobs/scratch`, or, without a data directory, a private temporary
        folder removed at close. Never Dask's own default, `/tmp/dask-scratch-space`:
        any account on the machine can create that folder first, and the workers, which
        run as root, would then write into a folder that account controls. A folder that
        other accounts can change (it, or a folder above it) is refused at start.""",
    )
    scratch_root = Unicode(
        "",
        help="""The platform's default for local_directory (the jobs service sets
        DataDir.jobs_scratch); not configuration.""",
    )
    scrub_env = List(
        Unicode(),
        default_value=["JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "AIDC_DB_URL",
                       "JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA"],
        config=True,
        help="""Embedded cluster: environment variables removed from every worker process
        (and so from the notebook kernels it starts): the service's hub token must not
        reach users' notebooks, nor where its internal TLS key lies (``--internal-ssl``).""",
    )

    # --- common -------------------------------------------------------------------------
    worker_plugins = List(
        config=True,
        help="""Worker plugins registered on every worker, present and future
        (client.register_plugin): distributed.WorkerPlugin / NannyPlugin instances,
        classes or factories called without arguments, or import paths of those.""",
    )
    log_level = Enum(
        ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        default_value="WARNING",
        config=True,
        help="""Level of Dask's own loggers (distributed, dask_cuda, ...) in the service and
        its embedded workers.""",
    )
    inventory = AnyTrait(
        None,
        allow_none=True,
        help="""The service's GPU inventory (aidc.gpu.inventory.Inventory), to decide
        use_cuda="auto" without asking NVML again; None: NVML is asked.""",
    )

    # ------------------------------------------------------------------------------------

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.client = None  # distributed.Client once started
        self.cluster = None  # the cluster object we created (local, gateway or managed)
        self._gateway = None
        self._kind: str | None = None
        self._owned = False  # whether close() shuts the cluster down
        self._temporary_scratch: str | None = None  # made by _scratch, removed at close

    # --- which cluster --------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The kind in use once started; before that, the kind the config asks for
        ("local" stands for either embedded kind until start decides)."""
        if self._kind:
            return self._kind
        if self.scheduler_address and self.gateway_address:
            raise PlatformError(
                "JobCluster: set either scheduler_address (or AIDC_DASK_SCHEDULER) or "
                "gateway_address, not both"
            )
        if self.scheduler_address or self.scheduler_file:
            return EXTERNAL
        if self.gateway_address:
            return GATEWAY
        if self.cluster_class:
            return MANAGED
        return LOCAL

    def embedded_workers(self) -> int:
        """The number of worker processes of an embedded LocalCluster."""
        if self.n_workers:
            return self.n_workers
        from dask.system import CPU_COUNT  # honours affinity and cgroup limits

        return max(1, CPU_COUNT or 1)

    # --- start and stop -------------------------------------------------------------------

    async def start(self):
        """Start (or connect to) the cluster; returns an asynchronous distributed.Client."""
        if self.client is not None:
            return self.client
        self.quiet_dask_logs()
        kind = self.kind
        starter = {
            EXTERNAL: self._start_external,
            GATEWAY: self._start_gateway,
            MANAGED: self._start_managed,
        }.get(kind, self._start_local)
        try:
            client = self.client = await starter()
            self._refuse_insecure(client.scheduler.address)
            await self._register_plugins()
            if kind == EXTERNAL:
                await self._warn_threads()
                await self._warn_scratch()
        except BaseException:
            await self.close()  # whatever was started (e.g. a cluster whose client failed)
            raise
        self.log.info("Jobs run on Dask cluster %s", self.describe())
        return client

    async def close(self) -> None:
        """Close the client; shut down the cluster only if this object created it."""
        client, cluster, gateway = self.client, self.cluster, self._gateway
        self.client = self.cluster = self._gateway = None
        if client is not None:
            try:
                await client.close()
            except Exception:  # a scheduler that is already gone
                self.log.debug("closing the Dask client failed", exc_info=True)
        if cluster is not None:
            if self._kind == GATEWAY:
                await _maybe_await(cluster.close(shutdown=self._owned))
            elif self._owned:
                for name in ("distributed.scheduler", "distributed.core"):
                    logging.getLogger(name).addFilter(_CancelledIsNotAnError())
                await _maybe_await(cluster.close())
        if gateway is not None:
            await _maybe_await(gateway.close())
        if self._temporary_scratch is not None:
            shutil.rmtree(self._temporary_scratch, ignore_errors=True)
            self._temporary_scratch = None
        self._kind = None
        self._owned = False

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def quiet_dask_logs(self) -> None:
        import distributed  # noqa: F401  (its import sets its loggers' levels from its config)

        level = getattr(logging, self.log_level)
        for name in DASK_LOGGERS:
            logging.getLogger(name).setLevel(level)

    async def _client(self, address_or_cluster, security=None, **kwargs):
        from distributed import Client

        if security is None:
            security = getattr(address_or_cluster, "security", None) or self.security()
        return await Client(
            address_or_cluster,
            asynchronous=True,
            set_as_default=False,
            timeout=self.connect_timeout,
            security=security,
            **kwargs,
        )

    def security(self):
        """The TLS settings for an external or managed scheduler (a distributed Security).

        The ``tls_*`` settings where given, else distributed's own (the Dask config).
        """
        from distributed.security import Security

        given = {key: value for key, value in (
            ("tls_ca_file", self.tls_ca_file),
            ("tls_client_cert", self.tls_client_cert),
            ("tls_client_key", self.tls_client_key),
        ) if value}
        if given:
            given["require_encryption"] = True
        return Security(**given)

    def _refuse_insecure(self, address: str) -> None:
        """Refuse a scheduler that anyone on its network could connect to and run code on."""
        scheme = address.split("://", 1)[0] if "://" in address else "tcp"
        if scheme in SECURE_SCHEMES or scheme == "inproc" or self.allow_insecure_tcp:
            return
        raise PlatformError(
            f"the Dask scheduler at {address} is reached without TLS: anyone who can "
            "reach it could run code on it and on its workers, which run jobs as root. "
            "Use a tls:// scheduler (c.JobCluster.tls_ca_file, tls_client_cert, "
            "tls_client_key; see hub_config/dask/README.md), or, for a network no user "
            "can reach, set c.JobCluster.allow_insecure_tcp = True"
        )

    def _scheduler_file_address(self) -> str:
        import json

        try:
            with open(self.scheduler_file) as f:
                return str(json.load(f).get("address") or "")
        except (OSError, ValueError):
            return ""  # not there yet: distributed waits for it and reports the failure

    async def _start_external(self):
        self._kind, self._owned = EXTERNAL, False
        address = self.scheduler_address or self._scheduler_file_address()
        if address:  # before connecting: a plain tcp:// scheduler gets nothing, not even a hello
            try:
                self._refuse_insecure(address)
            except PlatformError:
                self._kind = None
                raise
        try:
            if self.scheduler_address:
                return await self._client(self.scheduler_address)
            from distributed import Client

            return await Client(
                scheduler_file=self.scheduler_file,
                asynchronous=True,
                set_as_default=False,
                timeout=self.connect_timeout,
                security=self.security(),
            )
        except (OSError, TimeoutError, ValueError) as e:
            where = self.scheduler_address or f"scheduler file {self.scheduler_file}"
            self._kind = None
            raise PlatformError(f"cannot reach the Dask scheduler at {where}: {e}") from e

    def make_gateway(self):
        """The dask_gateway.Gateway client for the configured server (no network yet)."""
        from dask_gateway import Gateway

        return Gateway(
            address=self.gateway_address,
            proxy_address=self.gateway_proxy_address or None,
            auth=self.gateway_auth or None,
            asynchronous=True,
        )

    async def _start_gateway(self):
        self._kind = GATEWAY
        gateway = self._gateway = self.make_gateway()
        try:
            if self.gateway_cluster_name:
                self._owned = False
                cluster = await asyncio.wait_for(
                    gateway.connect(self.gateway_cluster_name, shutdown_on_close=False),
                    self.connect_timeout,
                )
            else:
                self._owned = True
                cluster = await gateway.new_cluster(
                    shutdown_on_close=True, **self.gateway_cluster_options
                )
            self.cluster = cluster
            if self._owned:
                if self.gateway_adaptive:
                    await _maybe_await(cluster.adapt(minimum=0, maximum=self.gateway_workers))
                else:
                    await _maybe_await(cluster.scale(self.gateway_workers))
            return await cluster.get_client(set_as_default=False)
        except (OSError, TimeoutError) as e:  # aiohttp's connection errors are OSErrors
            await self.close()
            raise PlatformError(
                f"cannot reach the dask-gateway at {self.gateway_address}: {e}"
            ) from e
        except BaseException:
            await self.close()
            raise

    async def _start_managed(self):
        import dask

        cls = import_object(self.cluster_class)
        self._kind, self._owned = MANAGED, True
        try:
            # a cluster manager runs its scheduler in this process (as root), which keeps
            # its scratch in Dask's temporary-directory: by default the shared
            # /tmp/dask-scratch-space, which any account can create first
            configured = dask.config.get("temporary-directory", None)
            scratch = (_checked_scratch(configured, "Dask's temporary-directory setting")
                       if configured else self._scratch())
            with dask.config.set({"temporary-directory": scratch}):
                cluster = self.cluster = await cls(asynchronous=True, **self.cluster_kwargs)
            if self.cluster_adapt:
                await _maybe_await(cluster.adapt(**self.cluster_adapt))
            elif self.n_workers:
                await _maybe_await(cluster.scale(self.n_workers))
            return await self._client(cluster)
        except BaseException:
            await self.close()
            raise

    def _local_kwargs(self) -> dict:
        from distributed.security import Security

        scratch = self._scratch()  # the scheduler's and the workers'
        kwargs = dict(
            host="127.0.0.1",
            scheduler_port=0,
            # mutual TLS with a certificate made now and held only in this process (and
            # handed to the workers through their nanny's pipe, never a file or argv)
            protocol="tls://",
            security=Security.temporary(),
            dashboard_address=self.dashboard_address or None,
            # the scheduler serves HTTP (health, metrics) even without a dashboard: on
            # 127.0.0.1 at a random port, not the usual 8787 that a second service would want
            scheduler_kwargs=dict(
                dashboard=bool(self.dashboard_address),
                dashboard_address=self.dashboard_address or "127.0.0.1:0",
                local_directory=scratch,
            ),
            worker_dashboard_address=None,
            threads_per_worker=1,
            processes=True,
            silence_logs=getattr(logging, self.log_level),
            memory_limit=self.worker_memory_limit,
            preload=[guard_preload(os.getpid(), self.scrub_env, self.log_level)],
            asynchronous=True,
            local_directory=scratch,
        )
        return kwargs

    def _scratch(self) -> str:
        """The scratch folder of the embedded cluster (scheduler and workers) and of a
        managed cluster's scheduler, private to this process's account."""
        if self.local_directory:
            return _checked_scratch(self.local_directory, "c.JobCluster.local_directory")
        if not self.scratch_root:
            if self._temporary_scratch is None:
                self._temporary_scratch = tempfile.mkdtemp(prefix="aidc-dask-")  # 0700, new
            return self._temporary_scratch
        _checked_scratch(self.scratch_root, "the platform's data directory", link=False)
        os.chmod(self.scratch_root, 0o700)
        return self.scratch_root

    async def _start_local(self):
        self._owned = True
        gpus = 0 if self.use_cuda is False else real_gpu_count(self.inventory)
        if self.use_cuda is True and not gpus:
            raise PlatformError(
                "JobCluster.use_cuda is True but NVML reports no real GPUs "
                "(set it to 'auto' or False on machines without NVIDIA GPUs)"
            )
        if gpus:
            try:
                cluster = await self._start_local_cuda(gpus)
            except Exception as e:
                if self.use_cuda is True:
                    raise PlatformError(f"LocalCUDACluster failed to start: {e}") from e
                self.log.warning(
                    "NVML reports %d GPUs but LocalCUDACluster failed to start (%s); "
                    "jobs run on a LocalCluster", gpus, e,
                )
            else:
                self._kind, self.cluster = LOCAL_CUDA, cluster
                return await self._client(cluster)
        from distributed import LocalCluster

        with self._http_routes():
            cluster = LocalCluster(n_workers=self.embedded_workers(), **self._local_kwargs())
            try:
                await cluster
            except BaseException:
                await cluster.close()
                raise
        self._kind, self.cluster = LOCAL, cluster
        return await self._client(cluster)

    def _http_routes(self):
        """Dask config for the embedded cluster while it is created: HTTP routes, idle cost.

        distributed starts an HTTP server in the scheduler and in every worker even
        without a dashboard, serving ``/info``, ``/metrics``, ``/json`` and a ``/proxy``
        to the workers to anyone who connects. The embedded cluster's serve nothing
        unless a dashboard is configured (then the scheduler's dashboard routes only).
        Nannies copy the config when they are created, so restarted workers keep it.
        """
        import dask

        routes = ["distributed.http.statics"] if self.dashboard_address else []
        return dask.config.set({
            "distributed.scheduler.http.routes": routes,
            "distributed.worker.http.routes": [],
            # an idle cluster should cost next to nothing: no statistical profiler
            # sampling every worker's threads every 10 ms (only the dashboard shows it),
            # and resource checks every second or two instead of 10 and 2 times a second
            "distributed.worker.profile.enabled": bool(self.dashboard_address),
            "distributed.worker.memory.monitor-interval": "1s",
            "distributed.admin.system-monitor.interval": "2s",
        })

    async def _start_local_cuda(self, gpus: int):
        from dask_cuda import LocalCUDACluster  # only here: it imports CUDA libraries

        n = min(self.n_workers or gpus, gpus)
        if self.n_workers > gpus:
            self.log.warning(
                "JobCluster.n_workers=%d but LocalCUDACluster has one worker per GPU: %d workers",
                self.n_workers, gpus,
            )
        cluster = None
        try:
            with self._http_routes():
                cluster = LocalCUDACluster(n_workers=n, **self._local_kwargs())
                await cluster
        except BaseException:
            if cluster is not None:
                await cluster.close()
            raise
        return cluster

    # --- workers ---------------------------------------------------------------------------

    def _plugin_instances(self) -> list:
        plugins = []
        for spec in self.worker_plugins:
            obj = import_object(spec) if isinstance(spec, str) else spec
            if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "setup")):
                obj = obj()
            plugins.append(obj)
        return plugins

    async def _register_plugins(self) -> None:
        for plugin in self._plugin_instances():
            await self.client.register_plugin(plugin)

    async def register_plugin(self, plugin, name: str | None = None):
        """Register one more plugin on all workers, present and future (after start)."""
        if self.client is None:
            raise PlatformError("JobCluster is not started")
        return await self.client.register_plugin(plugin, name=name)

    async def workers(self) -> dict[str, dict]:
        """Fresh information on every worker: {address: {"nthreads", "name", ...}}."""
        if self.client is None:
            return {}
        info = await self.client.scheduler.identity(n_workers=-1)
        return dict(info.get("workers", {}))

    async def _warn_threads(self) -> None:
        for address, w in (await self.workers()).items():
            if w.get("nthreads", 1) > 1:
                self.log.warning(
                    "Dask worker %s has %d threads: it may run %d notebooks at once in one "
                    "process, and papermill is not thread-safe; start workers with --nthreads 1",
                    address, w["nthreads"], w["nthreads"],
                )

    async def _warn_scratch(self) -> None:
        """Name the external workers whose scratch folder other accounts can change (started
        without ``--local-directory``: Dask's shared ``/tmp/dask-scratch-space``). Their
        jobs' working output goes to ``/tmp`` instead (:func:`aidc.jobs.execute.job_scratch`),
        but the workers' own files stay where another account can steer them."""
        try:
            problems = await self.client.run(_scratch_problem)
        except Exception:  # a worker that cannot tell is not a reason to refuse the cluster
            self.log.debug("could not ask the Dask workers about their scratch", exc_info=True)
            return
        for address, problem in problems.items():
            if problem:
                self.log.warning(
                    "Dask worker %s, which runs as root, keeps its scratch where other accounts "
                    "can change it (%s); start it with --local-directory on a folder only root "
                    "can change (hub_config/dask/README.md)", address, problem)

    def kernel_threads(self) -> int | None:
        """CPU threads each job's kernel should give its math libraries, or None to leave them be.

        An embedded cluster runs one single-threaded worker per core (or per GPU with
        dask-cuda), each running one kernel; torch, TensorFlow and BLAS would each start a
        thread per core of the machine, so concurrent jobs oversubscribe the CPU (4x slower
        training was seen with two jobs on two cores). The machine's cores divided among the
        embedded workers avoid that. An external cluster's hosts are not known here.
        """
        if self._kind not in (LOCAL, LOCAL_CUDA):
            return None
        from dask.system import CPU_COUNT  # honours affinity and cgroup limits

        workers = self.describe()["workers"] or self.embedded_workers()
        return max(1, (CPU_COUNT or 1) // max(1, workers))

    def describe(self) -> dict:
        """For the status API: {"kind", "address", "workers", "threads", "dashboard", "running"}.

        ``workers``/``threads`` come from the client's copy of the scheduler's state,
        refreshed every 2 seconds (``await workers()`` asks the scheduler now).
        """
        client = self.client
        running = client is not None and client.status == "running"
        info = client.scheduler_info() if running else {}
        try:
            kind = self.kind
        except PlatformError:
            kind = None
        return {
            "kind": kind,
            "address": client.scheduler.address if running else None,
            "workers": int(info.get("n_workers", len(info.get("workers", {})))) if running else 0,
            "threads": int(info.get("total_threads", 0)) if running else 0,
            "dashboard": self._dashboard_link() if running else None,
            "running": running,
        }

    def _dashboard_link(self) -> str | None:
        # the scheduler's HTTP server counts as its "dashboard" service even with the
        # dashboard off, so only a dashboard asked for (embedded) or a gateway's is shown
        if self.cluster is None or self._kind in (EXTERNAL, MANAGED):
            return None
        if self._kind in (LOCAL, LOCAL_CUDA) and not self.dashboard_address:
            return None
        try:
            return self.cluster.dashboard_link or None
        except Exception:
            return None
