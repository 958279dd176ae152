"""Without root, aidc runs in a loudly announced shared-account development mode."""

import os
import pwd
import secrets
import subprocess

import pytest
from platform_helpers import AIDC, Platform, User, execute, own_platform_drop_ins


@pytest.fixture
def dev_account(tmp_root, platform):
    """An ordinary Unix account to run the platform as (in aidc-users, which `platform`
    has already given traverse access to the environment)."""
    name = f"aidcdev{secrets.token_hex(2)}"
    data_dir = tmp_root / f"dev-{name}"
    subprocess.run(["useradd", "--create-home", "--gid", "aidc-users",
                    "--comment", f"aidc {data_dir}", name], check=True)
    yield pwd.getpwnam(name), data_dir
    subprocess.run(["pkill", "-KILL", "-u", name])
    subprocess.run(["userdel", "--remove", name], capture_output=True)


def test_non_root_platform_warns_and_shares_one_account(dev_account):
    account, data_dir = dev_account
    os.makedirs(data_dir, exist_ok=True)
    os.chown(data_dir, account.pw_uid, account.pw_gid)
    own_platform_drop_ins(data_dir)
    os.chown(data_dir / "config.d", account.pw_uid, account.pw_gid)
    p = Platform(data_dir)
    env = {"HOME": account.pw_dir, "USER": account.pw_name}

    # run `aidc up` as the ordinary account, as its own process (not under runuser, which
    # SIGKILLs its child 2 s after passing on a SIGTERM: the hub would die mid-stop)
    log = open(p.log_path, "ab")
    p.proc = subprocess.Popen(
        [AIDC, "up", "--data-dir", str(data_dir),
         "--port", str(p.port), "--hub-port", str(p.hub_port),
         "--proxy-api-port", str(p.proxy_api_port), "--grpc-port", str(p.grpc_port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True,
        user=account.pw_uid, group=account.pw_gid,
        extra_groups=os.getgrouplist(account.pw_name, account.pw_gid), cwd=account.pw_dir,
    )
    try:
        p.wait_until_up()
        out = p.log()
        assert "shared-account development mode" in out
        assert f"every user's server runs as {account.pw_name}" in out
        shared = (data_dir / "secrets" / "dev-shared-password").read_text().strip()
        assert f"password: {shared}" in out

        # users need no password of their own; everyone signs in with the shared one
        r = subprocess.run(["runuser", "-u", account.pw_name, "--", AIDC, "user", "add", "eve",
                            "--role", "scientist", "--data-dir", str(data_dir)],
                           capture_output=True, text=True, env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        _, page = p.login("eve", shared)
        assert page.url.endswith("/hub/home")
        _, page = p.login("eve", "not-the-shared-password")
        assert page.status_code == 403

        token = subprocess.run(["runuser", "-u", account.pw_name, "--", AIDC, "token", "eve",
                                "--data-dir", str(data_dir)],
                               capture_output=True, text=True, env={**os.environ, **env}).stdout.strip()
        eve = User("eve", shared, "scientist", token)
        p.start_server(eve)
        whoami = execute(p, eve, "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.getcwd())")
        user, cwd = whoami.split()
        assert user == account.pw_name
        assert cwd == str(data_dir / "homes" / "eve")
    finally:
        assert p.stop() == 0, p.log()[-3000:]
    # a clean stop leaves nothing behind in /tmp (the edge's private folder included)
    leftovers = [f for f in os.listdir("/tmp") if os.stat(f"/tmp/{f}").st_uid == account.pw_uid]
    assert leftovers == []
