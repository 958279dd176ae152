"""HTTPS on the public port: ``aidc up --tls-self-signed`` and ``--tls-cert/--tls-key``.

One platform, started the way an operator tries HTTPS out, is reached only over HTTPS with
its own certificate: HSTS and secure cookies on the hub's answers, plain HTTP and untrusted
clients refused, and a notebook's ``aidc.client`` in a user's kernel reaching the platform
with verification on. Bad certificate files are refused by ``aidc up`` before anything
starts, with a message naming the file.

``aidc up --internal-ssl`` (JupyterHub's ``internal_ssl``) is tested once, on one platform:
everything still works through the public port while every internal hop is mutual TLS; and
``HubAPI``'s two transports present the internal certificate to a mutual-TLS server.
"""

from __future__ import annotations

import json
import pwd
import shutil
import stat
import time
from pathlib import Path

import pytest
import requests

from aidc.security import internal_tls, tls
from platform_helpers import edge_of, execute, grpc_port_owners, run_aidc, unix_name


def test_self_signed_https_platform(fresh_platform):
    p = fresh_platform()
    p.up_args = ["--tls-self-signed"]
    p.scheme = "https"
    p.verify = str(tls.bundle_path(p.data_dir))
    p.start()
    assert f"REQUESTS_CA_BUNDLE={p.verify}" in p.log()

    login = requests.get(p.url + "/hub/login", verify=p.verify, timeout=30)
    assert login.status_code == 200
    assert login.headers["Strict-Transport-Security"] == "max-age=31536000"
    # on every answer, not only the hub's: here the inference router's (through the edge)
    live = requests.get(p.url + "/services/models/v2/health/live", verify=p.verify, timeout=30)
    assert live.headers["Strict-Transport-Security"] == "max-age=31536000", live.headers
    with pytest.raises(requests.exceptions.SSLError):  # not a certificate anyone else trusts
        requests.get(p.url + "/hub/login", timeout=30, verify=requests.certs.where())
    # plain HTTP on the public port is sent to HTTPS (the edge, nginx), never served
    plain = requests.get(f"http://127.0.0.1:{p.port}/hub/login?next=x", timeout=30, allow_redirects=False)
    assert plain.status_code == 301 and plain.headers["Location"] == f"{p.url}/hub/login?next=x"
    assert grpc_port_owners(p.port) == {"nginx"}

    user = p.new_user("scientist")
    session, r = p.login(user.name, user.password)
    assert r.status_code == 200
    cookies = {c.name: c for c in session.cookies}
    assert cookies and all(c.secure for c in cookies.values()), {n: c.secure for n, c in cookies.items()}

    # a notebook in the user's server reaches the platform's services over HTTPS, verified
    p.start_server(user)
    out = execute(p, user, "import json, aidc.client as c; print(json.dumps(c.Client().profiles()))")
    assert [prof["id"] for prof in json.loads(out)], out

    # v2 over gRPC on its own port has the public port's TLS: verified with the platform's
    # certificate, refused in plain text
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert grpc_port_owners(p.grpc_port) == {"nginx"}  # the native front, with the certificate
    h = {"authorization": f"Bearer {user.token}"}
    secure = grpcclient.InferenceServerClient(
        f"127.0.0.1:{p.grpc_port}", ssl=True, root_certificates=p.verify)
    assert secure.is_server_live(headers=h)
    assert "UNAUTHENTICATED" in _grpc_refusal(lambda: secure.is_server_live(
        headers={"authorization": "Bearer not-a-token"}), InferenceServerException)
    plain = grpcclient.InferenceServerClient(f"127.0.0.1:{p.grpc_port}")
    _grpc_refusal(lambda: plain.is_server_live(headers=h, client_timeout=10), InferenceServerException)


def _grpc_refusal(call, exception) -> str:
    with pytest.raises(exception) as e:
        call()
    return str(e.value)


def test_bad_certificate_files_are_refused_before_start(tmp_path):
    key_only = tmp_path / "key.pem"
    key_only.write_text("not a key")
    other = tmp_path / "other"
    cert, _ = tls.self_signed(other / "tls", other / "secrets", "127.0.0.1")
    r = run_aidc("up", "--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key_only),
                 data_dir=tmp_path / "data")
    assert r.returncode == 2 and f"no certificate file at {tmp_path / 'missing.crt'}" in r.stderr, r.stderr
    r = run_aidc("up", "--tls-cert", str(cert), "--tls-key", str(key_only), data_dir=tmp_path / "data")
    assert r.returncode == 2 and "is not an unencrypted PEM private key" in r.stderr, r.stderr
    third, third_key = tls.self_signed(tmp_path / "third" / "tls", tmp_path / "third" / "secrets", "127.0.0.1")
    r = run_aidc("up", "--tls-cert", str(cert), "--tls-key", str(third_key), data_dir=tmp_path / "data")
    assert r.returncode == 2 and "is not the key of the certificate" in r.stderr, r.stderr
    r = run_aidc("up", "--tls-cert", str(cert), data_dir=tmp_path / "data")
    assert r.returncode == 2 and "needs both --tls-cert FILE and --tls-key FILE" in r.stderr, r.stderr
    assert not (tmp_path / "data" / "platform.json").exists()  # nothing was started


def test_internal_tls_between_hub_proxy_servers_and_services(fresh_platform, tmp_path):
    """``aidc up --internal-ssl``: a scientist signs in, runs a kernel cell in their server and
    reads the resources service, all through the public port, while every internal hop (the
    hub's API, the proxy's API, the routes to servers and services) is mutual TLS: plain HTTP
    and clients without a certificate of the platform's authorities are refused."""
    # the Voila dashboards too (no preheated kernels: the landing page needs none)
    p = fresh_platform("c.Dashboards.enabled = True\nc.Dashboards.pool_size = 0\n")
    p.up_args = ["--internal-ssl"]
    p.start()
    hub = internal_tls.hub_files(p.data_dir)  # what the aidc command presents (platform.json)
    assert json.loads((p.data_dir / "platform.json").read_text())["internal_ssl"] == hub.as_dict()
    assert f"internal TLS: hub, proxy, servers and services speak mutual TLS (authorities in {p.data_dir / 'internal-ssl'})" in p.log()

    user = p.new_user("scientist")  # `aidc user add` and `aidc token`: the hub's API over mTLS
    session, r = p.login(user.name, user.password)
    assert r.status_code == 200 and r.url.endswith("/hub/home"), (r.status_code, r.url)
    page = session.get(f"{p.url}/services/dashboards/", timeout=60)  # Voila, through hub OAuth
    assert page.status_code == 200 and "/services/dashboards/" in page.url, (page.status_code, page.url)
    p.start_server(user)
    assert execute(p, user, "print(6 * 7)").strip() == "42"
    assert p.resources(user.token)["units"], "the resources service answered no GPUs"
    # a service's own call to the hub: the refusal's audit event, posted by its sender
    r = p.api(user.token).get(f"{p.url}/services/jobs/api/jobs/no-such-job", timeout=30)
    assert r.status_code == 404, r.text
    deadline = time.monotonic() + 30
    while not any(e["__schema__"].endswith("/access") and e.get("service") == "jobs"
                  and e.get("actor") == user.name for e in p.audit_events()):
        assert time.monotonic() < deadline, "the jobs service's audit event never reached the hub"
        time.sleep(0.2)

    # inference goes edge (nginx) -> router -> replica, and the router asks the models
    # service for metadata: both hops mutual TLS (nginx presents the proxy's client
    # certificate; it sends v2 to the router itself, and has no other way there)
    import numpy as np
    import torch

    import aidc
    from aidc.client import Client
    client = Client(p.url, user.token, timeout=300)
    x = np.zeros((1, 4), np.float32)
    aidc.models.register(torch.nn.Linear(4, 2).eval(), name="tiny", example=x, client=client)
    assert aidc.models.deploy("tiny", client=client)["ready"]
    assert aidc.models.predict("tiny", x, client=client).shape == (1, 2)
    assert grpc_port_owners(p.port) == {"nginx"}
    conf = (Path(edge_of(p)[1]) / "nginx.conf").read_text()
    assert "location /services/models/v2/ {\n      proxy_pass https://direct0;" in conf
    assert "proxy_ssl_certificate " in conf and "proxy_ssl_verify on;" in conf
    meta = p.api(user.token).get(f"{p.url}/services/models/v2/models/tiny", timeout=30)
    assert meta.status_code == 200 and meta.json()["name"] == "tiny", meta.text
    # gRPC: nginx, which reaches the router over mutual TLS too
    import tritonclient.grpc as grpcclient

    assert grpc_port_owners(p.grpc_port) == {"nginx"}
    tc = grpcclient.InferenceServerClient(f"127.0.0.1:{p.grpc_port}")
    assert tc.is_model_ready("tiny", headers={"authorization": f"Bearer {user.token}"})
    tc.close()

    # the proxy's own table: every target is https, the proxy API itself too
    routes = requests.get(f"https://127.0.0.1:{p.proxy_api_port}/api/routes", timeout=30,
                          headers={"Authorization": "token " + (p.data_dir / "secrets" / "proxy-token").read_text().strip()},
                          cert=(hub.certfile, hub.keyfile), verify=hub.cafile).json()
    targets = {spec.rstrip("/"): route["target"] for spec, route in routes.items()}
    assert targets and all(t.startswith("https://") for t in targets.values()), targets
    server, service = targets[f"/user/{user.name}"], targets["/services/resources"]
    for target in (server, service, targets["/services/dashboards"], targets["/services/models/v2"],
                   f"https://127.0.0.1:{p.hub_port}"):
        plain = "http://" + target.removeprefix("https://")
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP inside
            requests.get(plain + "/", timeout=10)
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(target + "/", timeout=10, verify=hub.cafile)  # no client certificate
    # the user's key is theirs alone: their account's 0700 folder, files 0600
    account = pwd.getpwnam(unix_name(user.name, p.prefix))
    certs = Path(account.pw_dir) / ".jupyterhub" / "jupyterhub-certs"
    assert (certs.stat().st_uid, stat.S_IMODE(certs.stat().st_mode)) == (account.pw_uid, 0o700)
    for f in certs.iterdir():
        assert (f.stat().st_uid, stat.S_IMODE(f.stat().st_mode)) == (account.pw_uid, 0o600), f
    # a ~/.jupyterhub the user made a symbolic link: the hub (root) stages nothing there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(certs.parent)
    certs.parent.symlink_to(elsewhere)
    files = {}
    for what in ("keyfile", "certfile", "cafile"):
        files[what] = tmp_path / f"staged.{what}"
        files[what].write_text(what)
    with pytest.raises(OSError):
        internal_tls.stage_for_account(files, account.pw_name)
    assert not list(elsewhere.iterdir()) and elsewhere.stat().st_uid == 0


def test_hub_client_presents_the_internal_certificate(tmp_path):
    """Both of ``HubAPI``'s paths (requests and Tornado) connect to a mutual-TLS server with
    the process's internal certificate; without one the server refuses the connection."""
    import asyncio
    import threading

    from certipy import Certipy
    from tornado import web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from aidc.errors import PlatformError
    from aidc.hubapi import HubAPI

    store = Certipy(store_dir=str(tmp_path))
    for ca in ("hub-ca", internal_tls.NOTEBOOKS_CA):
        store.create_ca(ca)
    bundles = store.trust_from_graph({"hub-ca": ["hub-ca", internal_tls.NOTEBOOKS_CA],
                                      internal_tls.NOTEBOOKS_CA: ["hub-ca"]})
    hub = store.create_signed_pair("hub-internal", "hub-ca", alt_names=["IP:127.0.0.1"])["files"]
    server_files = internal_tls.InternalFiles(hub["key"], hub["cert"], bundles["hub-ca"])
    client_files = internal_tls.service_files(str(tmp_path), "jobs", bundles[internal_tls.NOTEBOOKS_CA])

    class Answer(web.RequestHandler):
        def get(self):
            self.write({"ok": True})

    sockets = bind_sockets(0, "127.0.0.1")
    url = f"https://127.0.0.1:{sockets[0].getsockname()[1]}"
    ready, loop = threading.Event(), asyncio.new_event_loop()

    def serve():
        asyncio.set_event_loop(loop)
        HTTPServer(web.Application([(r"/api/", Answer)]),
                   ssl_options=internal_tls.server_context(server_files)).add_sockets(sockets)
        loop.call_soon(ready.set)
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(10)
    try:
        api = HubAPI(url + "/api", "", timeout=10, retries=0, tls_files=client_files)
        assert api.request("GET", "/") == {"ok": True}
        assert asyncio.run(api.fetch("GET", "/")) == {"ok": True}
        with pytest.raises(PlatformError):  # without the process's files: refused
            HubAPI(url + "/api", "", timeout=10, retries=0).request("GET", "/")
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(url + "/api/", verify=bundles["hub-ca"], timeout=10)  # trusts, no certificate
    finally:
        loop.call_soon_threadsafe(loop.stop)
