"""The notebook widgets (``aidc.widgets``).

In-process, against nothing: a widget whose platform does not answer says so inside
itself, and stops refreshing when closed; the parameters form checks values by type.

In-process, with the scientist's token on the session platform (the real client, jobs and
models services): the launcher's form from the notebook's parameters cell, a wrong value
marked and nothing sent; a sweep's runs cancelled from its monitor; the deployer refuses a
canary weight of 1.5 with no call, deploys, and shows the service's refusal of a rollback
with nothing to roll back to; the resource request refuses what can never start.

End to end, in the scientist's own server: in a real kernel, the launcher submits a job,
the deployer refuses a weight of 1.5 with no call, and the resource request restarts the
server on a GPU profile; meanwhile a monitor here follows that job cell by cell to its end
(its series charted). Then a Voila page of the restarted server, in headless Chromium,
shows the gauge with the server's fake-NVML GPU and the job's monitor (screenshot
``test-artifacts/widgets-voila.png``).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests
import websocket
from playwright.sync_api import sync_playwright

import aidc
from aidc.client import Client
from aidc.errors import ConflictError, NotFoundError
from aidc.jobs.client import API as JOBS_API
from aidc.widgets import GPUGauge, JobLauncher, JobMonitor, ModelDeployer, ResourceRequest
from aidc.widgets.fields import ParameterField
from jobs_helpers import home, notebook, put, wait_service
from test_browser import ARGS, ARTIFACTS, CHROMIUM
from test_dashboards import closed_port, poll

MODEL = "widgets-tiny"
TRAIN = notebook(
    "import aidc\nfor step in range(epochs):\n    aidc.record('loss', 1 / (step + 1), step=step)",
    "print('trained', epochs, layers)",
    parameters="epochs = 2\nrate = 0.1\nlayers = [8, 4]\nname = 'digits'")
SLOW = notebook("import time\ntime.sleep(seconds)", parameters="seconds = 1")


def in_kernel(platform, user, code: str, timeout: float = 240) -> str:
    """Run ``code`` in a new kernel of ``user``'s server; its printed text (as
    ``platform_helpers.execute``, which reads every frame as JSON: widgets whose state holds
    arrays, bqplot's, send binary frames, skipped here)."""
    base = f"{platform.url}/user/{user.name}/api/kernels"
    s = platform.api(user.token)
    r = s.post(base, json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    kernel = r.json()["id"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{platform.port}/user/{user.name}/api/kernels/{kernel}/channels",
        header=[f"Authorization: token {user.token}"], timeout=timeout)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user.name,
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False}}))
    out: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            raw = ws.recv()
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append(f"ERROR {msg['content']['ename']}: {msg['content']['evalue']}\n")
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()
        try:
            s.delete(f"{base}/{kernel}", timeout=30)
        except requests.RequestException:
            pass  # the server may be restarting (the resource request's doing)
    raise AssertionError(f"no reply from the kernel in {timeout} s; got {out}")


def calls_of(client: Client) -> list[str]:
    """Every response the client gets from now on (a hook on its own session, not a fake)."""
    seen: list[str] = []
    client.session.hooks["response"].append(lambda r, *args, **kwargs: seen.append(r.url))
    return seen


# -- in-process, no platform ----------------------------------------------------------------
def test_a_platform_that_does_not_answer_is_said_in_the_widget_and_closing_stops_the_refresh(
        monkeypatch):
    client = Client(f"http://127.0.0.1:{closed_port()}", "token")
    gauge = GPUGauge(client=client, refresh_seconds=0.05)
    poll(lambda: gauge.error, lambda e: e is not None, timeout=30, every=0.05)
    assert gauge.error.startswith("cannot reach the platform at http://127.0.0.1:")
    assert 'role="alert"' in gauge.message.value and gauge.refreshing
    gauge.close()
    poll(lambda: gauge._refresher.alive, lambda alive: not alive, timeout=30, every=0.05)
    assert not gauge.refreshing

    launcher = JobLauncher("train.ipynb", client=client)
    assert launcher.error.startswith("cannot reach the platform") and launcher.fields == []
    for name in ("AIDC_URL", "AIDC_TOKEN", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monitor = JobMonitor("abc")
    said = "no platform address: set AIDC_URL (for example http://127.0.0.1:8000)"
    assert monitor.error == said and not monitor.refreshing
    assert monitor.cancel().result(5) is None and monitor.error == said  # nothing to call


def test_parameter_fields_are_typed_and_check_values_before_anything_is_sent():
    fields = {f.name: f for f in map(ParameterField, [
        {"name": "epochs", "type": "int", "default": "2", "help": "passes"},
        {"name": "rate", "type": "float", "default": "0.1"},
        {"name": "fast", "type": "bool", "default": "False"},
        {"name": "layers", "type": "list", "default": "[8, 4]"},
        {"name": "opts", "type": "dict", "default": "{'a': 1}"},
        {"name": "grid", "type": "any", "default": "np.arange(3)"},
    ])}
    assert [type(f.input).__name__ for f in fields.values()] == [
        "IntText", "FloatText", "Checkbox", "Text", "Text", "Text"]
    assert all(f.read() == (False, f.default, None) for f in fields.values())  # defaults: nothing sent
    fields["epochs"].input.value = 5
    assert fields["epochs"].read() == (True, 5, None)
    fields["layers"].input.value = "[8, 'x'"
    assert fields["layers"].read()[2] == "not a Python value: \"[8, 'x'\" (quote text: 'like this')"
    assert "not a Python value" in fields["layers"].problem.value  # marked beside its input
    fields["layers"].input.value = "(16, 8)"
    assert fields["layers"].read() == (True, [16, 8], None) and fields["layers"].problem.value == ""
    fields["opts"].input.value = "[1]"
    assert fields["opts"].read()[2] == "expects an object (default {'a': 1})"
    fields["grid"].input.value = "[0, 1]"
    assert fields["grid"].read() == (True, [0, 1], None)


# -- in-process, on the session platform ----------------------------------------------------
@pytest.fixture(scope="module")
def client(platform, scientist):
    wait_service(platform, scientist.token)
    put(platform, scientist, "widgets/train.ipynb", TRAIN)
    put(platform, scientist, "widgets/slow.ipynb", SLOW)
    return Client(platform.url, scientist.token)


@pytest.fixture(scope="module")
def tiny_model(client, tmp_path_factory):
    """widgets-tiny v1 (y = 2x), not deployed; undeployed at the end."""
    from test_models import scale_onnx

    path = scale_onnx(tmp_path_factory.mktemp("widgets") / "x2.onnx", 2.0)
    aidc.models.register(path, name=MODEL, client=client)
    yield MODEL
    try:
        aidc.models.undeploy(MODEL, client=client)
    except (ConflictError, NotFoundError):  # not deployed
        pass


def test_launcher_marks_a_wrong_value_and_sends_nothing_and_a_monitor_cancels_a_sweep(client):
    missing = JobLauncher("widgets/nosuch.ipynb", client=client)
    assert "nosuch.ipynb" in missing.error and missing.fields == []

    launcher = JobLauncher("widgets/train.ipynb", client=client)
    assert [(f.name, f.type) for f in launcher.fields] == [
        ("epochs", "int"), ("rate", "float"), ("layers", "list"), ("name", "str")]
    fields = {f.name: f for f in launcher.fields}
    calls = calls_of(client)
    fields["layers"].input.value = "[16, 'x'"
    assert launcher.submit().result(10) is None and calls == []  # refused, nothing sent
    assert launcher.error.startswith("not submitted, fix the marked values: layers: not a Python value")
    assert "not a Python value" in fields["layers"].problem.value
    fields["layers"].input.value = "[16]"
    assert launcher.parameters() == ({"layers": [16]}, []) and fields["layers"].problem.value == ""
    launcher.close()

    # a job that is not there: the service's message, and no more asking
    gone = JobMonitor("j-nosuch", client=client, refresh_seconds=0.05)
    poll(lambda: gone.error, lambda e: e is not None, timeout=30, every=0.05)
    assert gone.error == "no job 'j-nosuch'"
    poll(lambda: gone.refreshing, lambda running: not running, timeout=30, every=0.05)

    # a sweep: its runs side by side, cancelled from the monitor
    sweep = aidc.jobs.sweep("widgets/slow.ipynb", grid={"seconds": [600, 601]}, client=client)
    sweeping = JobMonitor(sweep, refresh_seconds=0.3)
    sweeping.cancel().result(60)
    assert sweeping.error is None and sweeping.message.value.endswith("sweep %s cancelled</div>" % sweep.id)
    poll(lambda: sweeping.status, lambda s: s == "done", timeout=120)
    assert sweeping.data["counts"] == {"cancelled": 2}, sweeping.data
    assert sweeping.progress_text.value == "2 of 2 runs ended" and "seconds=600" in sweeping.table.value
    sweeping.close()


def test_deployer_refuses_a_weight_out_of_range_with_no_call_deploys_and_shows_the_services_refusal(
        client, tiny_model):
    d = ModelDeployer(tiny_model, client=client, refresh_seconds=0.5)
    assert [v for _, v in d.version.options] == [1] and d.version.value == 1
    assert "not deployed" in d.state.value and d.refreshing
    d.stop_refresh()
    calls = calls_of(client)
    d.canary_version.value, d.canary_weight.value = 1, 1.5
    assert d.deploy().result(5) is None
    assert calls == [] and d.error == ("the canary weight is the share of requests sent to the "
                                       "canary: a number from 0 to 1 (0.1 sends 10%), not 1.5")
    d.canary_weight.value = 0.5
    assert d.deploy().result(5) is None and calls == []
    assert d.error == "the canary must be another version than the one served (v1)"
    d.canary_version.value = "none"
    dep = d.deploy().result(300)
    assert dep is not None and dep["ready"] and calls, d.error
    assert "serving v1 (ready, 1/1 replicas)" in d.state.value and d.error is None
    # what only the service knows comes back as its message, in the widget
    assert d.rollback().result(300) is None
    assert d.error == f"model {tiny_model!r} has no earlier deployed version to roll back to"
    assert not any(b.disabled for b in d.buttons)  # usable again after the refusal
    d.close()


def test_resource_request_refuses_what_can_never_start_before_any_call(client):
    r = ResourceRequest(client=client)
    assert [v for _, v in r.profile.options] == ["cpu", "gpu-1", "gpu-2", "gpu-8", "mig-1"]
    calls = calls_of(client)
    assert r.restart("gpu-8").result(5) is None and calls == []
    assert r.error == "profile 'gpu-8' can never start here: it needs 8 whole GPUs, but this platform has 4"
    assert r.restart("gpu-3").result(5) is None and r.error.startswith("no profile 'gpu-3': this platform offers cpu,")
    r.profile.value = "gpu-2"
    assert "2 whole GPU units" in r.details.value and "free now" in r.details.value


# -- end to end: the scientist's server, a kernel, Voila in Chromium -------------------------------
IN_KERNEL = """
from aidc.widgets import JobLauncher, ModelDeployer, ResourceRequest
launcher = JobLauncher("widgets/train.ipynb")
[epochs] = [f for f in launcher.fields if f.name == "epochs"]
epochs.input.value = 4
job = launcher.submit().result(60)
print("JOB", job.id, launcher.monitor.id == job.id, job.data["parameters"])
d = ModelDeployer(%(model)r, refresh_seconds=0)
calls = []
d.client.session.hooks["response"].append(lambda r, *a, **k: calls.append(r.url))
d.canary_version.value, d.canary_weight.value = 1, 1.5
d.deploy().result(10)
print("DEPLOYER", len(calls), d.error)
r = ResourceRequest()
print("PROFILE", r.current_profile)
r.restart("gpu-1").result(60)
print("RESTART", r.error, r.message.value)
"""


def server_profile(platform, user) -> str | None:
    model = platform.hub(user.token, "GET", f"/users/{user.name}").json()
    server = (model.get("servers") or {}).get("")
    return ((server or {}).get("user_options") or {}).get("profile") if server and server.get("ready") else None


def test_widgets_act_in_a_kernel_of_my_server_and_show_its_gpu_and_a_job_in_voila(
        platform, scientist, client, tiny_model):
    platform.start_server(scientist)
    try:
        out = in_kernel(platform, scientist, IN_KERNEL % {"model": tiny_model}, timeout=240)
        lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line}
        assert "ERROR" not in lines, out
        job_id, attached, parameters = lines["JOB"].split(" ", 2)
        assert attached == "True" and parameters == "{'epochs': 4}", out  # the defaults stay the notebook's
        assert lines["DEPLOYER"].startswith("0 the canary weight is the share of requests"), out
        assert lines["PROFILE"] == "cpu", out
        assert lines["RESTART"].startswith("None ") and "Restarting on profile gpu-1" in lines["RESTART"], out

        # meanwhile the job runs: a monitor follows it cell by cell to its end
        monitor = JobMonitor(job_id, client=client, refresh_seconds=0.3)
        try:
            poll(lambda: monitor.status, lambda s: s in ("completed", "failed", "cancelled"), timeout=180)
        except AssertionError as e:  # say what the monitor and the service saw
            events = client.get_json(f"{JOBS_API}/jobs/{job_id}/events")["events"]
            raise AssertionError(
                f"{e}; monitor refreshing={monitor.refreshing} message={monitor.message.value!r}; "
                f"the job now: {client.get_json(f'{JOBS_API}/jobs/{job_id}')}; "
                f"its events: {events}") from None
        assert monitor.status == "completed", monitor.data
        assert monitor.cells and set(monitor.cells.values()) == {"ok"}
        assert monitor.progress.value == monitor.progress.max == monitor.data["progress"]["cells"]
        assert "completed" in monitor.header.value and monitor.cancel_button.disabled
        assert list(monitor.chart.line.y) == [1.0, 0.5, pytest.approx(1 / 3), 0.25]  # the series
        poll(lambda: monitor.refreshing, lambda running: not running, timeout=30)  # stopped by itself

        # the server comes back on the chosen profile, holding one GPU
        restart_log = home(platform, scientist) / ".aidc" / "server-restart.log"
        try:
            poll(lambda: server_profile(platform, scientist), lambda p: p == "gpu-1", timeout=180)
        except AssertionError:
            raise AssertionError(restart_log.read_text() if restart_log.exists() else "no restart log") from None
        said = poll(lambda: restart_log.read_text() if restart_log.exists() else "",
                    lambda text: "your server is ready at" in text)
        assert "stopping your server" in said and "starting your server on profile gpu-1" in said, said
        gpus = platform.resources(scientist.token)
        held = next(c["units"] for c in gpus["mine"] if c["holder"] == f"server:{scientist.name}/")
        unit = next(u for u in gpus["units"] if u["id"] == held[0])

        # a Voila page of that server (its kernel runs there): my GPU, live, and the job's monitor
        put(platform, scientist, "widgets/live.ipynb", notebook(
            "from aidc.widgets import GPUGauge, JobMonitor\nGPUGauge(refresh_seconds=1)",
            f"JobMonitor({job_id!r})"))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1000})
                render = f"/user/{scientist.name}/voila/render/widgets/live.ipynb"
                page.goto(f"{platform.url}/hub/login?next={render}")
                page.fill("#username_input", scientist.name)
                page.fill("#password_input", scientist.password)
                page.click("#login_submit")
                gauge = page.locator(".aidc-w-gauge")
                gauge.locator(".aidc-w-gpu").first.wait_for(timeout=120_000)
                assert unit["visible_id"] in gauge.inner_text() and unit["name"] in gauge.inner_text()
                assert "%" in gauge.inner_text() and "GiB" in gauge.inner_text()
                assert gauge.locator(".aidc-w-gpu").count() == 1  # the server's one GPU, no other
                shown = page.locator(".aidc-w-monitor")
                shown.get_by_text("completed").first.wait_for(timeout=60_000)
                assert f"Job {job_id}" in shown.inner_text()
                # bqplot draws the series once its own view is up, after the monitor's text
                shown.locator(".aidc-w-chart svg").first.wait_for(timeout=60_000)
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "widgets-voila.png"), full_page=True)
            finally:
                browser.close()
    finally:
        platform.stop_server(scientist)
