"""HTTPS on the public port: ``aidc up --tls-self-signed`` and ``--tls-cert/--tls-key``.

One platform, started the way an operator tries HTTPS out, is reached only over HTTPS with
its own certificate: HSTS and secure cookies on the hub's answers, plain HTTP and untrusted
clients refused, and a notebook's ``aidc.client`` in a user's kernel reaching the platform
with verification on. Bad certificate files are refused by ``aidc up`` before anything
starts, with a message naming the file.
"""

from __future__ import annotations

import json

import pytest
import requests

from aidc.security import tls
from platform_helpers import execute, run_aidc


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
    with pytest.raises(requests.exceptions.SSLError):  # not a certificate anyone else trusts
        requests.get(p.url + "/hub/login", timeout=30, verify=requests.certs.where())
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on the public port
        requests.get(f"http://127.0.0.1:{p.port}/hub/login", timeout=30)

    user = p.new_user("scientist")
    session, r = p.login(user.name, user.password)
    assert r.status_code == 200
    cookies = {c.name: c for c in session.cookies}
    assert cookies and all(c.secure for c in cookies.values()), {n: c.secure for n, c in cookies.items()}

    # a notebook in the user's server reaches the platform's services over HTTPS, verified
    p.start_server(user)
    out = execute(p, user, "import json, aidc.client as c; print(json.dumps(c.Client().profiles()))")
    assert [prof["id"] for prof in json.loads(out)], out


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
