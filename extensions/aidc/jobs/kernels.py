"""Fresh ipykernels for jobs, fast, as the job's owner: the worker side of the kernel fork server.

A stock kernel start costs a new interpreter plus its imports (ipykernel, IPython, zmq,
tornado, debugpy): most of papermill's start-up. Each Dask worker process instead keeps
one fork server (:mod:`aidc.jobs.zygote`) that has imported all of it once and forks a
new kernel per job: a new process every time, never reused, its environment exactly the
job's, its identity the job owner's. ``python -m aidc.jobs.kernels [RUNS]`` prints start
times next to a stock kernel's.

Use::

    launcher = get_launcher()                       # one per worker process, started lazily
    km = launcher.kernel_manager(env={...}, cwd="/home/ann/proj", run_as=RunAs.of("ann"))
    NotebookClient(nb, km=km).execute(cleanup_kc=True)   # or papermill ..., km=km
    kill_kernel(km)                                  # cancel: the kernel and what it started

What the kernel gets:

- environment: exactly ``env`` (nothing of the worker's; it holds service secrets), plus
  what ipykernel and its imports set in any kernel unless ``env`` has them (``TERM``,
  ``PAGER``, ``MPLBACKEND``, ``PYDEVD_USE_FRAME_EVAL``...). The interpreter is already
  running, so nothing in ``env`` is required; pass what user code expects (``PATH`` for
  subprocesses and ``!pip``, ``HOME``, ``USER``, ``LANG``). ``TZ``, the locale and
  ``PYTHONPATH`` (prepended to ``sys.path``) take effect; other settings an interpreter
  reads only when it starts do not (``PYTHONHASHSEED``, ``PYTHONIOENCODING``...: all
  kernels of a worker share one string-hash seed). ``/proc/<pid>/environ`` shows the fork
  server's start-up environment (``PATH``, ``LANG``: no secrets either).
- working directory ``cwd``, entered as the owner.
- identity ``run_as`` (needs a worker running as root): its uid, gid and groups. The
  connection file is written to a new 0700 directory in the worker's temporary directory
  (which the owner must be able to traverse, as ``/tmp``) and handed to the owner.
  That directory, ``aidc-kernel-<pid namespace>.<worker pid>.<its start time>-<random>``,
  goes when its kernel does, however it ends: the zygote removes it when it reaps the
  kernel (also when the worker dies: the zygote then gets SIGTERM and stops its kernels);
  the worker removes it when the kernel failed to start, when it shuts the kernel down, and
  when the zygote is gone (a thread waits on the zygote's pidfd); and if the worker and
  its zygote die at once, the next launcher started on the machine removes the
  directories whose worker is gone (the name says which process made it).
- its own session and process group; it is a child subreaper, and when it exits,
  whatever is left of its group and every process it started that outlived its parent
  are killed (such orphans stay zombies of the kernel until it exits).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import zmq
from distributed import WorkerPlugin
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from aidc.errors import PlatformError, UsageError
from aidc.accounts import RunAs  # noqa: F401 - the identity kernels run as

ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")

#: how long a kernel may take from its fork to listening on its sockets
KERNEL_START_TIMEOUT = 60.0
#: how long the fork server may take to import everything
ZYGOTE_START_TIMEOUT = 120.0


#: the kernel the fork server runs: ipykernel of this interpreter
KERNEL_SPEC = KernelSpec(
    name="python3",
    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    display_name="Python 3 (ipykernel)",
    language="python",
    interrupt_mode="signal",
    metadata={"debugger": True, "supported_encryption": ["curve"]},
)


class _Zygote:
    """The worker's handle on its fork server: the process and the socket to it.

    Requests are strictly one at a time (a lock), so threads of the worker may share it.
    """

    def __init__(self, pool_size: int):
        self.lock = threading.Lock()
        self.timings: dict[str, float] = {}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH")}
        self.ctl_fd = theirs.fileno()  # its number in the zygote too (pass_fds keeps it)
        cmd = [sys.executable, "-s", ZYGOTE, str(self.ctl_fd), str(os.getpid()), str(pool_size)]
        t0 = time.monotonic()
        try:
            self.proc = _in_lasting_thread(lambda: subprocess.Popen(
                cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, cwd="/"))
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(ZYGOTE_START_TIMEOUT)
        try:
            hello = self._recv()
        except PlatformError:
            self.close()
            raise
        if not hello.get("ok"):
            self.close()
            raise PlatformError(f"the kernel fork server did not start: {hello.get('error')}")
        self.sock.settimeout(30)
        self.pid = hello["pid"]
        # the connection directories of this zygote's kernels, from before the spawn request
        # until the kernel is known to be gone; removed here if the zygote goes first (its
        # kernels die with it; it cannot remove them itself when it was killed)
        self._dirs_lock = threading.Lock()
        self._conn_dirs: set[str] = set()
        self._gone = False
        self._pidfd = os.pidfd_open(self.proc.pid)
        threading.Thread(target=self._watch, name="aidc-zygote-watch", daemon=True).start()
        self.timings = {"python_start": hello["t_start"] - t0,
                        "imports": hello["t_imported"] - hello["t_start"],
                        "pool": hello["t_pool"] - hello["t_imported"],
                        "total": time.monotonic() - t0}

    def _recv(self, fds: int = 0) -> dict:
        try:
            if fds:
                data, got, _, _ = socket.recv_fds(self.sock, 65536, fds, socket.MSG_CMSG_CLOEXEC)
            else:
                data, got = self.sock.recv(65536), []
        except (OSError, socket.timeout) as e:
            data, got = b"", []
            why = f" ({e})"
        else:
            why = ""
        if not data:
            for fd in got:
                os.close(fd)
            code = self.proc.poll()
            raise PlatformError(
                "the kernel fork server of this worker "
                + (f"exited with status {code}" if code is not None else "stopped answering")
                + f"{why}; see the worker's log")
        reply = json.loads(data)
        if fds:
            reply["fds"] = got
        return reply

    def request(self, req: dict, fds: int = 0) -> dict:
        with self.lock:
            try:
                self.sock.send(json.dumps(req).encode())
            except OSError as e:
                raise PlatformError(
                    f"the kernel fork server of this worker is gone ({e})") from None
            reply = self._recv(fds)
        if not reply.get("ok"):
            for fd in reply.get("fds", []):
                os.close(fd)
            raise PlatformError(f"the kernel fork server refused {req['op']}: {reply.get('error')}")
        return reply

    def alive(self) -> bool:
        return self.proc.poll() is None and self.sock.fileno() != -1

    def track(self, conn_dir: str) -> None:
        """``conn_dir`` belongs to a kernel of this zygote (call before asking for the kernel)."""
        with self._dirs_lock:
            self._conn_dirs.add(conn_dir)
            gone = self._gone
        if gone:  # too late: nobody else will remove it
            self.untrack(conn_dir, remove=True)

    def untrack(self, conn_dir: str, remove: bool = False) -> None:
        """``conn_dir``'s kernel is gone (and the zygote removed it, unless ``remove``)."""
        with self._dirs_lock:
            self._conn_dirs.discard(conn_dir)
        if remove:
            shutil.rmtree(conn_dir, ignore_errors=True)

    def _watch(self) -> None:
        """Wait until the zygote has exited, then remove what its kernels left."""
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        try:
            while not poller.poll():
                pass
        finally:
            os.close(self._pidfd)
        with self._dirs_lock:
            self._gone = True
            dirs, self._conn_dirs = self._conn_dirs, set()
        for conn_dir in dirs:
            shutil.rmtree(conn_dir, ignore_errors=True)

    def close(self) -> None:
        """Close our end: the zygote kills its kernels and exits (SIGKILL if it takes long)."""
        with self.lock:
            self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_parent_thread: tuple[int, queue.Queue] | None = None
_parent_thread_lock = threading.Lock()


def _in_lasting_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in this process's one thread that never ends; return its result.

    Zygotes are started there: ``PR_SET_PDEATHSIG`` fires when the *thread* that
    forked a process ends, not the process (Dask's task threads may come and go).
    """
    global _parent_thread
    with _parent_thread_lock:
        if _parent_thread is None or _parent_thread[0] != os.getpid():
            jobs: queue.Queue = queue.Queue()

            def serve() -> None:
                while True:
                    fn, future = jobs.get()
                    try:
                        future.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - raised in the caller
                        future.set_exception(e)

            threading.Thread(target=serve, name="aidc-zygote-parent", daemon=True).start()
            _parent_thread = (os.getpid(), jobs)
        jobs = _parent_thread[1]
    future: Future = Future()
    jobs.put((fn, future))
    return future.result()


class _KernelProcess:
    """A ``Popen``-like handle on a kernel, which is the zygote's child, not ours.

    A pidfd tells whether it has exited (race-free: it cannot refer to a later process
    with the same pid); the exit status and all signals go through the zygote, its parent.
    """

    stdin = stdout = stderr = None

    def __init__(self, zygote: _Zygote, pid: int, pidfd: int, conn_dir: str = ""):
        self.zygote, self.pid, self._pidfd, self.conn_dir = zygote, pid, pidfd, conn_dir
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def _exited(self, timeout: float = 0) -> bool:
        with self._lock:
            if self._pidfd < 0:
                return True
            fd = os.dup(self._pidfd)  # ours alone: another thread may close the original
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)

    def poll(self) -> int | None:
        if self.returncode is not None or not self._exited():
            return self.returncode
        with self._lock:  # the zygote tells the status once: ask it from one thread
            if self.returncode is None:
                try:
                    code = self.zygote.request({"op": "status", "pid": self.pid})["returncode"]
                    zygote_gone = False
                except PlatformError:
                    code = -signal.SIGKILL  # the zygote is gone, and its kernels with it
                    zygote_gone = True
                if code is None:  # exited, not yet reaped: next time
                    return None
                self.returncode = code
                # reaped: the zygote has removed its directory; if the zygote is gone, we do
                # (its watcher may not have run yet)
                self.zygote.untrack(self.conn_dir, remove=zygote_gone)
                os.close(self._pidfd)
                self._pidfd = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.1 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("kernel", timeout)
            self._exited(min(left, 0.1))
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        """Signal the kernel's process group (a no-op once it has exited)."""
        if self.returncode is None:
            try:
                self.zygote.request({"op": "signal", "pid": self.pid, "sig": int(sig)})
            except PlatformError:
                pass  # zygote gone: so is the kernel

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        with self._lock:
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1

    __del__ = close


class ZygoteProvisioner(LocalProvisioner):
    """Starts the kernel by asking the worker's zygote for a fork instead of running a command."""

    launcher: KernelLauncher
    env: dict[str, str]
    job_cwd: str
    run_as: RunAs | None
    conn_dir: str = ""
    timings: dict[str, float]

    async def send_signal(self, signum: int) -> None:
        if self.process:
            self.process.send_signal(signum)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> dict:
        try:
            return await self._launch(cmd)
        except BaseException:
            # no kernel (it failed, was killed, or was never asked for): nor its directory
            shutil.rmtree(self.conn_dir, ignore_errors=True)
            raise

    async def _launch(self, cmd: list[str]) -> dict:
        t0 = time.monotonic()
        argv = cmd[cmd.index("ipykernel_launcher") + 1:]  # -f CONNECTION_FILE, extra arguments
        km: ZygoteKernelManager = self.parent
        if self.run_as is not None and os.geteuid() == 0:
            # written by us, 0600: the kernel reads it after dropping privileges
            for path in (km.connection_file, self.conn_dir):
                os.chown(path, self.run_as.uid, self.run_as.gid)
        job = {
            "env": self.env,
            "cwd": self.job_cwd,
            "argv": argv,
            "run_as": None if self.run_as is None else {
                "uid": self.run_as.uid, "gid": self.run_as.gid, "groups": list(self.run_as.groups)},
        }
        zygote = self.launcher._zygote_for_spawn()
        zygote.track(self.conn_dir)
        try:
            reply = zygote.request({"op": "spawn", "conn_dir": self.conn_dir}, fds=2)
        except BaseException:
            zygote.untrack(self.conn_dir, remove=True)  # no kernel: the zygote never had it
            raise
        t_spawned = time.monotonic()
        chan_fd, pidfd = reply["fds"]
        self.process = _KernelProcess(zygote, reply["pid"], pidfd, self.conn_dir)
        self.pid = self.pgid = reply["pid"]
        self.cwd = self.job_cwd
        chan = socket.socket(fileno=chan_fd)
        try:
            chan.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_sendall(chan, json.dumps(job).encode() + b"\n")
            except OSError:  # it died before it read its job (killed): its status says so
                pass
            status = await asyncio.wait_for(_read_line(loop, chan), KERNEL_START_TIMEOUT)
        except BaseException as e:
            self.process.kill()
            self._failed()
            if isinstance(e, asyncio.TimeoutError):
                raise PlatformError(
                    f"the job's kernel did not start within {KERNEL_START_TIMEOUT:g} s") from None
            raise
        finally:
            chan.close()
        if km._killed and status.get("ok"):  # kill_kernel() came while it was starting
            self.process.kill()
            status = {"ok": False, "error": "the kernel was stopped while it started"}
        if not status.get("ok"):
            self._failed()
            raise _start_error(status, self)
        self.timings = {"t0": t0, "spawned": t_spawned, "assigned": status["t_assigned"],
                        "became": status["t_became"], "ready": status["t_ready"],
                        "launched": time.monotonic()}
        return self.connection_info

    def _failed(self) -> None:
        """The kernel did not start (it was killed, or failed): wait a little for it, forget it."""
        process, self.process = self.process, None
        if process is not None:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
            process.close()
            process.zygote.untrack(self.conn_dir, remove=True)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if self.process is not None:
            self.process.close()
        if not restart and self.conn_dir:
            shutil.rmtree(self.conn_dir, ignore_errors=True)



async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = await loop.sock_recv(sock, 65536)
        except ConnectionError:  # it died (killed) with our job line unread
            chunk = b""
        if not chunk:
            return {"ok": False, "error": "the kernel exited while starting (see the worker's log)",
                    "step": "start"}
        buf += chunk
    return json.loads(buf)


def _start_error(status: dict, prov: ZygoteProvisioner) -> Exception:
    """The kernel could not become the job's: say why in the user's terms."""
    who = f" as {prov.run_as.name}" if prov.run_as else ""
    error = status.get("error", "unknown error")
    if status.get("step") == "cwd":
        return UsageError(f"cannot run the job in {prov.job_cwd}{who}: {error}")
    if status.get("step") == "identity":
        return PlatformError(f"cannot start the job's kernel{who}: {error}")
    return PlatformError(f"the job's kernel did not start{who}: {error}")


class ZygoteKernelManager(AsyncKernelManager):
    """An ``AsyncKernelManager`` whose ``start_kernel()`` gets a fresh kernel from the zygote.

    Asynchronous because nbclient and papermill drive their kernel manager from their
    own event loop; every method works as in jupyter_client (``shutdown_kernel``,
    ``interrupt_kernel``, ``restart_kernel``: a new fork), only the launch differs.
    """

    def __init__(self, *, launcher: KernelLauncher, job_env: dict[str, str], job_cwd: str,
                 run_as: RunAs | None, **kwargs: Any):
        if zmq.has("curve"):  # the kernel's ports are open to every local user: encrypt
            kwargs.setdefault("transport_encryption", "auto")
        super().__init__(kernel_name="python3", **kwargs)
        self._launcher = launcher
        self._job_env = dict(job_env)
        self._job_cwd = job_cwd
        self._run_as = run_as
        self._conn_dir = ""
        self._killed = False  # by kill_kernel(): no kernel may start any more

    @property
    def kernel_spec(self) -> KernelSpec:
        return KERNEL_SPEC

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        if self._killed:
            raise PlatformError("the kernel was stopped before it started")
        self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(uuid.uuid4())
        # a private directory for the connection file (the kernel may be another user), new
        # for each start: one directory, one kernel (a restart's old kernel is gone by now)
        if self._conn_dir:
            shutil.rmtree(self._conn_dir, ignore_errors=True)
        self._conn_dir = tempfile.mkdtemp(prefix=_conn_dir_prefix())
        self.connection_file = os.path.join(self._conn_dir, f"kernel-{self.kernel_id}.json")
        self._connection_file_written = False
        if self.provisioner is None:
            prov = ZygoteProvisioner(kernel_id=self.kernel_id, kernel_spec=KERNEL_SPEC, parent=self)
            prov.launcher, prov.env, prov.job_cwd, prov.run_as = (
                self._launcher, self._job_env, self._job_cwd, self._run_as)
            prov.timings = {}
            self.provisioner = prov
        self.provisioner.conn_dir = self._conn_dir  # type: ignore[attr-defined]
        kw.pop("env", None)  # the kernel's environment is the job's, nothing else
        kw.pop("cwd", None)
        try:
            return await super()._async_pre_start_kernel(**kw)
        except BaseException:
            shutil.rmtree(self._conn_dir, ignore_errors=True)
            raise

    pre_start_kernel = _async_pre_start_kernel  # type: ignore[assignment]


class KernelLauncher:
    """Fresh kernels for one worker process, from its own fork server (one per process)."""

    def __init__(self, pool_size: int = 2):
        if pool_size < 0:
            raise UsageError("the kernel pool size cannot be negative")
        self.pool_size = pool_size
        self._zygote: _Zygote | None = None
        self._lock = threading.Lock()

    @property
    def timings(self) -> dict[str, float]:
        """How long the fork server took to start: ``python_start``, ``imports``, ``pool``."""
        return dict(self._zygote.timings) if self._zygote else {}

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote else None

    def start(self) -> None:
        """Start the fork server (once; again if it has died)."""
        with self._lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    self._zygote.close()
                else:
                    sweep_conn_dirs()
                self._zygote = _Zygote(self.pool_size)

    def _zygote_for_spawn(self) -> _Zygote:
        self.start()
        assert self._zygote is not None
        return self._zygote

    def kernel_manager(self, *, env: dict[str, str], cwd: str,
                       run_as: RunAs | None = None) -> ZygoteKernelManager:
        """An unstarted kernel manager; its ``start_kernel()`` forks a fresh kernel for this job.

        Pass it to nbclient's ``NotebookClient(nb, km=km)`` or papermill's
        ``execute_notebook(..., km=km)``; they start it. They do not stop a kernel manager
        they were given unless told to (nbclient: ``execute(cleanup_kc=True)``): stop it
        with ``km.shutdown_kernel()`` or :func:`kill_kernel`.
        """
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and "\0" not in k + v for k, v in env.items()):
            raise UsageError("a kernel's environment must map names (without '=') to strings")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise UsageError(f"a kernel's working directory must be an absolute path, not {cwd!r}")
        if run_as is not None and os.geteuid() != 0 and (
                run_as.uid != os.geteuid() or run_as.gid != os.getegid()):
            raise PlatformError(
                f"cannot run a kernel as {run_as.name}: this worker does not run as root")
        self.start()
        return ZygoteKernelManager(launcher=self, job_env=env, job_cwd=cwd, run_as=run_as)

    def close(self) -> None:
        """Stop the fork server; it kills every kernel it made (and what they started)."""
        with self._lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None


_CONN_DIR_RE = re.compile(r"aidc-kernel-(\d+)\.(\d+)\.(\d+)-")


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _conn_dir_prefix() -> str:
    """``aidc-kernel-<pid namespace>.<pid>.<start time>-``: which process made the directory."""
    return f"aidc-kernel-{_pid_namespace()}.{os.getpid()}.{_start_time(os.getpid()) or 0}-"


def sweep_conn_dirs(tmpdir: str | None = None) -> list[str]:
    """Remove kernels' connection directories whose worker process is gone; return them.

    Only for when a worker and its zygote died at once (a process group killed): otherwise
    one of them outlives the kernel and removes its directory. Directories of processes in
    another pid namespace are left alone (their pids mean nothing here).
    """
    tmpdir = tmpdir or tempfile.gettempdir()
    ns, removed = _pid_namespace(), []
    if not ns:  # no /proc: nothing tells a live process from a gone one
        return removed
    try:
        entries = list(os.scandir(tmpdir))
    except OSError:
        return removed
    for entry in entries:
        m = _CONN_DIR_RE.match(entry.name)
        if not m or int(m[1]) != ns or not entry.is_dir(follow_symlinks=False):
            continue
        if _start_time(int(m[2])) == int(m[3]):
            continue  # its worker is alive
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


_launcher: KernelLauncher | None = None
_launcher_pid: int | None = None
_launcher_lock = threading.Lock()


def get_launcher() -> KernelLauncher:
    """This process's launcher (a forked copy of a process gets its own); started lazily."""
    global _launcher, _launcher_pid
    with _launcher_lock:
        if _launcher is None or _launcher_pid != os.getpid():
            _launcher, _launcher_pid = KernelLauncher(), os.getpid()
        return _launcher


class KernelLauncherPlugin(WorkerPlugin):
    """Starts the worker's fork server with the worker (so no job waits for it); stops it."""

    name = "aidc-kernel-launcher"

    async def setup(self, worker: Any) -> None:
        # the imports take a while: not on the worker's event loop
        await asyncio.get_running_loop().run_in_executor(None, get_launcher().start)

    async def teardown(self, worker: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, get_launcher().close)


def kill_kernel(km: KernelManager) -> None:
    """SIGKILL the kernel's whole process group now, and wait (a few seconds) until it is gone.

    Safe from any thread while another one runs the notebook (nbclient then raises
    ``DeadKernelError``) or is still starting the kernel (the start then fails; a killed
    manager starts no kernel any more). Processes the kernel started in a group of their
    own die too once the kernel is gone. Works on stock kernel managers as well (their
    process group only).
    """
    if isinstance(km, ZygoteKernelManager):
        km._killed = True  # first: a kernel still starting sees it (or is seen below)
    prov = getattr(km, "provisioner", None)
    process = getattr(prov, "process", None)
    if process is None:
        return
    if isinstance(process, _KernelProcess):
        process.kill()
        process._exited(5)
        return
    pgid = getattr(prov, "pgid", None)
    try:
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        else:
            process.kill()
    except OSError:
        pass


def _measure(runs: int = 5) -> None:
    """Print kernel start latencies: stock ``AsyncKernelManager`` vs. the fork server."""

    async def ready(km: KernelManager) -> tuple[float, float]:
        t0 = time.monotonic()
        await km.start_kernel()
        t1 = time.monotonic()
        kc = km.client()
        kc.start_channels()
        await kc.kernel_info(reply=True, timeout=60)
        t2 = time.monotonic()
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        return t1 - t0, t2 - t0

    async def main() -> None:
        launcher = KernelLauncher()
        t = time.monotonic()
        launcher.start()
        z = launcher.timings
        print(f"zygote start {time.monotonic() - t:.3f} s: python start {z['python_start']:.3f}, "
              f"imports {z['imports']:.3f}, pool of {launcher.pool_size} {z['pool']:.3f}")
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.path.expanduser("~")}
        for name in ("stock", "zygote"):
            for i in range(runs):
                if name == "stock":
                    km: KernelManager = AsyncKernelManager(kernel_name="python3")
                else:
                    km = launcher.kernel_manager(env=env, cwd="/tmp")
                started, info = await ready(km)
                line = (f"{name:6} run {i}: start_kernel {started * 1000:6.1f} ms, "
                        f"kernel_info reply {info * 1000:6.1f} ms")
                tm = getattr(km.provisioner, "timings", None)
                if tm:
                    ms = {k: 1000 * (tm[k] - tm[p]) for k, p in (
                        ("spawned", "t0"), ("assigned", "spawned"), ("became", "assigned"),
                        ("ready", "became"))}
                    line += (f"  [zygote {ms['spawned']:.1f}, to child {ms['assigned']:.1f}, "
                             f"identity+env+cwd {ms['became']:.1f}, "
                             f"IPKernelApp.initialize {ms['ready']:.1f} ms]")
                print(line)
                await asyncio.sleep(0.3)  # let the pool refill
        launcher.close()

    asyncio.run(main())


if __name__ == "__main__":
    _measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
