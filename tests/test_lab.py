"""The JupyterLab panel: the prebuilt extension, the server extension's relay routes
(``/user/NAME/aidc/api/...``) and the "AI Data Center" sidebar in a real browser.

One user of this module's own holds one server with a GPU profile for all the tests
(started once, stopped at the end), and one signed-in Chromium page drives the sidebar.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from aidc.client import Client
from aidc.errors import PlatformError
from aidc.lab.relay import LabRelay
from jobs_helpers import jobs_api, notebook, put, submit, wait
from test_browser import ARGS, ARTIFACTS, CHROMIUM

JUPYTER = str(Path(sys.executable).with_name("jupyter"))


@pytest.fixture(scope="module")
def lab_user(platform):
    """A scientist whose server runs with one GPU (profile ``gpu-1``), and whose own Jupyter
    configuration puts a service that does not exist behind the relay (``gone``)."""
    user = platform.new_user("scientist")
    put(platform, user, ".jupyter/jupyter_server_config.json",
        json.dumps({"LabRelay": {"services": ["resources", "jobs", "gone"]}}))
    put(platform, user, "lab_job.ipynb", notebook("x = 1"))
    r = platform.spawn(user, "gpu-1")
    assert r.status_code in (201, 202), (r.status_code, r.text)
    platform.wait_ready(user)
    yield user
    platform.stop_server(user)


def relay_url(platform, user, path: str) -> str:
    return f"{platform.url}/user/{user.name}/aidc/api/{path}"


def my_server_units(platform, user) -> list[dict]:
    """The GPU units of the user's server, as the resources service tells the user."""
    gpus = platform.resources(user.token)
    held = next(c["units"] for c in gpus["mine"] if c["holder"] == f"server:{user.name}/")
    units = {u["id"]: u for u in gpus["units"]}
    return [units[i] for i in held]


def test_the_prebuilt_extension_is_installed_and_enabled():
    r = subprocess.run([JUPYTER, "labextension", "list"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    listing = r.stdout + r.stderr
    line = next((ln for ln in listing.splitlines() if ln.strip().startswith("aidc ")), "")
    assert "enabled" in line and "OK" in line, listing


def test_relay_answers_as_the_owner_and_only_to_the_owner(platform, lab_user, other_scientist):
    # the owner's token: the resources service's answer, with the owner's own holdings
    r = platform.api(lab_user.token).get(relay_url(platform, lab_user, "resources/gpus"), timeout=60)
    assert r.status_code == 200, r.text
    gpus = r.json()
    mine = [c for c in gpus["mine"] if c["holder"] == f"server:{lab_user.name}/"]
    assert len(mine) == 1 and len(mine[0]["units"]) == 1
    assert [u["id"] for u in my_server_units(platform, lab_user)] == mine[0]["units"]
    assert "quota" in gpus
    # a service's refusal keeps its status and message
    r = platform.api(lab_user.token).get(relay_url(platform, lab_user, "jobs/jobs/no-such-job"),
                                         timeout=60)
    assert r.status_code == 404 and r.json()["message"], r.text
    # a service that is not there: a 502 that says so, not a traceback
    r = platform.api(lab_user.token).get(relay_url(platform, lab_user, "gone/status"), timeout=60)
    assert r.status_code == 502, r.text
    assert "not the aidc API" in r.json()["message"] and "Traceback" not in r.text
    # only the services the panel needs are behind the relay
    r = platform.api(lab_user.token).get(relay_url(platform, lab_user, "models/models"), timeout=60)
    assert r.status_code == 404
    r = platform.api(lab_user.token).get(
        relay_url(platform, lab_user, "resources/%2E%2E/%2E%2E/%2E%2E/hub/api/user"), timeout=60)
    assert r.status_code == 404 and '"scopes"' not in r.text
    # another user's valid token: the server does not exist for them
    r = platform.api(other_scientist.token).get(relay_url(platform, lab_user, "resources/gpus"),
                                                timeout=60, allow_redirects=False)
    assert r.status_code == 404
    # no credentials at all: sent to sign in or refused, never answered
    r = requests.get(relay_url(platform, lab_user, "resources/gpus"), timeout=60,
                     allow_redirects=False)
    assert r.status_code in (302, 401, 403), r.status_code
    assert "units" not in r.text


def test_cookie_writes_need_the_xsrf_token(platform, lab_user):
    session, r = platform.login(lab_user.name, lab_user.password)
    assert r.status_code == 200, r.status_code
    # opening Lab goes through the hub's OAuth and leaves the server's cookies
    r = session.get(f"{platform.url}/user/{lab_user.name}/lab", timeout=120)
    assert r.status_code == 200 and f"/user/{lab_user.name}/lab" in r.url
    url = relay_url(platform, lab_user, "jobs/jobs")
    r = session.post(url, json={}, timeout=60, allow_redirects=False)
    assert r.status_code == 403, (r.status_code, r.text[:300])
    xsrf = session.cookies.get("_xsrf", path=f"/user/{lab_user.name}/")
    assert xsrf
    # with it, the call reaches the jobs service, whose 400 and message come back
    r = session.post(url, json={}, headers={"X-XSRFToken": xsrf}, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["message"]
    # and a job submitted through the relay is the signed-in user's own
    r = session.post(url, json={"path": "lab_job.ipynb"}, headers={"X-XSRFToken": xsrf},
                     timeout=60)
    assert r.status_code == 201, (r.status_code, r.text[:300])
    assert r.json()["owner"] == lab_user.name
    assert wait(platform, lab_user, r.json()["id"])["status"] == "completed"
    # reading with the cookie alone works (GET needs no XSRF token)
    assert session.get(relay_url(platform, lab_user, "resources/queue"), timeout=60).json() == {
        "queue": []}


def wait_in_queue(platform, user, holder: str, timeout: float = 120) -> dict:
    """The user's waiting request of ``holder``, as the relay shows the queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = platform.api(user.token).get(relay_url(platform, user, "resources/queue"),
                                             timeout=60).json()["queue"]
        waiting = [w for w in queue if w["holder"] == holder]
        if waiting:
            return waiting[0]
        time.sleep(0.3)
    raise AssertionError(f"{holder} never waited for GPUs: {queue}")


def test_sidebar_shows_the_gpus_of_my_server(platform, lab_user):
    units = my_server_units(platform, lab_user)
    # a job asking for every whole GPU waits while my server holds one of them
    total = sum(1 for u in platform.resources(lab_user.token)["units"] if u["kind"] == "whole")
    waiting_job = submit(platform, lab_user, "lab_job.ipynb", gpus=total)
    try:
        place = wait_in_queue(platform, lab_user, f"job:{waiting_job['id']}")["position"]
        show_sidebar(platform, lab_user, units, waiting_job["id"], place)
    finally:
        r = jobs_api(platform, lab_user.token, "POST", f"/jobs/{waiting_job['id']}/cancel")
        assert r.status_code in (200, 202), r.text
    # the refresh interval is a setting of Lab's settings editor, 5 s unless changed
    r = platform.api(lab_user.token).get(
        f"{platform.url}/user/{lab_user.name}/lab/api/settings/aidc:plugin", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["schema"]["properties"]["refreshInterval"]["default"] == 5


def show_sidebar(platform, user, units, waiting_job: str, place: int) -> None:
    """Sign in, open the sidebar and check what it shows; screenshot it."""
    lab_user = user
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("console", lambda m: m.type == "error" and "aidc" in m.text
                    and errors.append(m.text))
            page.goto(f"{platform.url}/hub/login?next=/user/{lab_user.name}/lab")
            page.fill("#username_input", lab_user.name)
            page.fill("#password_input", lab_user.password)
            page.click("#login_submit")
            page.wait_for_url(f"**/user/{lab_user.name}/lab**", timeout=120_000)
            tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="aidc-sidebar"]')
            tab.wait_for(timeout=120_000)
            assert tab.get_attribute("title") == "AI Data Center"
            tab.click()
            sidebar = page.locator("#aidc-sidebar")
            table = sidebar.locator("table.aidc-my-gpus")
            table.wait_for(timeout=60_000)
            text = table.inner_text()
            for u in units:
                assert u["visible_id"] in text and u["name"] in text
            # the label says whether the GPUs are simulated, as the service does
            labelled = sidebar.locator(".aidc-my-gpus .aidc-simulated").count()
            assert labelled == sum(1 for u in units if u["simulated"])
            assert "of my quota" in sidebar.inner_text() or "no quota" in sidebar.inner_text()
            assert "Free on the platform" in sidebar.inner_text()
            # my place in the queue while my job waits for its GPUs
            waiting = sidebar.locator(".aidc-queue")
            expect(waiting).to_contain_text(f"job {waiting_job}", timeout=60_000)
            assert waiting.locator("tbody tr").first.inner_text().split("\t")[:2] == [
                f"job {waiting_job}", str(place)]
            # my jobs, newest first, with their status
            jobs = platform.api(lab_user.token).get(
                f"{platform.url}/services/jobs/api/jobs", timeout=60).json()["jobs"]
            if not jobs:  # this test alone: test_cookie_writes_need_the_xsrf_token submits one
                expect(sidebar.locator(".aidc-Jobs")).to_contain_text("No jobs yet")
            rows = sidebar.locator("table.aidc-job-list tbody tr")
            expect(rows).to_have_count(len(jobs), timeout=60_000)
            for row, job in zip(rows.all(), jobs):
                text = row.inner_text()
                assert job["id"] in text and job["path"] in text and job["status"] in text
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "lab-sidebar-resources.png"))
            assert errors == []  # e.g. its settings failed to load
            # a failing service: its section says why, the other keeps its content
            down = {"status": 502, "message": "the jobs service is not answering"}
            page.route("**/aidc/api/jobs/**", lambda route: route.fulfill(
                status=502, content_type="application/json", body=json.dumps(down)))
            tab.click()  # closing and opening the sidebar refreshes it at once
            tab.click()
            expect(sidebar.locator(".aidc-Jobs .aidc-error")).to_have_text(
                f"Error: {down['message']}", timeout=30_000)
            expect(table).to_contain_text(units[0]["visible_id"])
        finally:
            browser.close()


async def test_a_service_that_does_not_answer_in_time_is_a_platform_error():
    """The relay's time-out (``c.LabRelay.timeout``) ends a call to a service that accepts
    the connection and never answers, with a message the panel shows (a 502)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        relay = LabRelay(timeout=0.5)
        relay._client = Client(url=f"http://127.0.0.1:{silent.getsockname()[1]}", token="t",
                               timeout=relay.timeout)
        with pytest.raises(PlatformError, match="the jobs service did not answer within 0.5 s"):
            await relay.call("GET", "jobs", "jobs", None)
