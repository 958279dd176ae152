"""Issue 12, items 7, 15 and 18: private rotated logs, a quiet log, services a browser can open."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time

import requests

from aidc.paths import PrivateFileHandler


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- item 7: log files are 0600, one per service, rotated -----------------------------------

def test_log_files_are_private_and_each_service_has_its_own(platform):
    logs = platform.data_dir / "logs"
    assert _mode(logs / "hub.log") == 0o600
    for name in ("jobs", "models", "resources"):
        path = logs / f"{name}.log"
        assert path.exists(), sorted(p.name for p in logs.iterdir())
        assert _mode(path) == 0o600, (name, oct(_mode(path)))
    # what a service logs goes to its file (and, as before, to standard output)
    marker = f"no-such-path-{time.monotonic_ns()}"
    requests.get(f"{platform.url}/services/resources/{marker}", timeout=30)
    assert marker in _wait_logged(logs / "resources.log", 0, marker)
    assert "[INFO" in _wait_logged(logs / "jobs.log", 0, "[INFO")
    assert marker in platform.log()


def _wait_logged(path, start: int, marker: str, timeout: float = 10) -> str:
    """The text of ``path`` after byte ``start``, once ``marker`` is in it (or the timeout)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with open(path) as f:
            f.seek(start)
            text = f.read()
        if marker in text:
            break
        time.sleep(0.1)
    return text


def test_private_file_handler_rotates_and_tightens_an_old_file(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("from an older version\n")
    path.chmod(0o644)
    handler = PrivateFileHandler(str(path), maxBytes=200, backupCount=2)
    assert _mode(path) == 0o600
    log = logging.getLogger("test-private-file-handler")
    log.propagate = False
    log.addHandler(handler)
    try:
        for i in range(20):
            log.warning("line %d with some words to fill the file", i)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log", "x.log.1", "x.log.2"]
    assert all(_mode(p) == 0o600 for p in tmp_path.iterdir())


# -- item 15: nothing at INFO for health checks, known warnings gone ------------------------------

def test_quiet_platform_logs_no_health_checks_or_known_warnings(platform):
    models_log = platform.data_dir / "logs" / "models.log"
    start = models_log.stat().st_size if models_log.exists() else 0
    # what JupyterHub's service check sends: a plain GET of the root, no cookie, no Accept
    for name in ("models", "resources", "jobs"):
        r = requests.get(f"{platform.url}/services/{name}/", timeout=30, allow_redirects=False)
        assert r.status_code == 200, (name, r.status_code, r.text[:300])
    marker = f"no-such-path-{time.monotonic_ns()}"
    requests.get(f"{platform.url}/services/models/{marker}", timeout=30)  # a 404: logged
    text = _wait_logged(models_log, start, marker)
    assert marker in text, text[-2000:]
    assert "GET /services/models/ " not in text, text[-2000:]
    hub_output = platform.log() + (platform.data_dir / "logs" / "hub.log").read_text()
    # aidc narrows the user role on purpose: JupyterHub's warning about it is a debug line
    warned = [line for line in hub_output.splitlines()
              if "does not include 'self'" in line and not line.startswith("[D")]
    assert not warned, warned


def test_profile_user_option_is_handled_not_warned_about(caplog):
    from aidc.hub.spawner import SharedAccountSpawner, SystemUserSpawner

    for cls in (SharedAccountSpawner, SystemUserSpawner):
        _check_user_options_handled(cls, caplog)


def _check_user_options_handled(cls, caplog):
    caplog.clear()
    spawner = cls()
    spawner.log = logging.getLogger("test-spawner")
    with caplog.at_level(logging.DEBUG, logger="test-spawner"):
        asyncio.run(spawner._run_apply_user_options({"profile": "cpu"}))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# -- item 18: root pages, browsers signed in through OAuth, API clients get 401 --------------------

def test_services_answer_browsers_with_a_page_and_oauth(platform):
    user = platform.new_user("scientist", with_token=False)
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    # a browser straight to an API path is signed in through OAuth, not refused
    session, _ = platform.login(user.name, user.password)
    r = session.get(f"{platform.url}/services/jobs/api/jobs", headers=browser, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert any("/hub/api/oauth2/authorize" in h.url for h in r.history)
    assert isinstance(r.json(), (list, dict))
    # each service's root is a small page naming it (jobs links its API document)
    for name in ("jobs", "models", "resources"):
        r = session.get(f"{platform.url}/services/{name}/", headers=browser, timeout=60)
        assert r.status_code == 200, (name, r.status_code, r.text[:500])
        assert r.headers["Content-Type"].startswith("text/html")
        assert f"aidc {name}" in r.text and user.name in r.text
    r = session.get(f"{platform.url}/services/jobs/", headers=browser, timeout=60)
    assert 'href="api/openapi.json"' in r.text
    r = session.get(f"{platform.url}/services/models/", headers=browser, timeout=60)
    assert "registry API" in r.text  # the service's own description
    # writes with the cookie alone (no XSRF token) are refused
    r = session.post(f"{platform.url}/services/jobs/api/jobs", json={}, headers=browser,
                     timeout=60, allow_redirects=False)
    assert r.status_code in (401, 403), (r.status_code, r.text[:300])
    # API clients without a token still get a JSON 401
    r = requests.get(f"{platform.url}/services/jobs/api/jobs",
                     headers={"Accept": "application/json"}, timeout=30, allow_redirects=False)
    assert r.status_code == 401 and r.json()["status"] == 401
    r = requests.get(f"{platform.url}/services/jobs/api/jobs", timeout=30, allow_redirects=False)
    assert r.status_code == 401
