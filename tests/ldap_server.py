"""A real, throw-away OpenLDAP directory for tests: Debian's ``slapd`` on 127.0.0.1.

:class:`LDAPServer` writes a ``slapd.conf`` (schemas core, cosine, inetorgperson and nis
from ``/etc/ldap/schema``, one ``mdb`` database for ``dc=example,dc=com``) into a
temporary folder, loads the entries with ``slapadd`` before the server starts, runs
``slapd -d stats`` in the foreground listening on ``ldap://127.0.0.1:PORT/`` only (no
ldapi socket, no other address), waits until a search of the suffix answers, and stops
it with SIGTERM (SIGKILL if it lingers). The folder is removed afterwards. slapd logs
one line per operation; :meth:`LDAPServer.bind_results` reads the binds from it.

Use it as a context manager, or call :meth:`LDAPServer.start` / :meth:`LDAPServer.stop`;
an ``atexit`` hook and ``PR_SET_PDEATHSIG`` make sure slapd does not outlive the test
run even when a test, or pytest itself, dies. Install slapd with ``tests/ldap/install.sh``.

    with LDAPServer(users=[LDAPUser("alice", "pw")], groups={"ml": ["alice"]}) as ldap:
        ldap.port, ldap.user_dn("alice"), ldap.group_dn("ml")
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ldap3

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")

SUFFIX = "dc=example,dc=com"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"


def available() -> bool:
    """Whether slapd and the schema files it needs are installed."""
    return Path(SLAPD).is_file() and all(
        (SCHEMA_DIR / f"{s}.schema").is_file() for s in SCHEMAS
    )


def ssha(password: str) -> str:
    """``{SSHA}`` hash of ``password``, as ``slappasswd -h {SSHA}`` makes it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child, before exec
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


@dataclass
class LDAPUser:
    uid: str
    password: str
    #: full name (cn); defaults to the uid
    name: str = ""


@dataclass
class LDAPServer:
    users: list[LDAPUser] = field(default_factory=list)
    #: group cn -> uids of its members (a groupOfNames under ou=groups)
    groups: dict[str, list[str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    root_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    workdir: Path | None = None
    proc: subprocess.Popen | None = None

    # names ---------------------------------------------------------------------------
    @staticmethod
    def user_dn(uid: str) -> str:
        return f"uid={uid},{PEOPLE}"

    @staticmethod
    def group_dn(cn: str) -> str:
        return f"cn={cn},{GROUPS}"

    bind_template = f"uid={{username}},{PEOPLE}"

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}/"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "slapd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, AssertionError):
            return ""

    def bind_results(self, dn: str) -> list[int]:
        """LDAP result codes of every bind as ``dn`` so far (0 = success, 49 = invalid
        credentials), read from slapd's own log."""
        ops: dict[str, int | None] = {}
        bind = re.compile(r'(conn=\d+ op=\d+) BIND dn="([^"]*)" method=')
        result = re.compile(r"(conn=\d+ op=\d+) RESULT tag=97 err=(\d+)")
        for line in self.log().splitlines():
            if (m := bind.search(line)) and m.group(2).lower() == dn.lower():
                ops[m.group(1)] = None
            elif (m := result.search(line)) and m.group(1) in ops:
                ops[m.group(1)] = int(m.group(2))
        return [code for code in ops.values() if code is not None]

    # files ---------------------------------------------------------------------------
    def _config(self) -> str:
        assert self.workdir is not None
        includes = "\n".join(f"include {SCHEMA_DIR / s}.schema" for s in SCHEMAS)
        modules = ""
        if (MODULE_DIR / "back_mdb.la").exists() or (MODULE_DIR / "back_mdb.so").exists():
            modules = f"modulepath {MODULE_DIR}\nmoduleload back_mdb\n"
        return f"""{includes}
{modules}pidfile {self.workdir / 'slapd.pid'}
argsfile {self.workdir / 'slapd.args'}
loglevel stats

database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ssha(self.root_password)}
directory {self.workdir / 'db'}
index objectClass eq
index uid,member eq

# passwords: only for binding (and changing one's own); everything else readable by
# signed-in users, as in a typical company directory
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by users read
    by * none
"""

    def _ldif(self) -> str:
        parts = [
            f"dn: {SUFFIX}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\n"
            "o: Example\ndc: example\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
        ]
        for i, u in enumerate(self.users):
            cn = u.name or u.uid
            parts.append(
                f"dn: {self.user_dn(u.uid)}\n"
                "objectClass: inetOrgPerson\nobjectClass: posixAccount\n"
                f"uid: {u.uid}\ncn: {cn}\nsn: {cn}\n"
                f"uidNumber: {20000 + i}\ngidNumber: 20000\n"
                f"homeDirectory: /home/{u.uid}\n"
                f"userPassword: {ssha(u.password)}\n"
            )
        for cn, members in self.groups.items():
            # groupOfNames needs at least one member: an empty group names the suffix
            member_dns = [self.user_dn(m) for m in members] or [SUFFIX]
            parts.append(
                f"dn: {self.group_dn(cn)}\nobjectClass: groupOfNames\ncn: {cn}\n"
                + "".join(f"member: {dn}\n" for dn in member_dns)
            )
        return "\n".join(parts)

    # lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "LDAPServer":
        if not available():
            raise RuntimeError(f"slapd is not installed ({SLAPD}); run tests/ldap/install.sh")
        self.workdir = Path(tempfile.mkdtemp(prefix="aidc-slapd-"))
        atexit.register(self.stop)
        try:
            (self.workdir / "db").mkdir(mode=0o700)
            conf = self.workdir / "slapd.conf"
            conf.write_text(self._config())
            (self.workdir / "data.ldif").write_text(self._ldif())
            load = subprocess.run(
                [SLAPD, "-T", "add", "-f", str(conf), "-l", str(self.workdir / "data.ldif")],
                capture_output=True, text=True, timeout=60,
            )
            if load.returncode != 0:
                raise RuntimeError(f"slapadd failed:\n{load.stdout}{load.stderr}")
            # a free port may be taken between choosing and binding it: try a few
            for attempt in range(5):
                self.port = self.port if attempt == 0 and self.port else _free_port()
                if self._launch(conf, timeout):
                    return self
            raise RuntimeError(f"slapd did not start:\n{self.log()[-5000:]}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, conf: Path, timeout: float) -> bool:
        """Start slapd on self.port; True once it answers, False if it exited early."""
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [SLAPD, "-d", "stats", "-h", self.url, "-f", str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._answers():
                return True
            time.sleep(0.1)
        self._terminate()
        raise RuntimeError(
            f"slapd did not answer on {self.url} in {timeout}s:\n{self.log()[-5000:]}"
        )

    def _answers(self) -> bool:
        try:
            with self.connect() as conn:
                return conn.search(SUFFIX, "(objectClass=organization)", ldap3.BASE)
        except ldap3.core.exceptions.LDAPException:
            return False

    def connect(self, dn: str = ROOT_DN, password: str | None = None) -> ldap3.Connection:
        """A connection bound as ``dn`` (the directory's root by default)."""
        server = ldap3.Server(self.host, port=self.port, connect_timeout=2)
        return ldap3.Connection(
            server, user=dn, password=self.root_password if password is None else password,
            auto_bind=ldap3.AUTO_BIND_NO_TLS, receive_timeout=5,
        )

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        """Stop slapd and remove its files (safe to call more than once)."""
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "LDAPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
