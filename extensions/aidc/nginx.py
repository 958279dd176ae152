"""nginx as aidc runs it: the program, a private folder for its configuration and files,
its command line, and the settings every aidc nginx shares.

Two fronts are nginx, because a native proxy costs a fraction of a Python or Node.js one
per request (~0.05 CPU-ms against ~0.27 for configurable-http-proxy, measured in
``benchmarks/serving.py``): the public edge (:mod:`aidc.hub.edge`) and the v2 gRPC port
(:mod:`aidc.models.grpc_front`). Each is one nginx process (``master_process off``) whose
parent restarts it and which Linux ends with that parent; its configuration and temporary
files (request bodies, sockets) live in a folder only its user can open (0700), removed
when it stops, or, when its maker was killed outright, by the next one that starts
(:func:`sweep`); its errors go to its parent's log (``error_log stderr``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile

#: where Debian puts nginx when ``PATH`` has no ``sbin``
_SBIN = "/usr/sbin/nginx"
CONFIG_NAME = "nginx.conf"
#: in a private folder: the pid of the process that made it (for :func:`sweep`)
OWNER = "owner.pid"


def binary() -> str | None:
    """The nginx program, or None when it is not installed (``apt-get install nginx``)."""
    found = shutil.which("nginx")
    if found:
        return found
    return _SBIN if os.access(_SBIN, os.X_OK) else None


def private_folder(prefix: str) -> str:
    """A new folder only this user can open (0700: ``mkdtemp``), marked as this process's;
    its path. Folders of ``prefix`` left by processes that were killed outright go first."""
    sweep(prefix)
    folder = tempfile.mkdtemp(prefix=prefix)
    with open(os.path.join(folder, OWNER), "w") as f:
        f.write(str(os.getpid()))
    return folder


def sweep(prefix: str) -> list[str]:
    """Remove this user's folders named ``prefix*`` in the temporary directory whose maker
    is no longer running (a hub or router killed with SIGKILL cannot remove its own); the
    paths removed. Folders of other users, and folders without a maker's pid, are left."""
    removed = []
    base = tempfile.gettempdir()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or \
                    entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            with open(os.path.join(entry.path, OWNER)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if _running(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid now
        return True
    return True


def write_config(folder: str, text: str) -> str:
    path = os.path.join(folder, CONFIG_NAME)
    with open(path, "w") as f:
        f.write(text)
    return path


def command(program: str, folder: str) -> list[str]:
    """nginx's command line for the configuration in ``folder`` (``-e``: no log file of
    its own, even before the configuration is read)."""
    return [program, "-p", folder, "-c", os.path.join(folder, CONFIG_NAME), "-e", "stderr"]


def before_exec() -> None:
    """In the child, before nginx starts: as many open files as the hard limit allows (up
    to 65,536). One nginx process holds two descriptors per proxied connection (a Lab's
    WebSockets, keep-alive inference clients), and a soft limit of 1,024 (systemd's
    default) would refuse connections long before ``worker_connections``; nginx raises it
    itself only in worker processes, which ``master_process off`` does not have."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def preamble(folder: str, purpose: str, connections: int = 4096) -> str:
    """The top of a configuration: one foreground process, its pid and errors, and (to
    open inside ``http {}``) the temporary paths in ``folder`` and no access log."""
    user = pwd.getpwuid(os.geteuid()).pw_name  # as root: no chown of the folder to nobody
    group = grp.getgrgid(os.getegid()).gr_name
    temp = "".join(f"  {kind}_temp_path {folder}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# written by aidc: {purpose}
daemon off;
master_process off;
user {user} {group};
pid {folder}/nginx.pid;
error_log stderr error;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  server_tokens off;
{temp}"""


def listen(host: str, port: int, *flags: str) -> str:
    address = f"[{host}]" if ":" in host else host
    return f"listen {address}:{port}{''.join(' ' + f for f in flags if f)} reuseport;"


def tls_lines(tls: tuple[str, str] | None, indent: str = "    ") -> str:
    """``ssl_certificate`` and key for ``tls`` = (certificate file, key file), or nothing."""
    if not tls:
        return ""
    return (f"{indent}ssl_certificate {tls[0]};\n{indent}ssl_certificate_key {tls[1]};\n"
            f"{indent}ssl_protocols TLSv1.2 TLSv1.3;\n")


def upstream_tls_lines(client: tuple[str, str, str] | None, indent: str = "      ") -> str:
    """For an HTTPS upstream (a service under internal TLS): present ``client`` = (key file,
    certificate file, trust bundle), the proxy's client identity that services accept, and
    verify the service against the bundle. Services' internal certificates name
    ``localhost`` (JupyterHub's ``create_certs``), which nginx checks: it does not check
    IP names. Nothing when ``client`` is None (plain HTTP)."""
    if not client:
        return ""
    key, cert, ca = client
    return "".join(f"{indent}{line};\n" for line in (
        f"proxy_ssl_certificate {cert}", f"proxy_ssl_certificate_key {key}",
        f"proxy_ssl_trusted_certificate {ca}", "proxy_ssl_verify on", "proxy_ssl_name localhost",
        "proxy_ssl_session_reuse on"))


def remove(folder: str | None) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
