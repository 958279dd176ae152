"""Revoked tokens, removed users and changed roles take effect everywhere within seconds.

The hub refuses a revoked token at once, but user servers and services cache what the
hub told them about a token (JupyterHub's default: 300 s). aidc sets that cache to
``aidc.hub.config.DEFAULT_AUTH_CACHE_SECONDS`` (5 s) for every user server and every
service; each test here polls until the change is seen and fails if that takes longer
than the cache time plus a margin for this slow, shared machine.
"""

from __future__ import annotations

import time

import requests

from aidc.hub.config import DEFAULT_AUTH_CACHE_SECONDS
from jobs_helpers import home, notebook, put, submit, wait, wait_service

#: the cache time plus what a loaded 2-core machine may add to a few requests
DEADLINE = DEFAULT_AUTH_CACHE_SECONDS + 4


def endpoints(platform, user) -> dict[str, str]:
    """One authenticated read on the user's server and on each platform service."""
    return {
        "server": f"{platform.url}/user/{user.name}/api/contents",
        "jobs": f"{platform.url}/services/jobs/api/jobs",
        "models": f"{platform.url}/services/models/api/models",
        "resources": f"{platform.url}/services/resources/api/gpus",
        "science-only": f"{platform.url}/services/science-only/api/whoami",
    }


def status(url: str, token: str) -> int:
    return requests.get(url, headers={"Authorization": f"token {token}"}, timeout=30,
                        allow_redirects=False).status_code


def wait_refused(urls: dict[str, str], token: str, since: float) -> dict[str, float]:
    """Seconds after ``since`` at which each URL stopped answering 200; fails past DEADLINE."""
    refused: dict[str, float] = {}
    while len(refused) < len(urls):
        for name, url in urls.items():
            if name not in refused and status(url, token) != 200:
                refused[name] = time.monotonic() - since
        elapsed = time.monotonic() - since
        assert elapsed < DEADLINE or len(refused) == len(urls), (
            f"still accepted {elapsed:.1f}s after the change: "
            f"{sorted(set(urls) - set(refused))}")
        time.sleep(0.2)
    return refused


def new_token(platform, user, note: str) -> tuple[str, str]:
    r = platform.hub(user.token, "POST", f"/users/{user.name}/tokens", json={"note": note})
    assert r.status_code == 201, r.text
    return r.json()["token"], r.json()["id"]


def test_a_revoked_token_is_refused_by_the_server_and_every_service(platform, scientist):
    platform.start_server(scientist)
    urls = endpoints(platform, scientist)
    token, token_id = new_token(platform, scientist, "revoke-me")
    for name, url in urls.items():  # accepted (and now cached) everywhere
        assert status(url, token) == 200, name
    r = platform.hub(scientist.token, "DELETE", f"/users/{scientist.name}/tokens/{token_id}")
    assert r.status_code == 204
    refused = wait_refused(urls, token, time.monotonic())
    assert max(refused.values()) < DEADLINE, refused
    # the user's other tokens keep working
    assert all(status(url, scientist.token) == 200 for url in urls.values())


def test_a_removed_user_is_refused_everywhere(platform):
    user = platform.new_user("scientist")
    urls = {k: v for k, v in endpoints(platform, user).items() if k != "server"}
    for name, url in urls.items():
        assert status(url, user.token) == 200, name
    r = platform.cli("user", "remove", user.name)
    assert r.returncode == 0, r.stderr
    platform.users.remove(user)
    wait_refused(urls, user.token, time.monotonic())


def test_a_role_change_takes_effect_within_seconds(platform):
    user = platform.new_user("scientist")
    url = endpoints(platform, user)["science-only"]  # a service only scientists may use
    assert status(url, user.token) == 200
    r = platform.cli("user", "set-role", user.name, "viewer")
    assert r.returncode == 0, r.stderr
    wait_refused({"science-only": url}, user.token, time.monotonic())
    assert status(url, user.token) == 403  # signed in, but not allowed: not a login redirect
    # and back: the role is given back as quickly
    r = platform.cli("user", "set-role", user.name, "scientist")
    assert r.returncode == 0, r.stderr
    since = time.monotonic()
    while status(url, user.token) != 200:
        assert time.monotonic() - since < DEADLINE, "the scientist role was not seen again"
        time.sleep(0.2)


def test_a_jobs_token_stops_working_when_its_attempt_ends(platform, scientist):
    wait_service(platform, scientist.token)
    # the job uses its token on the jobs service (so the service has it cached), keeps it
    put(platform, scientist, "revocation/keep-token.ipynb", notebook(
        "import os, requests\n"
        "token = os.environ['AIDC_TOKEN']\n"
        "r = requests.get(os.environ['AIDC_URL'] + '/services/jobs/api/jobs',\n"
        "                 headers={'Authorization': 'token ' + token}, timeout=30)\n"
        "assert r.status_code == 200, r.text\n"
        "open('job-token.txt', 'w').write(token)"))
    job = submit(platform, scientist, "revocation/keep-token.ipynb")
    done = wait(platform, scientist, job["id"])
    since = time.monotonic()
    assert done["status"] == "completed", done
    token = (home(platform, scientist) / "revocation" / "job-token.txt").read_text().strip()
    assert token and token != scientist.token
    jobs_url = endpoints(platform, scientist)["jobs"]
    wait_refused({"jobs": jobs_url}, token, since)
