"""A real aidc platform for tests: ``aidc up`` in a temporary data dir on free ports.

Everything is real: the ``aidc`` CLI, JupyterHub, configurable-http-proxy, the Unix
accounts (the tests run as root, like CI), the single-user servers and their kernels.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import websocket

AIDC = str(Path(sys.executable).with_name("aidc"))

#: the session platform's Unix accounts are ``aidct-<name>``, apart from a developer's
#: ``jupyter-*``; every other test platform gets a prefix of its own
UNIX_PREFIX = "aidct-"


#: what `aidc up` prints when the last of its services answers (aidc.hub.app)
SERVICES_UP = re.compile(r"^aidc: all \d+ services are up", re.M)


def unix_name(name: str, prefix: str = UNIX_PREFIX) -> str:
    return prefix + name


def new_prefix() -> str:
    return f"aidc{secrets.token_hex(2)}-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class User:
    name: str
    password: str
    role: str
    token: str = ""


def run_aidc(*args: str, data_dir: Path | None = None, input: str | None = None,
             env: dict | None = None, timeout: float = 120,
             prefix: str = UNIX_PREFIX) -> subprocess.CompletedProcess:
    cmd = [AIDC, *args]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "AIDC_UNIX_USER_PREFIX": prefix, **(env or {})},
    )


def own_platform_drop_ins(data_dir: Path, config: str | None = None, dask_at_start: bool = True) -> None:
    """The drop-ins of a platform a test starts for itself (not the session's):

    - no Voila dashboards (a process and preheated kernels, ~13 s of CPU): only the session
      platform runs them;
    - with ``dask_at_start=False``, the jobs service starts Dask with the first job
      (``c.JobCluster.start_with``), for platforms that run none;
    - ``config`` as ``50-test.py``.
    """
    config_d = Path(data_dir) / "config.d"
    config_d.mkdir(parents=True, exist_ok=True)
    lines = ["c.Dashboards.enabled = False"]
    if not dask_at_start:
        lines.append('c.JobCluster.start_with = "first-job"')
    (config_d / "40-test-platform.py").write_text("\n".join(lines) + "\n")
    if config:
        (config_d / "50-test.py").write_text(config)


@dataclass
class Platform:
    data_dir: Path
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    prefix: str = UNIX_PREFIX
    #: extra environment for `aidc up` and the CLI (e.g. AIDC_LDAP_* for a drop-in)
    env: dict = field(default_factory=dict)
    #: extra arguments for `aidc up` (e.g. --simulated-gpus)
    up_args: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    users: list[User] = field(default_factory=list)

    #: "https" for a platform started with --tls-*; ``verify``: the CA bundle to trust then
    scheme: str = "http"
    verify: str | bool = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-up.log"

    # lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 90) -> "Platform":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [AIDC, "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--hub-port", str(self.hub_port), "--proxy-api-port", str(self.proxy_api_port),
             "--grpc-port", str(self.grpc_port),
             *self.up_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "AIDC_UNIX_USER_PREFIX": self.prefix, **self.env},
        )
        return self.wait_until_up(timeout)

    def wait_until_up(self, timeout: float = 90) -> "Platform":
        """Until the hub answers and `aidc up` says that all its services are up."""
        deadline = time.monotonic() + timeout
        hub_up = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aidc up exited with {self.proc.returncode}:\n{self.log()}")
            try:
                hub_up = hub_up or requests.get(self.url + "/hub/health", timeout=2,
                                                verify=self.verify).status_code == 200
            except (requests.RequestException, OSError):  # OSError: a CA bundle not written yet
                pass
            if hub_up and SERVICES_UP.search(self.log_since(getattr(self, "_log_offset", 0))):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"aidc up did not answer in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise RuntimeError(f"aidc up did not stop within {timeout}s after signal {sig}")

    def log(self) -> str:
        """Everything the platform printed (start-up lines included: tests look for them)."""
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def log_since(self, offset: int) -> str:
        """What the platform printed after ``offset`` bytes of its log (e.g. since a restart)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def admin_password(self) -> str:
        return (self.data_dir / "initial-admin-password").read_text().strip()

    # CLI -------------------------------------------------------------------
    def cli(self, *args: str, input: str | None = None, env: dict | None = None):
        return run_aidc(*args, data_dir=self.data_dir, input=input,
                        env={**self.env, **(env or {})}, prefix=self.prefix)

    def new_user(self, role: str, with_token: bool = True) -> User:
        name = f"{role[:3]}{secrets.token_hex(3)}"
        user = User(name=name, password=secrets.token_urlsafe(12), role=role)
        r = self.cli("user", "add", name, "--role", role, "--password-stdin", input=user.password + "\n")
        assert r.returncode == 0, r.stderr
        self.users.append(user)
        if with_token:
            user.token = self.token(name)
        return user

    def token(self, name: str, *extra: str) -> str:
        r = self.cli("token", name, *extra)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def remove_users(self) -> None:
        """Remove every user this test made, and the initial admin (after stop())."""
        names = [u.name for u in self.users]
        if (self.data_dir / "initial-admin-password").exists():
            names.append("admin")
        if names:  # one command for all of them: each `aidc` start costs
            # (a test may have removed some of them already: the others still go)
            self.cli("user", "remove", "--even-last-admin", *names)
        self.users.clear()

    # HTTP ------------------------------------------------------------------
    def api(self, token: str) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"token {token}"
        self._trust(s)
        return s

    def _trust(self, s: requests.Session) -> None:
        """Verify an HTTPS platform against its own bundle (requests would let a
        REQUESTS_CA_BUNDLE in the environment win over ``Session.verify``)."""
        if self.verify is not True:
            s.verify = self.verify
            s.trust_env = False

    def hub(self, token: str, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 60)
        return self.api(token).request(method, f"{self.url}/hub/api{path}", **kw)

    def login(self, name: str, password: str) -> tuple[requests.Session, requests.Response]:
        """Sign in through the real login form; returns the session and the final answer."""
        s = requests.Session()
        self._trust(s)
        s.get(self.url + "/hub/login", timeout=30)
        r = s.post(
            self.url + "/hub/login?next=/hub/home",
            data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf")},
            timeout=60,
        )
        return s, r

    def start_server(self, user: User, timeout: float = 120) -> dict:
        """Start the user's server through the REST API and wait until it is ready."""
        r = self.hub(user.token, "POST", f"/users/{user.name}/server")
        already = r.status_code == 400 and "already running" in r.text
        assert r.status_code in (201, 202) or already, (r.status_code, r.text)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.hub(user.token, "GET", f"/users/{user.name}").json()
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                return server
            time.sleep(0.5)
        raise AssertionError(f"server of {user.name} not ready in {timeout}s\n{self.log()}")

    def stop_server(self, user: User, token: str | None = None) -> None:
        r = self.hub(token or user.token, "DELETE", f"/users/{user.name}/server")
        assert r.status_code in (202, 204), (r.status_code, r.text)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            model = self.hub(token or user.token, "GET", f"/users/{user.name}").json()
            if not (model.get("servers") or {}).get(""):
                return
            time.sleep(0.5)
        raise AssertionError(f"server of {user.name} did not stop")

    # GPUs -----------------------------------------------------------------
    def spawn(self, user: User, profile: str) -> requests.Response:
        """Ask for the user's server with a resource profile (REST API)."""
        return self.hub(user.token, "POST", f"/users/{user.name}/server", json={"profile": profile})

    def wait_ready(self, user: User, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.hub(user.token, "GET", f"/users/{user.name}").json()
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(0.5)
        raise AssertionError(f"server of {user.name} not ready in {timeout}s\n{self.log()}")

    def resources(self, token: str, what: str = "gpus") -> dict:
        """The resources service's answer (``gpus`` or ``queue``)."""
        r = self.api(token).get(f"{self.url}/services/resources/api/{what}", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def audit_events(self) -> list[dict]:
        path = self.data_dir / "logs" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def execute(platform: Platform, user: User, code: str, token: str | None = None,
            timeout: float = 60) -> str:
    """Run ``code`` in a new kernel of ``user``'s server over the kernel websocket."""
    token = token or user.token
    base = f"{platform.url}/user/{user.name}/api/kernels"
    s = platform.api(token)
    r = s.post(base, json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    kernel_id = r.json()["id"]
    secure = platform.scheme == "https"
    ws = websocket.create_connection(
        f"{'wss' if secure else 'ws'}://127.0.0.1:{platform.port}/user/{user.name}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {token}"], timeout=timeout,
        **({"sslopt": {"ca_certs": platform.verify}} if secure else {}),
    )
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user.name,
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False},
    }))
    out: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                out.append("ERROR: " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()
        s.delete(f"{base}/{kernel_id}", timeout=30)
    raise AssertionError(f"no reply from the kernel in {timeout}s; got {out}")


def visible_devices(platform: Platform, user: User) -> str:
    """CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES AIDC_GPUS_SIMULATED, as a kernel sees them."""
    return execute(platform, user, "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], "
                   "os.environ['NVIDIA_VISIBLE_DEVICES'], os.environ['AIDC_GPUS_SIMULATED'])").strip()


def edge_of(platform) -> tuple[psutil.Process, str]:
    """The platform's public edge (nginx, a child of the hub: aidc.hub.edge) and its
    private folder."""
    [edge] = [p for p in psutil.Process(platform.proc.pid).children()
              if p.name() == "nginx" and "aidc-edge-" in " ".join(p.cmdline())]
    return edge, nginx_folder(edge)


def nginx_folder(proc: psutil.Process) -> str:
    """The private folder an nginx of aidc's runs from (its ``-p``: aidc.nginx.command)."""
    cmd = proc.cmdline()
    return cmd[cmd.index("-p") + 1]


def grpc_port_owners(port: int) -> set[str]:
    """The names of the programs listening on ``port`` (as root: anyone's)."""
    return {psutil.Process(c.pid).name().split(".")[0].rstrip("0123456789")
            for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
            and c.laddr.port == port and c.pid}
