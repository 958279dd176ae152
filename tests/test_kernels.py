"""A scientist's server is a real JupyterLab server running as their own Unix account."""

import pwd

from platform_helpers import execute, unix_name


def test_kernel_runs_as_the_users_own_unix_account(platform, scientist):
    platform.start_server(scientist)
    out = execute(
        platform, scientist,
        "import os, pwd; print(os.getuid(), pwd.getpwuid(os.getuid()).pw_name, os.getcwd(), os.environ['HOME'])",
    )
    uid, name, cwd, home = out.split()
    account = pwd.getpwnam(unix_name(scientist.name, platform.prefix))
    assert int(uid) == account.pw_uid and name == account.pw_name
    assert cwd == home == account.pw_dir


def test_kernel_cannot_read_another_users_home(platform, scientist, other_scientist):
    platform.start_server(scientist)
    other_home = pwd.getpwnam(unix_name(other_scientist.name, platform.prefix)).pw_dir
    out = execute(
        platform, scientist,
        f"import os\ntry:\n    os.listdir({other_home!r}); print('READ')\nexcept PermissionError: print('DENIED')",
    )
    assert out.strip() == "DENIED"


def test_jupyterlab_is_the_default_page(platform, scientist):
    platform.start_server(scientist)
    r = platform.api(scientist.token).get(f"{platform.url}/user/{scientist.name}/lab", timeout=60)
    assert r.status_code == 200
    assert "JupyterLab" in r.text


def test_the_aidc_client_works_inside_a_notebook_without_configuration(platform, scientist):
    platform.start_server(scientist)
    platform.stop_server(scientist)  # pick up the current server environment
    platform.start_server(scientist)
    out = execute(
        platform, scientist,
        "from aidc.client import Client\n"
        "c = Client()\n"
        "me = c.whoami()\n"
        "print(me['name'], me['role'], c.get_json('services/echo/api/whoami')['name'])",
    )
    assert out.split() == [scientist.name, "scientist", scientist.name]
