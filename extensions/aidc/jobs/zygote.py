"""The kernel fork server ("zygote") of one Dask worker: fresh ipykernels in milliseconds.

Starting an ipykernel the normal way costs a new interpreter plus importing ipykernel,
IPython, zmq, tornado, jedi and debugpy: most of a kernel's start-up. This process pays
that once: it imports all of it, then forks a copy per kernel. The copies are new
processes (nothing of one job can reach the next), they only share the already
imported, not yet used modules. A small pool of children is forked ahead of time and
waits for its job, so even the fork is off the critical path.

Run by :class:`aidc.jobs.kernels.KernelLauncher` as ``python -s zygote.py CTL_FD
PARENT_PID POOL_SIZE`` by *path*, never as ``aidc.jobs.zygote``: importing the
``aidc.jobs`` package would load the jobs service into every kernel. So this file
imports nothing from ``aidc``; keep it that way.

What must hold before a fork, and why:

- no threads (a fork keeps only the forking thread; a lock held by another one stays
  held forever in the child) and no zmq context (zmq's I/O threads): both are created
  by the kernel after the fork;
- nothing of any job in this process's memory: a child runs as another user and can
  read its whole address space. Job data (environment, connection key, identity)
  therefore goes from the worker straight to the child over a socket this process
  hands over and never reads; its own environment is the minimal one it was started
  with.

Protocol. ``CTL_FD`` is a ``SOCK_SEQPACKET`` socket to the worker, one JSON object per
message, request then reply:

- ``{"op": "spawn", "conn_dir": path}`` -> ``{"ok": true, "pid": n}`` with two file
  descriptors attached: a ``SOCK_STREAM`` socket to the new child and a pidfd of it.
  The worker sends the child one line of JSON (``env``, ``cwd``, ``argv``, ``run_as``)
  and reads one line back (``{"ok": true, ...}`` once the kernel has bound its
  sockets, or ``{"ok": false, "error": "..."}``). ``conn_dir`` (holding the kernel's
  connection file) is removed when the kernel has exited, however it ended, and when
  this process stops.
- ``{"op": "signal", "pid": n, "sig": s}`` -> ``{"ok": true, "alive": bool}``: signal
  the kernel's process group. Only this process may reap the kernel, so it is the only
  one that can signal it without racing pid reuse.
- ``{"op": "status", "pid": n}`` -> ``{"ok": true, "returncode": int | null}``
  (``null``: still running), like ``Popen.poll()``.

End of file on ``CTL_FD`` (the worker closed it or died) shuts everything down.

Where a kernel starts. A new child leaves the fork server's frames at once (it raises
:class:`_Forked` up to this file's top level) and runs the kernel from the bottom of the
stack, below ``IPKernelApp.start`` exactly as much of CPython's frame stack as a stock
``python -m ipykernel_launcher`` has there (:func:`_stock_bottom`). CPython 3.11 keeps
frames in 16 KiB chunks and allocates and frees one every time a recursion crosses a
chunk's end; where those ends lie depends on the frames below, so a kernel started deeper
(as it was: from wherever in the server loop the fork happened, which even differed
between kernels of one server) runs some recursions many times slower than a stock kernel
does, and others faster. Every kernel now has a stock kernel's chunk ends. The kernel still
runs on its process's only thread, the main one: signals, ``signal.signal`` and interrupts
work as in a stock kernel.

Lifetime: this process gets SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, through
:func:`aidc.process.die_with_parent`, which this file loads by path) and
then stops as when the worker closes ``CTL_FD``: it kills its kernels, reaps them and
removes their ``conn_dir`` (nobody else is left to), and exits; SIGALRM ends it 20 s
after a SIGTERM, should that stop hang. Each kernel gets SIGKILL when this process dies
(so, if this process is killed, the worker removes the kernels' ``conn_dir``). Each
kernel leads its own session and process group and is a child subreaper; when it exits,
whatever is left of its group and every process it had adopted is killed, so a job
leaves nothing running.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and (
        os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))):
    del sys.path[0]  # run by path: this directory's modules must not shadow any import

import importlib.util
import json
import signal
import socket
import time
import types
from collections.abc import Callable
from typing import Any


#: what a kernel imports until it has run a cell (``sys.modules`` of a stock kernel; jedi
#: is left out: only completion, which jobs never ask for, imports it). All of it is
#: imported here, once. Nothing here may depend on the environment at import time in a
#: way a job would notice: no numpy, matplotlib, torch (they read thread and device
#: settings when imported).
PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.iostream",
    "ipykernel.comm",
    "ipykernel.debugger",  # debugpy and pydevd, imported when the kernel starts
    "IPython.core.completer",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.core.logger",
    "IPython.core.history",
    "IPython.extensions.storemagic",
    "IPython.display",
    "jupyter_client.session",
    "comm",
    "zmq",
    "zmq.eventloop.zmqstream",
    "tornado.gen",
    "tornado.ioloop",
    "tornado.locks",
    "tornado.queues",
    "tornado.platform.asyncio",
    "asyncio",
    "sqlite3",
    "psutil",
    "pdb",
    "pydoc",
    "faulthandler",
    "resource",
    "runpy",
    "unicodedata",
    "encodings.idna",
)

#: environment variables set by importing :data:`PRELOAD`
IMPORT_ENV: dict[str, str] = {}
#: ``sys.argv[0]`` of a kernel, as if started with ``python -m ipykernel_launcher``
LAUNCHER = "ipykernel_launcher"


def _load_process_module() -> types.ModuleType:
    """``aidc/process.py`` (die-with-parent, ``prctl``), loaded by path: it imports only
    the standard library, and importing it as ``aidc.process`` would import ``aidc``."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "process.py")
    spec = importlib.util.spec_from_file_location("_aidc_process", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


process = _load_process_module()
prctl = process.prctl


class _Forked(BaseException):
    """Raised in a new child, with ``(socket, zygote pid)``, to leave the fork server's frames.

    Caught only at this file's top level, where the child becomes a kernel (see the module
    docstring, "Where a kernel starts"). A BaseException: nothing on the way catches it.
    """


def _send_json(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


class Zygote:
    """The fork server's state: its pool of waiting children and the kernels it made."""

    def __init__(self, ctl: socket.socket, pool_size: int):
        self.ctl = ctl
        self.pool_size = pool_size
        self.pool: list[tuple[int, socket.socket]] = []  # (pid, our end of its socket)
        self.kernels: dict[int, str] = {}  # pid -> connection dir, until reaped
        self.exited: dict[int, int] = {}  # pid -> return code, until asked for
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- children ------------------------------------------------------------------
    def fork_child(self) -> tuple[int, socket.socket]:
        """Fork a child that waits for its job on a socket; return its pid and our end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        zygote = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the loop
            try:
                ours.close()
                self.forget_in_child()
            except BaseException:  # noqa: BLE001
                os._exit(70)
            raise _Forked(theirs, zygote)
        theirs.close()
        return pid, ours

    def forget_in_child(self) -> None:
        """In a new child: drop everything of the zygote (its sockets, signal set-up)."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.ctl.close()
        for _, sock in self.pool:
            sock.close()
        self.pool = []
        self.kernels = {}
        self.exited = {}

    def fill_pool(self) -> None:
        while len(self.pool) < self.pool_size:
            self.pool.append(self.fork_child())

    def spawn(self, conn_dir: str) -> None:
        """Hand a waiting child (or a new one) to the worker as a kernel."""
        pid, sock = self.pool.pop(0) if self.pool else self.fork_child()
        pidfd = os.pidfd_open(pid)
        try:
            self.kernels[pid] = conn_dir
            _send_json(self.ctl, {"ok": True, "pid": pid}, [sock.fileno(), pidfd])
        finally:
            os.close(pidfd)
            sock.close()

    def signal(self, pid: int, sig: int) -> bool:
        """Signal kernel ``pid``'s process group; False when it has already exited."""
        if pid not in self.kernels:
            return False
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            try:
                os.kill(pid, sig)  # not yet a group leader (before setsid)
            except ProcessLookupError:
                pass
        return True

    def status(self, pid: int) -> int | None:
        self.reap()
        if pid in self.exited:
            return self.exited.pop(pid)
        if pid in self.kernels:
            return None
        return -signal.SIGKILL  # unknown: long gone

    def reap(self) -> None:
        """Collect exited children; a kernel's leftovers die with it.

        ``WNOWAIT`` first: while an exited kernel is not reaped its pid (and so its
        process group id) cannot be reused, so killing the group cannot hit a stranger.
        """
        reaped = False
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None or info.si_pid == 0:
                break
            pid = info.si_pid
            if pid in self.kernels:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                continue
            if pid in self.kernels:
                _remove_tree(self.kernels.pop(pid))
                self.exited[pid] = os.waitstatus_to_exitcode(status)
                if len(self.exited) > 10000:  # nobody asked: forget the oldest
                    del self.exited[next(iter(self.exited))]
            elif pooled := [entry for entry in self.pool if entry[0] == pid]:
                self.pool.remove(pooled[0])  # a waiting child was killed: the pool refills
                pooled[0][1].close()
                continue
            reaped = True  # a kernel, or something a dead kernel left: its children are ours now
        if reaped:
            self.kill_orphans()

    def kill_orphans(self) -> None:
        """Kill our children that are neither kernels nor waiting: what dead kernels left.

        Kernels are subreapers, so a kernel's orphaned descendants stay its children
        while it lives and become ours only when it has died.
        """
        mine = set(self.kernels) | {pid for pid, _ in self.pool}
        for pid in _children() - mine:
            try:
                os.kill(pid, signal.SIGKILL)  # our unreaped child: the pid is still its
            except OSError:
                pass

    def shutdown(self) -> None:
        """Kill every kernel (and what it started) and every waiting child, reap, exit."""
        for _, sock in self.pool:
            sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for pid in list(self.kernels):
                self.signal(pid, signal.SIGKILL)
            for pid in _children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.reap()
            if not _children():
                break
            time.sleep(0.01)
        for conn_dir in self.kernels.values():
            _remove_tree(conn_dir)

    # -- main loop -----------------------------------------------------------------
    def serve(self) -> None:
        import select

        stopping = []
        # Python handlers, so that the signals write the wakeup fd
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # as if the worker closed (also the parent-death signal: the worker died), with a
        # deadline: whatever happens, this process is gone 20 s later (SIGALRM's default)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, lambda *_: (stopping.append(True), signal.alarm(20)))
        poller = select.poll()
        poller.register(self.ctl, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while not stopping:
            self.fill_pool()
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                    continue
                try:
                    data = self.ctl.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    stopping.append(True)
                    break
                self.handle(data)
        self.shutdown()

    def handle(self, data: bytes) -> None:
        try:
            req = json.loads(data)
            op = req.get("op")
            if op == "spawn":
                return self.spawn(str(req.get("conn_dir") or ""))
            if op == "signal":
                reply = {"ok": True, "alive": self.signal(int(req["pid"]), int(req["sig"]))}
            elif op == "status":
                reply = {"ok": True, "returncode": self.status(int(req["pid"]))}
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except Exception as e:  # noqa: BLE001 - the worker shows it; the zygote lives on
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        _send_json(self.ctl, reply)


def _children() -> set[int]:
    """Our direct children (this process is single-threaded: one task)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
        me, found = os.getpid(), set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    found.add(int(name))
        return found


def _remove_tree(path: str) -> None:
    """Remove a kernel's connection dir (``rmtree`` does not follow symlinks)."""
    if path:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def _read_line(sock: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf)


def _kernel_child(sock: socket.socket, zygote: int) -> Callable[[], Any] | int:
    """A new child: wait for a job, become its kernel; its ``IPKernelApp.start``, or an exit code.

    Called from this file's top level, which then runs the kernel and :func:`_after_kernel`.
    """
    if not process.die_with_parent(signal.SIGKILL, parent=zygote):
        os._exit(1)  # the zygote went before the request took effect
    os.setsid()  # own session and process group: kill_kernel signals the group
    try:
        prctl(process.PR_SET_NAME, b"aidc-kernel")
    except OSError:
        pass
    line = _read_line(sock)
    if not line:  # the worker never used us (it closed, or the zygote shut down)
        return 0
    t_assigned = time.monotonic()
    job = json.loads(line)
    del line
    try:
        _become(job, zygote)
    except OSError as e:
        error = f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        sock.sendall(json.dumps({"ok": False, "error": error, "errno": e.errno,
                                 "step": getattr(e, "step", "")}).encode() + b"\n")
        return 1
    t_became = time.monotonic()

    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.parent_handle = zygote  # as a stock kernel has (JPY_PARENT_PID): exit when orphaned
    try:
        app.initialize(job["argv"])
    except BaseException as e:  # noqa: BLE001
        sock.sendall(json.dumps({"ok": False, "error": f"the kernel did not start: {e!r}",
                                 "step": "initialize"}).encode() + b"\n")
        raise
    t_ready = time.monotonic()
    sock.sendall(json.dumps({"ok": True, "t_assigned": t_assigned, "t_became": t_became,
                             "t_ready": t_ready}).encode() + b"\n")
    sock.close()  # nothing of the zygote left in the kernel
    return app.start


def _after_kernel(code: int) -> int:
    """What a normal interpreter exit does: wait for non-daemon threads, run atexit."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    return code


def _exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _frame_words(code: types.CodeType) -> int:
    """The words a frame of ``code`` takes on CPython's frame stack, less the part all frames have.

    CPython 3.11: ``co_nlocalsplus + co_stacksize`` (locals, cells and free variables, then
    the value stack), plus a fixed header; ``sys.getsizeof`` of a frame object is the same
    sum in bytes plus a constant.
    """
    names = set(code.co_varnames) | set(code.co_cellvars)
    return len(names) + len(code.co_freevars) + code.co_stacksize


def _stock_bottom(top: types.CodeType) -> Callable[[Callable[[], Any]], Any] | None:
    """A function that calls ``start()`` from where a stock kernel calls ``IPKernelApp.start``.

    In ``python -m ipykernel_launcher`` four frames lie below ``start`` on the frame stack:
    ``runpy._run_module_as_main``, ``runpy._run_code``, ``ipykernel_launcher``'s module and
    ``launch_instance``. In a kernel of ours, four too: this file's module frame (``top``),
    then three made here, the first with as many unused parameters as it takes for the four
    to add up to the same words. Everything above ``start`` is the same code, so every frame
    of the kernel then lies where it lies in a stock kernel, chunk ends included. None when
    that cannot be matched (another Python: then ``start`` is called directly).
    """
    if sys.implementation.name != "cpython" or sys.version_info < (3, 11):
        return None
    try:
        import runpy

        import ipykernel.kernelapp

        spec = importlib.util.find_spec("ipykernel_launcher")
        launcher = spec.loader.get_code(spec.name)  # type: ignore[union-attr]
        launch = ipykernel.kernelapp.launch_new_instance.__func__  # type: ignore[attr-defined]
        stock = [runpy._run_module_as_main.__code__, runpy._run_code.__code__, launcher,
                 launch.__code__]
    except (ImportError, AttributeError):
        return None

    def make(extra: int) -> tuple[Callable, list[types.CodeType]]:
        ns: dict[str, Any] = {}
        params = "".join(f", _{i}=None" for i in range(extra))
        exec(compile("def _bottom_3(start):\n    return start()\n"
                     "def _bottom_2(start):\n    return _bottom_3(start)\n"
                     f"def _bottom_1(start{params}):\n    return _bottom_2(start)\n",
                     "<aidc-kernel-bottom>", "exec"), ns)
        return ns["_bottom_1"], [ns[f"_bottom_{i}"].__code__ for i in (1, 2, 3)]

    want = sum(map(_frame_words, stock)) - _frame_words(top)
    extra = want - sum(map(_frame_words, make(0)[1]))
    if extra < 0:
        return None
    bottom, codes = make(extra)
    return bottom if sum(map(_frame_words, codes)) == want else None


#: calls a kernel's ``start`` (see :func:`_stock_bottom`); set before the first fork
_KERNEL_BOTTOM: Callable[[Callable[[], Any]], Any] | None = None


def _become(job: dict, zygote: int) -> None:
    """Turn this child into the job's process: identity, environment, directory.

    Order matters: identity first (so the directory is entered with the owner's
    rights), groups before gid before uid (each needs the privilege the next drops).
    """
    run_as = job.get("run_as")
    if run_as is not None and (run_as["uid"] != os.getuid() or run_as["gid"] != os.getgid()):
        try:
            os.setgroups(run_as["groups"])
            os.setgid(run_as["gid"])
            os.setuid(run_as["uid"])
        except OSError as e:
            e.step = "identity"  # type: ignore[attr-defined]
            raise
        # a credential change clears the parent-death signal and makes us undumpable;
        # our memory holds nothing but imported modules, so the owner may debug us
        if not process.die_with_parent(signal.SIGKILL, parent=zygote):
            os._exit(1)
        prctl(process.PR_SET_DUMPABLE, 1)
    prctl(process.PR_SET_CHILD_SUBREAPER, 1)

    os.environ.clear()
    os.environ.update(job["env"])
    for key, value in IMPORT_ENV.items():
        os.environ.setdefault(key, value)
    # state computed from the zygote's environment that a fresh interpreter would compute anew
    import locale
    import tempfile

    tempfile.tempdir = None
    time.tzset()  # TZ
    try:
        locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        pass
    extra = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:0] = extra
    sys.argv = [LAUNCHER, *job["argv"]]
    try:
        os.chdir(job["cwd"])
    except OSError as e:
        e.step = "cwd"  # type: ignore[attr-defined]
        raise


def main(argv: list[str]) -> None:
    t_start = time.monotonic()
    ctl_fd, parent, pool_size = int(argv[1]), int(argv[2]), int(argv[3])
    # SIGTERM, not SIGKILL: if the worker dies, this process still stops its kernels and
    # removes their directories (see serve())
    if not process.die_with_parent(signal.SIGTERM, parent=parent):
        os._exit(1)  # the worker went before the request took effect
    try:
        prctl(process.PR_SET_NAME, b"aidc-zygote")
    except OSError:
        pass
    # the worker's Ctrl-C is not ours (kernels get their own session anyway)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=ctl_fd)

    import io

    environ = dict(os.environ)
    stderr, sys.stderr = sys.stderr, io.StringIO()  # pydevd warns about frozen modules on import
    try:
        for name in PRELOAD:
            try:
                __import__(name)
            except ImportError:
                pass
    finally:
        sys.stderr = stderr
    global LAUNCHER
    spec = importlib.util.find_spec("ipykernel_launcher")
    LAUNCHER = (spec and spec.origin) or LAUNCHER
    # variables the imports set (debugpy: PYDEVD_USE_FRAME_EVAL): a kernel importing them
    # itself would have them, so each kernel gets them unless its job sets them
    IMPORT_ENV.update((k, v) for k, v in os.environ.items() if environ.get(k) != v)
    import threading

    t_imported = time.monotonic()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1 or threading.active_count() != 1:
        _send_json(ctl, {"ok": False, "error": f"{threads} threads after the imports"})
        sys.exit(1)
    prctl(process.PR_SET_CHILD_SUBREAPER, 1)
    global _KERNEL_BOTTOM
    _KERNEL_BOTTOM = _stock_bottom(sys._getframe(1).f_code)  # this file's module frame
    zygote = Zygote(ctl, pool_size)
    zygote.fill_pool()
    _send_json(ctl, {"ok": True, "pid": os.getpid(), "t_start": t_start,
                     "t_imported": t_imported, "t_pool": time.monotonic()})
    zygote.serve()


if __name__ == "__main__":
    _job = None
    try:
        main(sys.argv)
    except _Forked as forked:  # a new child: it becomes a kernel from here (see _Forked)
        _job = forked.args
    if _job is not None:
        _code = 70
        try:
            _start = _kernel_child(*_job)
            del _job
            if isinstance(_start, int):
                _code = _start
            else:
                try:
                    # called from this frame: below start() lies what a stock kernel has
                    _KERNEL_BOTTOM(_start) if _KERNEL_BOTTOM else _start()
                    _code = 0
                except SystemExit as e:
                    _code = _exit_code(e)
                _code = _after_kernel(_code)
        except SystemExit as e:
            _code = _exit_code(e)
        except BaseException:  # noqa: BLE001 - report and die
            import traceback

            traceback.print_exc()
        finally:
            os._exit(_code)
