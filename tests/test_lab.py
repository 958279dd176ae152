"""The JupyterLab panel: the prebuilt extension, the server extension's relay routes
(``/user/NAME/aidc/api/...``, the jobs' event stream too, ``/user/NAME/aidc/v2/models/...``)
and the "AI Data Center" sidebar in a real browser: resources, running the open notebook
as a job, sweeps and schedules, and models (registry, deploy, try it, canary, roll back,
undeploy, and the same actions from the command palette); the widgets rendered and acting
in a notebook opened in Lab; the sidebar carrying on after the page's token is revoked.

One user of this module's own holds one server with a GPU profile for all the tests
(started once, stopped at the end), and one signed-in Chromium page (``lab_page``)
drives the sidebar for every browser test.
"""

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError, expect, sync_playwright

from aidc.client import Client
from aidc.errors import PlatformError
from aidc.lab.relay import LabRelay
from jobs_helpers import home, jobs_api, notebook, put, submit, wait
from test_browser import ARGS, ARTIFACTS, CHROMIUM

JUPYTER = str(Path(sys.executable).with_name("jupyter"))


@pytest.fixture(scope="module")
def lab_user(platform):
    """A scientist whose server runs with one GPU (profile ``gpu-1``), and whose own Jupyter
    configuration puts a service that does not exist behind the relay (``gone``)."""
    user = platform.new_user("scientist")
    put(platform, user, ".jupyter/jupyter_server_config.json",
        json.dumps({"LabRelay": {"services": ["resources", "jobs", "models", "gone"]}}))
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


def test_the_extensions_hashed_files_are_cached_behind_the_hub(platform, lab_user):
    """JupyterLab marks labextensions' ``static/`` immutable by a URL without the server's
    base URL; aidc.lab.assets adds it, so a reload does not revalidate each file (a 304
    round trip each). The sidebar's code is a chunk of its own, loaded when it opens."""
    build = json.loads((Path(sys.prefix) / "share/jupyter/labextensions/aidc/package.json")
                       .read_text())["jupyterlab"]["_build"]
    assert "style" not in build  # no style module loaded while Lab starts: the chunk has it
    base = f"{platform.url}/user/{lab_user.name}/lab/extensions"
    api = platform.api(lab_user.token)
    for name, path in [("aidc", build["load"]),
                       ("@jupyter-widgets/jupyterlab-manager", None)]:
        if path is None:
            info = json.loads((Path(sys.prefix) / "share/jupyter/labextensions" / name /
                               "package.json").read_text())
            path = info["jupyterlab"]["_build"]["load"]
        r = api.get(f"{base}/{name}/{path}", timeout=60)
        assert r.status_code == 200, (name, r.status_code)
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable", name
    # what is not under static/ keeps JupyterLab's revalidation
    r = api.get(f"{base}/aidc/package.json", timeout=60)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-cache"


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
    r = platform.api(lab_user.token).get(relay_url(platform, lab_user, "data/datasets"), timeout=60)
    assert r.status_code == 404
    r = platform.api(lab_user.token).get(
        relay_url(platform, lab_user, "resources/%2E%2E/%2E%2E/%2E%2E/hub/api/user"), timeout=60)
    assert r.status_code == 404 and '"scopes"' not in r.text
    # the models service's v2 inference ("try it"): its refusal, as the owner sees it
    r = platform.api(lab_user.token).post(
        f"{platform.url}/user/{lab_user.name}/aidc/v2/models/no-such-model/infer",
        json={"inputs": []}, timeout=60)
    assert r.status_code == 404 and "no-such-model" in r.json()["message"], r.text
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
    # so do the Models section's changes and "try it"
    r = session.put(relay_url(platform, lab_user, "models/models/m/deployment"), json={},
                    timeout=60, allow_redirects=False)
    assert r.status_code == 403, (r.status_code, r.text[:300])
    r = session.post(f"{platform.url}/user/{lab_user.name}/aidc/v2/models/m/infer", json={},
                     timeout=60, allow_redirects=False)
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


def test_sidebar_shows_the_gpus_of_my_server(platform, lab_user, lab_page):
    units = my_server_units(platform, lab_user)
    # a job asking for every whole GPU waits while my server holds one of them
    total = sum(1 for u in platform.resources(lab_user.token)["units"] if u["kind"] == "whole")
    waiting_job = submit(platform, lab_user, "lab_job.ipynb", gpus=total)
    try:
        place = wait_in_queue(platform, lab_user, f"job:{waiting_job['id']}")["position"]
        show_sidebar(platform, lab_user, units, waiting_job["id"], place, lab_page)
    finally:
        r = jobs_api(platform, lab_user.token, "POST", f"/jobs/{waiting_job['id']}/cancel")
        assert r.status_code in (200, 202), r.text
    # the refresh interval and a job's default GPUs are settings of Lab's settings editor
    r = platform.api(lab_user.token).get(
        f"{platform.url}/user/{lab_user.name}/lab/api/settings/aidc:plugin", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["schema"]["properties"]["refreshInterval"]["default"] == 5
    assert r.json()["schema"]["properties"]["defaultGPUs"]["default"] == 0


@pytest.fixture(scope="module")
def lab_page(platform, lab_user):
    """One headless Chromium page, signed in as ``lab_user`` with Lab open, shared by the
    browser tests of this module; console errors that mention aidc are collected in
    ``page.aidc_errors``."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("console", lambda m: m.type == "error" and "aidc" in m.text
                    and errors.append(m.text))
            page.aidc_errors = errors
            page.goto(f"{platform.url}/hub/login?next=/user/{lab_user.name}/lab")
            page.fill("#username_input", lab_user.name)
            page.fill("#password_input", lab_user.password)
            page.click("#login_submit")
            page.wait_for_url(f"**/user/{lab_user.name}/lab**", timeout=120_000)
            yield page
        finally:
            browser.close()


def sidebar_tab(page):
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="aidc-sidebar"]')
    tab.wait_for(timeout=120_000)
    return tab


def show_sidebar(platform, user, units, waiting_job: str, place: int, page) -> None:
    """Open the sidebar and check what it shows; screenshot it."""
    lab_user = user
    errors = page.aidc_errors
    tab = sidebar_tab(page)
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
    try:
        tab.click()  # closing and opening the sidebar refreshes it at once
        tab.click()
        expect(sidebar.locator(".aidc-Jobs .aidc-content .aidc-error")).to_have_text(
            f"Error: {down['message']}", timeout=30_000)
        expect(table).to_contain_text(units[0]["visible_id"])
    finally:
        page.unroute("**/aidc/api/jobs/**")


#: a job that waits in its third code cell until the file named by ``gate`` exists (the
#: test creates it), so its progress is seen mid-run without any timing
GATED = notebook(
    "import os, time\nwhile not os.path.exists(gate):\n    time.sleep(0.1)",
    "import aidc\nprint(f'epochs={epochs} label={label}')\naidc.record('score', epochs * 2)",
    parameters="epochs = 2\nlabel = 'base'\ngate = 'lab_gate'")
#: the gate cell's index in the executed notebook: markdown, parameters, the injected
#: parameters (papermill adds it), gate, print
GATE_CELL, GATED_CELLS = 3, 5


def sse_events(response):
    """The ``data`` of each server-sent event of a streamed ``requests`` response."""
    data: list[str] = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield json.loads("\n".join(data))
            data = []


def test_relay_streams_a_jobs_events_live_as_the_owner(platform, lab_user, other_scientist):
    put(platform, lab_user, "lab_gated.ipynb", GATED)
    api = platform.api(lab_user.token)
    r = api.post(relay_url(platform, lab_user, "jobs/jobs"), timeout=60,
                 json={"path": "lab_gated.ipynb", "parameters": {"gate": "lab_gate_never"}})
    assert r.status_code == 201, r.text
    job = r.json()
    url = relay_url(platform, lab_user, f"jobs/jobs/{job['id']}/events")
    sse = {"Accept": "text/event-stream"}
    seen = []
    with api.get(url, headers=sse, stream=True, timeout=120) as stream:
        assert stream.status_code == 200, stream.text
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(stream)
        for event in events:  # live: the gate cell starts while the job still runs
            seen.append(event)
            if event["type"] == "cell_start" and event["cell"] == GATE_CELL:
                break
        assert [e["cell"] for e in seen if e["type"] == "cell_start"] == list(range(GATE_CELL + 1))
        assert wait(platform, lab_user, job["id"], until=lambda j: True)["status"] == "running"
        # cancelling through the relay ends the stream (the job is final)
        r = api.post(relay_url(platform, lab_user, f"jobs/jobs/{job['id']}/cancel"), timeout=60)
        assert r.status_code == 202, r.text
        seen.extend(events)
    assert wait(platform, lab_user, job["id"])["status"] == "cancelled"
    # resuming from an event (Last-Event-ID, as a reconnecting panel does) sends only later ones
    gate_seq = next(e["seq"] for e in seen if e["type"] == "cell_start" and e["cell"] == GATE_CELL)
    with api.get(url, headers={**sse, "Last-Event-ID": str(gate_seq)}, stream=True,
                 timeout=120) as stream:
        later = list(sse_events(stream))
    assert [e["seq"] for e in later] == [e["seq"] for e in seen if e["seq"] > gate_seq]
    # a stream the service refuses keeps its status and message
    r = api.get(relay_url(platform, lab_user, "jobs/jobs/no-such-job/events"), headers=sse,
                timeout=60)
    assert r.status_code == 404 and "no-such-job" in r.json()["message"], r.text
    # a service that is not there: a 502 that says so, as for any other call
    r = api.get(relay_url(platform, lab_user, "gone/events"), headers=sse, timeout=60)
    assert r.status_code == 502 and "not the aidc API" in r.json()["message"], r.text
    # another user, or nobody: no stream
    r = platform.api(other_scientist.token).get(url, headers=sse, timeout=60,
                                                allow_redirects=False)
    assert r.status_code == 404
    r = requests.get(url, headers=sse, timeout=60, allow_redirects=False)
    assert r.status_code in (302, 401, 403) and "cell_start" not in r.text


def test_run_the_open_notebook_as_a_job_from_lab(platform, lab_user, lab_page):
    """The notebook's toolbar button opens the form made from its parameters cell; a value
    of the wrong type is marked and not sent; a changed value runs, its cells progress live,
    and its executed notebook opens in Lab."""
    page = lab_page
    put(platform, lab_user, "lab_params.ipynb", GATED)
    posts = []

    def on_request(request):  # Jupyter's requests end with a cache-busting query
        if request.method == "POST" and request.url.split("?")[0].endswith("/aidc/api/jobs/jobs"):
            posts.append(request.url)

    page.on("request", on_request)
    try:
        run_as_job(platform, lab_user, page, posts)
    finally:
        page.remove_listener("request", on_request)


def current_tab(page, name: str) -> None:
    """Wait until the notebook ``name`` is the main area's current tab."""
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(
        name, timeout=120_000)


def palette(page, text: str, until, timeout: float = 90) -> None:
    """Run the command palette's first item matching ``text``, until ``until`` (a locator)
    shows. The modal palette closes when it loses the focus, which a notebook still loading
    may take, even between typing and choosing (then the command never ran): the item is
    clicked, not chosen with Enter, and the whole sequence is repeated until ``until`` is
    visible."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            page.keyboard.press("Control+Shift+C")
            page.locator(".lm-CommandPalette-input").fill(text, timeout=5_000)
            item = page.locator(".lm-CommandPalette-item.lm-mod-active")
            expect(item).to_contain_text(text, timeout=5_000)
            item.click(timeout=5_000)
            expect(until).to_be_visible(timeout=15_000)
            return
        except (PlaywrightTimeoutError, AssertionError):
            if time.monotonic() > deadline:
                raise


def run_as_job(platform, user, page, posts) -> None:
    # a new job's GPUs start from my setting (Settings → AI Data Center), read as Lab loads
    r = platform.api(user.token).put(
        f"{platform.url}/user/{user.name}/lab/api/settings/aidc:plugin",
        json={"raw": json.dumps({"defaultGPUs": 2})}, timeout=60)
    assert r.status_code == 204, r.text
    page.goto(f"{platform.url}/user/{user.name}/lab/tree/lab_params.ipynb")
    current_tab(page, "lab_params.ipynb")
    sidebar = page.locator("#aidc-sidebar")
    form = sidebar.locator("form.aidc-job-form")
    epochs = form.locator('input[data-param="epochs"]')
    palette(page, "Run Notebook as Job", until=epochs)
    expect(epochs).to_have_value("2", timeout=60_000)
    expect(form.locator('input[data-param="label"]')).to_have_value("base")
    expect(form.locator('input[name="gpus"]')).to_have_value("2")
    # a value of the wrong type is marked and nothing is sent
    epochs.fill("two")
    expect(epochs).to_have_class(re.compile("aidc-invalid"))
    expect(form.locator(".aidc-field-error").first).to_contain_text("epochs expects an integer")
    form.locator(".aidc-submit").click()
    expect(form.locator(".aidc-form-message")).to_have_text(
        "Fix the marked fields: nothing was submitted.")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-run-as-job-invalid.png"))
    assert posts == []
    # more GPUs than the platform has: the service's own message
    epochs.fill("5")
    expect(epochs).not_to_have_class(re.compile("aidc-invalid"))
    form.locator('input[data-param="label"]').fill("changed")
    form.locator('input[data-param="gate"]').fill("lab_gate_browser")
    form.locator('input[name="gpus"]').fill("99")
    form.locator(".aidc-submit").click()
    expect(form.locator(".aidc-form-message")).to_contain_text("asked for 99 GPUs",
                                                               timeout=60_000)
    assert len(posts) == 1
    form.locator('input[name="gpus"]').fill("0")
    form.locator(".aidc-submit").click()
    # the job runs; its cells progress live, the gate cell running, those before it done
    detail = sidebar.locator(".aidc-job-detail")
    progress = detail.locator(".aidc-progress")
    expect(progress).to_have_text(f"cell {GATE_CELL + 1} of {GATED_CELLS} running",
                                  timeout=120_000)
    expect(form).to_have_count(0)
    job_id = detail.locator("h4 .aidc-note").inner_text()
    job = jobs_api(platform, user.token, "GET", f"/jobs/{job_id}").json()
    assert job["parameters"] == {"epochs": 5, "label": "changed", "gate": "lab_gate_browser"}
    assert job["status"] == "running" and job["path"] == "lab_params.ipynb"
    expect(detail.locator(".aidc-cell-done")).to_have_count(GATE_CELL)
    expect(detail.locator(".aidc-cell-running")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "lab-job-progress.png"))
    put(platform, user, "lab_gate_browser", "")
    expect(progress).to_have_text(f"{GATED_CELLS} of {GATED_CELLS} cells done", timeout=120_000)
    expect(detail.locator(".aidc-status-completed")).to_be_visible(timeout=60_000)
    expect(detail.locator("table.aidc-metrics")).to_contain_text("score")
    expect(detail.locator("table.aidc-metrics")).to_contain_text("10")
    expect(sidebar.locator(f'tr.aidc-job-row[data-job="{job_id}"]')).to_contain_text(
        "completed", timeout=60_000)
    # its logs, and its executed notebook opened in Lab
    detail.locator(".aidc-logs-button").click()
    expect(detail.locator("pre.aidc-logs")).to_contain_text("epochs=5 label=changed",
                                                            timeout=60_000)
    detail.locator(".aidc-output-button").click()
    output_tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab",
                              has_text=f"lab_params-{job_id}.ipynb")
    expect(output_tab).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output",
                        has_text="epochs=5 label=changed")).to_be_visible(timeout=60_000)
    assert (home(platform, user) / "job-outputs" / f"lab_params-{job_id}.ipynb").exists()
    page.screenshot(path=str(ARTIFACTS / "lab-job-output.png"))
    # re-run: the form again, with the values it ran with; run with another, then cancel it
    detail.locator(".aidc-rerun-button").click()
    expect(epochs).to_have_value("5", timeout=60_000)
    expect(form.locator('input[data-param="label"]')).to_have_value("changed")
    expect(form.locator('input[name="gpus"]')).to_have_value("0")
    form.locator('input[data-param="gate"]').fill("lab_gate_never")
    form.locator(".aidc-submit").click()
    expect(detail.locator("h4 .aidc-note")).not_to_have_text(job_id, timeout=60_000)
    expect(progress).to_have_text(f"cell {GATE_CELL + 1} of {GATED_CELLS} running",
                                  timeout=120_000)
    rerun_id = detail.locator("h4 .aidc-note").inner_text()
    detail.locator(".aidc-cancel-button").click()
    expect(detail.locator(".aidc-status-cancelled")).to_be_visible(timeout=60_000)
    rerun = jobs_api(platform, user.token, "GET", f"/jobs/{rerun_id}").json()
    assert rerun["status"] == "cancelled"
    assert rerun["parameters"] == {"epochs": 5, "label": "changed", "gate": "lab_gate_never"}
    assert len(posts) == 3
    assert page.aidc_errors == []


def test_models_section_shows_versions_aliases_and_lineage(platform, lab_user, lab_page,
                                                           tmp_path):
    """Two versions of a model registered from a job: the Models section lists them newest
    first with their alias and metrics, and the lineage opens the job and its notebook
    (which has no parameters cell: its "Run as job" form says so)."""
    from test_models import models_api, scale_onnx  # torch: only where models are tested

    job = submit(platform, lab_user, "lab_job.ipynb")
    assert wait(platform, lab_user, job["id"])["status"] == "completed"
    raw = scale_onnx(tmp_path / "m.onnx").read_bytes()
    name = f"lab-{lab_user.name}"
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                 "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}
    for accuracy in (0.75, 0.875):
        metadata = {"format": "onnx", "filename": "m.onnx", "signature": signature,
                    "metrics": {"accuracy": accuracy}, "lineage": {"job": job["id"]}}
        r = models_api(platform, lab_user.token, "POST", f"/models/{name}/versions",
                       data={"metadata": json.dumps(metadata)}, files={"artifact": ("m.onnx", raw)})
        assert r.status_code == 201, r.text
    r = models_api(platform, lab_user.token, "PUT", f"/models/{name}/aliases/prod",
                   json={"version": 1})
    assert r.status_code == 200, r.text

    page = lab_page
    sidebar = page.locator("#aidc-sidebar")
    if not sidebar.is_visible():
        sidebar_tab(page).click()
    model = sidebar.locator(f'.aidc-Models .aidc-model[data-model="{name}"]')
    expect(model).to_be_visible(timeout=60_000)  # the next refresh (5 s)
    expect(model.locator("h4")).to_contain_text(f"{lab_user.name} · private")
    rows = model.locator("ul.aidc-versions > li")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("v2")
    expect(rows.nth(0)).to_contain_text("accuracy=0.875")
    expect(rows.nth(1).locator(".aidc-alias")).to_have_text("prod")
    expect(rows.nth(1)).to_contain_text("accuracy=0.75")
    expect(rows.nth(1).locator(".aidc-lineage-notebook")).to_have_text("lab_job.ipynb")
    model.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-models.png"))
    # the lineage: the job followed in the Jobs section, the notebook opened in Lab
    rows.nth(1).locator(".aidc-lineage-job").click()
    expect(sidebar.locator(".aidc-job-detail h4 .aidc-note")).to_have_text(job["id"],
                                                                          timeout=60_000)
    expect(sidebar.locator(".aidc-job-detail .aidc-status-completed")).to_be_visible()
    rows.nth(1).locator(".aidc-lineage-notebook").click()
    current_tab(page, "lab_job.ipynb")
    # that notebook has no parameters cell: its "Run as job" form says why there are none
    page.locator(".jp-NotebookPanel-toolbar .aidc-run-as-job:visible").click()
    form = sidebar.locator("form.aidc-job-form")
    expect(form.locator("h4")).to_have_text("Run lab_job.ipynb as a job", timeout=60_000)
    expect(form.locator(".aidc-no-parameters")).to_contain_text("no cell tagged")
    assert form.locator("input[data-param]").count() == 0
    assert page.aidc_errors == []
    # the same model managed from the panel: deployed, called, canaried, rolled back, undeployed
    changes = []

    def on_request(request):  # the panel's changes to the model, as they leave the browser
        if request.method != "GET" and f"/aidc/api/models/models/{name}/" in request.url:
            changes.append((request.method, request.url.split("?")[0].split(f"/{name}/")[1]))

    page.on("request", on_request)
    try:
        manage_model(platform, lab_user, page, name, changes)
    finally:
        page.remove_listener("request", on_request)
        models_api(platform, lab_user.token, "DELETE", f"/models/{name}/deployment")


def confirm(page, title: str, accept: bool = True) -> None:
    """Answer the confirmation dialog titled ``title``."""
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".jp-Dialog-header")).to_have_text(title, timeout=30_000)
    dialog.locator(".jp-mod-accept" if accept else ".jp-mod-reject").click()
    expect(dialog).to_have_count(0)


def figure(state, name: str):
    """The cells of one row (``requests``, ``p50``, ...) of a deployment's live state."""
    return state.locator(f'tr[data-figure="{name}"] td')


def manage_model(platform, user, page, name: str, changes: list) -> None:
    """Deploy v1 of ``name`` (two versions of y = 3x) from the Models section, try it with a
    right and a wrong body, set an alias and a canary (a weight out of range first), roll
    back and undeploy; every change asks first, and the service's refusals are shown."""
    from test_models import models_api

    sidebar = page.locator("#aidc-sidebar")
    sidebar.locator(f'.aidc-model[data-model="{name}"] .aidc-manage').click()
    panel = sidebar.locator(f'.aidc-model-detail[data-model="{name}"]')
    message = panel.locator(".aidc-model-message")
    state = panel.locator(".aidc-deployment")
    expect(state).to_have_text("Not deployed.", timeout=30_000)
    # an alias the service refuses: its message; then one it takes
    panel.locator(".aidc-alias-name").fill("latest")
    panel.locator(".aidc-alias-version").select_option("2")
    panel.locator(".aidc-alias-button").click()
    confirm(page, f"Point {name}@latest at v2?")
    expect(message).to_contain_text("invalid alias 'latest'", timeout=30_000)
    expect(message).to_have_class(re.compile("aidc-error"))
    panel.locator(".aidc-alias-name").fill("staging")
    panel.locator(".aidc-alias-button").click()
    confirm(page, f"Point {name}@staging at v2?")
    expect(message).to_have_text("staging now points at v2.", timeout=30_000)
    v2_row = sidebar.locator(f'.aidc-model[data-model="{name}"] li[data-version="2"]')
    expect(v2_row.locator(".aidc-alias")).to_have_text("staging", timeout=30_000)
    # deploy v1: cancelled first (nothing sent), then confirmed
    panel.locator(".aidc-deploy-version").select_option("1")
    panel.locator(".aidc-deploy-button").click()
    confirm(page, f"Deploy {name} v1?", accept=False)
    assert ("PUT", "deployment") not in changes
    panel.locator(".aidc-deploy-button").click()
    confirm(page, f"Deploy {name} v1?")
    expect(message).to_have_text("Deployed v1: 1/1 replica(s) ready.", timeout=300_000)
    served = state.locator("thead th")
    expect(served).to_have_text(["", "v1 primary"])
    expect(figure(state, "replicas")).to_have_text(["replicas", "1/1 ready"])
    expect(panel.locator(".aidc-promote-button")).to_be_hidden()  # no canary to promote
    # try it: the example built from the signature, then a body of the wrong shape
    try_body, status = panel.locator(".aidc-try-body"), panel.locator(".aidc-try-status")
    expect(panel.locator(".aidc-try-signature")).to_have_text("v1 takes x FP32 [-1,2] → y FP32 [-1,2]")
    assert json.loads(try_body.input_value())["inputs"][0]["shape"] == [1, 2]
    panel.locator(".aidc-try-send").click()
    expect(status).to_contain_text("Answered from v1 in ", timeout=60_000)
    assert re.search(r"in \d+(\.\d+)? ms$", status.inner_text())
    assert json.loads(panel.locator(".aidc-try-response").inner_text())[0]["data"] == [3, 6]
    try_body.fill(json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                          "data": [1, 2, 3]}]}))
    panel.locator(".aidc-try-send").click()
    expect(status).to_contain_text("Refused (400 after", timeout=60_000)
    expect(status).to_contain_text("input 'x' has shape [1, 3] but the model expects [-1, 2]; "
                                   "expected inputs: x FP32 [-1,2]")
    status.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-model-try-it.png"))
    # the live state counts both requests (the wrong one as an error) with their latency
    expect(figure(state, "requests")).to_have_text(["requests", "2"], timeout=30_000)
    expect(figure(state, "errors")).to_have_text(["errors", "1"])
    latency = re.compile(r"^\d+\.\d+ ms$")
    expect(figure(state, "p50")).to_have_text(["p50", latency])
    expect(figure(state, "p99")).to_have_text(["p99", latency])
    # a canary weight out of range is refused here, before any call; then v2 at half
    panel.locator(".aidc-canary-version").select_option("2")
    weight = panel.locator(".aidc-canary-weight")
    weight.fill("1.5")
    expect(weight).to_have_class(re.compile("aidc-invalid"))
    panel.locator(".aidc-canary-button").click()
    expect(message).to_have_text("the canary weight must be from 0 to 1 (the share of requests "
                                 "the canary gets), not 1.5: nothing was sent.")
    expect(page.locator(".jp-Dialog")).to_have_count(0)
    weight.fill("0.5")
    expect(weight).not_to_have_class(re.compile("aidc-invalid"))
    panel.locator(".aidc-canary-button").click()
    confirm(page, f"Canary v2 of {name}?")
    expect(message).to_have_text("Canary v2 gets 50% of requests.", timeout=300_000)
    expect(served).to_have_text(["", "v1 primary", "v2 canary"], timeout=30_000)
    expect(figure(state, "traffic")).to_have_text(["traffic", "50%", "50%"])
    expect(figure(state, "replicas")).to_have_text(["replicas", "1/1 ready", "1/1 ready"])
    expect(panel.locator(".aidc-promote-button")).to_be_visible()
    state.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "lab-model-deployment.png"))
    dep = models_api(platform, user.token, "GET", f"/models/{name}/deployment").json()
    assert (dep["version"], dep["canary_version"], dep["canary_weight"]) == (1, 2, 0.5)
    # roll back drops the canary; a second one has nothing to go back to: the service says so
    panel.locator(".aidc-rollback-button").click()
    confirm(page, f"Roll back {name}?")
    expect(message).to_have_text("Now serving v1: 1/1 replica(s) ready.", timeout=300_000)
    expect(served).to_have_text(["", "v1 primary"], timeout=30_000)
    panel.locator(".aidc-rollback-button").click()
    confirm(page, f"Roll back {name}?")
    expect(message).to_have_text(f"Error: model '{name}' has no earlier deployed version to "
                                 "roll back to", timeout=60_000)
    # undeploy: the endpoint is gone and the section says so
    panel.locator(".aidc-undeploy-button").click()
    confirm(page, f"Undeploy {name}?")
    expect(message).to_have_text(f"{name} is no longer deployed.", timeout=120_000)
    expect(state).to_have_text("Not deployed.", timeout=30_000)
    assert models_api(platform, user.token, "GET", f"/models/{name}/deployment").status_code == 404
    assert changes == [("PUT", "aliases/latest"), ("PUT", "aliases/staging"), ("PUT", "deployment"),
                       ("PUT", "deployment"), ("POST", "deployment/rollback"),
                       ("POST", "deployment/rollback"), ("DELETE", "deployment")]
    del changes[:]
    model_actions_from_the_palette(platform, user, page, name, changes)
    assert page.aidc_errors == []


#: the command palette's entries of the Models section's actions
MODEL_COMMANDS = ["Deploy Model…", "Set Model Alias…", "Set Model Canary…",
                  "Promote Model Canary…", "Roll Back Model…", "Undeploy Model…", "Try Model…"]


def model_actions_from_the_palette(platform, user, page, name: str, changes: list) -> None:
    """Every model action is in the command palette; with no model open a command asks
    which one, opens it and asks before changing anything (cancelled: nothing sent); with
    the model open, "Set Model Alias" sets the alias its fields show."""
    from test_models import models_api

    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("AI Data Center")
    labels = page.locator(".lm-CommandPalette-item .lm-CommandPalette-itemLabel")
    expect(labels.first).to_be_visible(timeout=15_000)
    shown = [text.removeprefix("AI Data Center: ") for text in labels.all_inner_texts()]
    assert set(MODEL_COMMANDS) <= set(shown), shown
    page.keyboard.press("Escape")
    sidebar = page.locator("#aidc-sidebar")
    panel = sidebar.locator(f'.aidc-model-detail[data-model="{name}"]')
    panel.locator(".aidc-manage-close").click()
    expect(panel).to_have_count(0)
    chooser = page.locator(".jp-Dialog")
    palette(page, "AI Data Center: Deploy Model", until=chooser)
    expect(chooser.locator(".jp-Dialog-header")).to_have_text("Deploy Model: which model?")
    chooser.locator("select").select_option(name)
    chooser.locator(".jp-mod-accept").click()
    confirm(page, f"Deploy {name} v2?", accept=False)
    expect(panel).to_be_visible()
    assert changes == []
    panel.locator(".aidc-alias-name").fill("palette")
    panel.locator(".aidc-alias-version").select_option("1")
    palette(page, "AI Data Center: Set Model Alias", until=chooser)
    confirm(page, f"Point {name}@palette at v1?")
    expect(panel.locator(".aidc-model-message")).to_have_text("palette now points at v1.",
                                                             timeout=30_000)
    assert changes == [("PUT", "aliases/palette")]
    assert models_api(platform, user.token, "GET", f"/models/{name}").json()["aliases"][
        "palette"] == 1


def test_sweeps_and_schedules_in_the_jobs_section(platform, lab_user, lab_page):
    """A sweep's runs side by side with the best one marked; a schedule created from a cron
    expression and a time zone (an unknown zone refused with the service's message),
    paused, resumed and deleted after a confirmation."""
    page = lab_page
    put(platform, lab_user, "lab_sweep.ipynb",
        notebook("import aidc\naidc.record('score', k * 10)", parameters="k = 1"))
    r = jobs_api(platform, lab_user.token, "POST", "/sweeps",
                 json={"path": "lab_sweep.ipynb", "grid": {"k": [1, 2]}, "metric": "score"})
    assert r.status_code == 201, r.text
    sweep = r.json()
    try:
        sweep_and_schedule(platform, lab_user, page, sweep)
    finally:  # the session platform is left without a schedule of this user's
        for left in jobs_api(platform, lab_user.token, "GET", "/schedules").json()["schedules"]:
            jobs_api(platform, lab_user.token, "DELETE", f"/schedules/{left['id']}")


def sweep_and_schedule(platform, lab_user, page, sweep: dict) -> None:
    """The schedule's life from the Jobs section while ``sweep`` runs, then its runs."""
    sidebar = page.locator("#aidc-sidebar")
    if not sidebar.is_visible():
        sidebar_tab(page).click()
    jobs = sidebar.locator(".aidc-Jobs")
    # while the sweep runs: a schedule, from the form the section opens
    jobs.locator(".aidc-schedule-new").click()
    form = jobs.locator("form.aidc-schedule-form")
    form.locator(".aidc-schedule-path").fill("lab_job.ipynb")
    form.locator(".aidc-schedule-cron").fill("0 3 * * *")
    form.locator(".aidc-schedule-timezone").fill("Mars/Olympus")
    form.locator(".aidc-schedule-create").click()
    message = jobs.locator(".aidc-schedule-message")
    expect(message).to_have_text("Error: unknown time zone 'Mars/Olympus'; use an IANA name such "
                                 "as 'Europe/Berlin' or 'UTC'", timeout=60_000)
    form.locator(".aidc-schedule-timezone").fill("Europe/Berlin")
    form.locator(".aidc-schedule-create").click()
    expect(message).to_have_text('Scheduled lab_job.ipynb at "0 3 * * *" (Europe/Berlin).',
                                 timeout=60_000)
    expect(form).to_be_hidden()
    (schedule,) = jobs_api(platform, lab_user.token, "GET", "/schedules").json()["schedules"]
    assert (schedule["cron"], schedule["timezone"], schedule["paused"]) == (
        "0 3 * * *", "Europe/Berlin", False)
    row = jobs.locator(f'tr[data-schedule="{schedule["id"]}"]')
    expect(row).to_contain_text("Europe/Berlin", timeout=30_000)
    expect(row).to_contain_text("next ")
    row.locator(".aidc-schedule-pause").click()
    expect(row.locator(".aidc-status-paused")).to_be_visible(timeout=30_000)
    assert jobs_api(platform, lab_user.token, "GET",
                    f"/schedules/{schedule['id']}").json()["paused"] is True
    row.locator(".aidc-schedule-resume").click()
    expect(row).to_contain_text("next ", timeout=30_000)
    assert jobs_api(platform, lab_user.token, "GET",
                    f"/schedules/{schedule['id']}").json()["paused"] is False
    # the sweep's runs side by side, the best one (highest score) marked
    shown = jobs.locator(f'.aidc-sweep[data-sweep="{sweep["id"]}"]')
    expect(shown.locator("thead th")).to_have_text(["k", "score", "status"], timeout=30_000)
    expect(shown.locator("tbody tr")).to_have_count(2)
    expect(shown.locator("tr.aidc-best td")).to_have_text(["2", "20", "completed best"],
                                                          timeout=180_000)
    (other,) = [r for r in jobs_api(platform, lab_user.token, "GET", f"/sweeps/{sweep['id']}"
                                    ).json()["runs"] if r["parameters"]["k"] == 1]
    expect(shown.locator(f'tr[data-job="{other["job"]}"] td')).to_have_text(
        ["1", "10", "completed"], timeout=60_000)
    shown.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-sweeps-schedules.png"))
    # delete: asked first; cancelled keeps it
    row.locator(".aidc-schedule-delete").click()
    confirm(page, "Delete the schedule of lab_job.ipynb?", accept=False)
    assert jobs_api(platform, lab_user.token, "GET",
                    f"/schedules/{schedule['id']}").status_code == 200
    row.locator(".aidc-schedule-delete").click()
    confirm(page, "Delete the schedule of lab_job.ipynb?")
    expect(message).to_have_text("Deleted the schedule of lab_job.ipynb.", timeout=30_000)
    expect(row).to_have_count(0, timeout=30_000)
    assert jobs_api(platform, lab_user.token, "GET", "/schedules").json()["schedules"] == []
    assert page.aidc_errors == []


def test_widgets_render_and_act_in_a_lab_notebook(platform, lab_user, lab_page):
    """In a notebook opened in Lab: ``GPUGauge`` shows the server's GPU (with the
    *simulated* label where it applies), and ``JobLauncher``'s form submits the notebook it
    names with a changed parameter, whose job its monitor follows to the end."""
    page = lab_page
    (unit,) = my_server_units(platform, lab_user)
    put(platform, lab_user, "lab_widget_job.ipynb",
        notebook("print(f'steps={steps}')", parameters="steps = 3"))
    put(platform, lab_user, "lab_widgets.ipynb", notebook(
        "from aidc.widgets import GPUGauge, JobLauncher\nGPUGauge(refresh_seconds=1)",
        "JobLauncher('lab_widget_job.ipynb', monitor_refresh_seconds=0.5)"))
    try:
        path = page.locator(".jp-Dialog input")
        palette(page, "Open from Path", until=path)
        path.fill("lab_widgets.ipynb")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        current_tab(page, "lab_widgets.ipynb")
        notebook_panel = page.locator(".jp-NotebookPanel:visible")
        ran = notebook_panel.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]"))
        palette(page, "Run All Cells", until=ran.first)
        gauge = notebook_panel.locator(".aidc-w-gauge")
        expect(gauge.locator(".aidc-w-gpu")).to_have_count(1, timeout=180_000)
        expect(gauge).to_contain_text(unit["visible_id"], timeout=60_000)
        expect(gauge).to_contain_text(unit["name"])
        expect(gauge).to_contain_text("%")
        expect(gauge.locator(".aidc-w-simulated")).to_have_count(2 if unit["simulated"] else 0)
        launcher = notebook_panel.locator(".jp-OutputArea-output",
                                          has_text="Run lab_widget_job.ipynb as a job")
        steps = launcher.locator(".widget-text", has_text="steps").locator("input")
        expect(steps).to_have_value("3", timeout=60_000)
        steps.fill("4")
        steps.press("Enter")
        launcher.get_by_role("button", name="Submit job").click()
        submitted = launcher.locator(".aidc-w-info", has_text="submitted job")
        expect(submitted).to_be_visible(timeout=60_000)
        job_id = submitted.inner_text().split("submitted job ", 1)[1].strip()
        monitor = launcher.locator(".aidc-w-monitor")
        expect(monitor).to_contain_text(f"Job {job_id}", timeout=30_000)
        expect(monitor).to_contain_text("completed", timeout=120_000)
        job = jobs_api(platform, lab_user.token, "GET", f"/jobs/{job_id}").json()
        assert (job["path"], job["parameters"], job["owner"]) == (
            "lab_widget_job.ipynb", {"steps": 4}, lab_user.name)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lab-widgets.png"))
    finally:  # the gauge refreshes every second until its kernel ends
        api = platform.api(lab_user.token)
        kernels = f"{platform.url}/user/{lab_user.name}/api/kernels"
        for kernel in api.get(kernels, timeout=60).json():
            api.delete(f"{kernels}/{kernel['id']}", timeout=60)


def test_the_sidebar_keeps_working_after_the_pages_token_is_revoked(platform, lab_user, lab_page):
    """The hub token the Lab page holds (its page config, and this server's cookie) is
    revoked while the page stays open: the panel's next call is refused by the server, the
    panel gets a new token through the hub's sign-in (still valid) and the sidebar keeps
    showing my GPUs instead of an error."""
    page = lab_page
    (unit,) = my_server_units(platform, lab_user)
    old = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent)"
                        ".token")
    assert old
    # the hub says which of my tokens it is; revoked as the hub's token page would
    token_id = platform.api(old).get(f"{platform.url}/hub/api/user", timeout=60).json()["token_id"]
    r = platform.api(lab_user.token).delete(
        f"{platform.url}/hub/api/users/{lab_user.name}/tokens/{token_id}", timeout=60)
    assert r.status_code == 204, r.text
    status = f"{platform.url}/user/{lab_user.name}/api/status"
    deadline = time.monotonic() + 60  # the server caches the hub's answer a few seconds
    while requests.get(status, headers={"Authorization": f"token {old}"},
                       timeout=60).status_code == 200:
        assert time.monotonic() < deadline, "the revoked token is still accepted"
        time.sleep(0.5)
    answers, sent = [], []

    def on_response(response):  # the Resources section's calls, as the browser gets them
        if "/aidc/api/resources/gpus" in response.url:
            answers.append(response.status)
            sent.append(response.request.headers.get("authorization", ""))

    page.on("response", on_response)
    sidebar = page.locator("#aidc-sidebar")
    try:
        tab = sidebar_tab(page)
        if sidebar.is_visible():
            tab.click()  # closing and opening the sidebar refreshes it at once
        tab.click()
        deadline = time.monotonic() + 60
        while not (403 in answers and 200 in answers[answers.index(403):]):
            assert time.monotonic() < deadline, f"the panel's calls after the revocation: {answers}"
            page.wait_for_timeout(200)
    finally:
        page.remove_listener("response", on_response)
    expect(sidebar.locator("table.aidc-my-gpus")).to_contain_text(unit["visible_id"])
    expect(sidebar.locator(".aidc-content .aidc-error")).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-sidebar-token-renewed.png"))
    # the call that worked carried the page's new token, which the hub knows as mine
    renewed = sent[answers.index(200, answers.index(403))].removeprefix("token ")
    assert renewed and renewed != old
    r = platform.api(renewed).get(f"{platform.url}/hub/api/user", timeout=60)
    assert r.status_code == 200 and r.json()["name"] == lab_user.name
    assert page.aidc_errors == []


def test_a_service_that_does_not_answer_in_time_is_a_platform_error():
    """The relay's time-out (``c.LabRelay.timeout``) ends a call to a service that accepts
    the connection and never answers, with a message the panel shows (a 502).

    Its event loop runs in a thread of its own: the module's Chromium page (sync
    Playwright) keeps one running in this thread until the module ends."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        relay = LabRelay(timeout=0.5)
        relay._client = Client(url=f"http://127.0.0.1:{silent.getsockname()[1]}", token="t",
                               timeout=relay.timeout)
        with ThreadPoolExecutor(1) as thread, pytest.raises(
                PlatformError, match="the jobs service did not answer within 0.5 s"):
            thread.submit(asyncio.run, relay.call("GET", "jobs", "jobs", None)).result()
