"""The Voila dashboards at ``/services/dashboards/``.

In-process: the page frame shows a message where a service is down and the *simulated*
label where figures are simulated; per-user figures follow the viewer's role (accounting
rows, recent jobs, places in the GPU queue); failures show their reason, not their text.

On the session platform, with one headless Chromium: a viewer signs in and lands on the
dashboards (not on a 403, and never offered a server), opens each dashboard and sees its
charts with data (a job holding a GPU and recording a training curve, a failed job, a job
waiting for GPUs, an endpoint called by the test), the pages refresh by themselves, no
notebook source reaches the browser, and an ``execute_request`` sent on a dashboard's
kernel websocket is not run.
"""

import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from aidc.dashboards import page as dashpage
from aidc.dashboards.live import LiveLines
from aidc.dashboards.sources import Sources, Viewer, visible_usage
from aidc.models.metrics import histogram_quantile as quantile
from jobs_helpers import home, jobs_api, notebook, put, submit, wait
from test_browser import ARGS, ARTIFACTS, CHROMIUM

DASHBOARDS = {"1-cluster.ipynb": "Cluster", "2-usage-and-cost.ipynb": "Usage and cost",
              "3-jobs.ipynb": "Jobs", "4-models.ipynb": "Models"}


def poll(what, check, timeout=90, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if check(got):
            return got
        assert time.monotonic() < deadline, f"not within {timeout} s: {got!r}"
        time.sleep(every)


# -- in-process -------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_section_whose_service_is_down_shows_a_message_and_simulated_figures_are_labelled():
    def gpus(page, start, end):
        page.simulated = True
        return "<svg class='aidc-chart'></svg>"

    def accounting(page, start, end):
        return page.sources.jobs_summary()  # nothing listens there

    d = dashpage.Dashboard("Test", [gpus, accounting],
                           sources=Sources(base_url=f"http://127.0.0.1:{closed_port()}", token="t"))
    d.refresh()
    assert "aidc-chart" in d.html_of(0)
    assert "aidc-down" in d.html_of(1) and "the jobs service does not answer" in d.html_of(1)
    assert "simulated figures" in d.header.value


def test_per_user_rows_follow_the_viewers_role_and_latency_quantiles_come_from_buckets():
    usage = {"users": [{"name": "ann"}, {"name": "bob"}], "groups": [{"name": "ml"}, {"name": "ops"}]}
    assert visible_usage(usage, Viewer("vic", "viewer")) == usage
    assert visible_usage(usage, Viewer("root", "admin")) == usage
    mine = visible_usage(usage, Viewer("ann", "scientist", ("ml", "scientist")))
    assert mine["users"] == [{"name": "ann"}] and mine["groups"] == [{"name": "ml"}]
    buckets = [(0.01, 50.0), (0.1, 99.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == 0.01 and abs(quantile(buckets, 0.99) - 0.1) < 1e-9
    assert quantile([], 0.5) is None


def test_the_jobs_and_queue_sections_show_a_scientist_aggregates_but_only_their_own_jobs(tmp_path):
    import datetime as dt

    from aidc.dashboards.panels import hub_activity, job_times, queue, recent_jobs
    from aidc.jobs.store import JobStore
    from aidc.jobs.views import stats_view

    now = time.time()

    def at(seconds_ago):
        return dt.datetime.fromtimestamp(now - seconds_ago, dt.UTC).replace(tzinfo=None)

    def job(id, owner, status, created, started=None, finished=None, error=None, series=None):
        return {"id": id, "owner": owner, "path": "deep/private-folder/train.ipynb", "status": status,
                "gpus": 1, "created": at(created), "started": started and at(started),
                "finished": finished and at(finished), "error": error, "metrics": {"loss": 0.25},
                "series": series or {}}

    jobs = [job("j-queued", "ann", "queued", 30),
            job("j-bob", "bob", "failed", 600, 590, 500, error="cell 2 raised ValueError: bob's secret value"),
            job("j-bob2", "bob", "failed", 700, 690, 650, error="cell 1 raised ValueError: another text"),
            job("j-ann", "ann", "completed", 900, 860, 800, series={"loss": [[0, 1.0], [1, 0.5], [2, 0.25]]}),
            job("j-old", "ann", "completed", 9000, 8000, 7000)]  # finished before the range
    store = JobStore(db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", data_dir=str(tmp_path))
    for j in jobs:
        store.insert_job(**j)
    begin, until = at(3600), at(0)
    stats = stats_view(store.stats_between(begin, until, recent=3), now - 3600, now, now)
    assert stats["durations"]["p50"] == pytest.approx(60) and stats["queue_waits"]["max"] == pytest.approx(40)
    assert stats["failures"] == [{"reason": "raised ValueError", "count": 2}]
    assert stats["finished"] == {"completed": 1, "failed": 2, "cancelled": 0}
    assert [j["id"] for j in stats["recent"]] == ["j-queued", "j-bob", "j-bob2"]  # the newest 3
    # the counts are the database's, whatever share of the rows the percentiles read
    bounded = stats_view(store.stats_between(begin, until, window=1), now - 3600, now, now)
    assert bounded["queue_waits"]["count"] == 3 and bounded["queue_waits"]["max"] == pytest.approx(10)
    mine = store.stats_between(begin, until, owner="ann")["recent"]
    assert [j["id"] for j in mine] == ["j-queued", "j-ann"]
    store.engine.dispose()
    stats = stats_view(store.stats_between(begin, until), now - 3600, now, now)
    answers = {"api/stats": stats, "api/summary": {"counts": {}, "queued": 1, "running_gpus": 0},
               "api/queue": {"queue": [
                   {"position": 1, "kind": "whole", "count": 4, "holder_kind": "job", "holder": "job:j-b2", "owner": "bob",
                    "waited": 95.0},
                   {"position": 2, "kind": "whole", "count": 2, "holder_kind": "job", "holder": "job:j-queued",
                    "owner": "ann", "waited": 30.0}]},
               # the hub's own figures, as the metrics service read them from JupyterHub's
               "api/current": {"time": now, "gpus": [], "hub": {
                   "users": 12, "running_servers": 3, "active_users": {"24h": 5},
                   "spawns": {"success": {"count": 4, "sum": 26.0, "buckets": [["5.0", 2], ["10.0", 4], ["+Inf", 4]]},
                              "failure": {"count": 1, "sum": 300.0, "buckets": [["+Inf", 1]]}}}},
               "api/history": {"series": [{"labels": {}, "points": [[now - 60, 2], [now - 30, 3]]}]}}

    class Canned(Sources):
        def json(self, service, path, **params):
            return answers[path]

    d = dashpage.Dashboard("Jobs", [job_times, recent_jobs, queue, hub_activity],
                           sources=Canned(base_url="http://x", token="t"))
    d.viewer = Viewer("ann", "scientist", ("scientist",))
    d.refresh()
    times, recent, waiting, hub = (d.html_of(i) for i in range(4))
    assert "aidc-down" not in times + recent + waiting
    # the failure's reason, not its text; no notebook folder; of the recent jobs, ann's own
    assert "raised ValueError: 2" in times and "secret" not in times + recent
    assert "private-folder" not in recent and "train.ipynb" in recent
    assert "j-ann" in recent and "j-queued" in recent and "j-bob" not in recent and "bob" not in recent
    # ann's training curve, a live chart of the recorded series over its steps
    [curve] = [c for c in d.parts[1].children if isinstance(c, LiveLines)]
    assert curve.figure.title == "Training curves of j-ann (train.ipynb)"
    assert [(list(m.labels), list(m.x), list(m.y)) for m in curve.figure.marks] == [
        (["loss"], [0.0, 1.0, 2.0], [1.0, 0.5, 0.25])]
    d.refresh()  # a refresh updates the same chart
    assert [c for c in d.parts[1].children if isinstance(c, LiveLines)] == [curve]
    # the GPU queue: bob's place without his name, ann's with her job, and how long each waits
    assert "ann (job:j-queued)" in waiting and "someone else" in waiting and "bob" not in waiting
    assert "<td>1 min 35 s</td>" in waiting and "<td>30.0 s</td>" in waiting
    # the hub: users, active users, running servers, and spawn times from the hub's buckets
    cells = re.findall(r"<td>([^<]*)</td>", hub)
    # (in the range: the history's count and sum grew by 1 each, from 2 to 3)
    assert cells == ["12", "5", "3", "4", "1", "5.0 s", "9.0 s", "6.5 s", "1", "1.0 s"], cells
    [servers] = [c for c in d.parts[3].children if isinstance(c, LiveLines)]
    assert [list(m.y) for m in servers.figure.marks] == [[2.0, 3.0]]


# -- in the browser, on the session platform ---------------------------------------------
def bar_titles(page, within: str = "") -> list[str]:
    """Each bar's hover text, ``label: figure`` (of the charts inside ``within``)."""
    return page.locator(f"{within} svg.aidc-chart rect.bar title".strip()).evaluate_all(
        "els => els.map(e => e.textContent)")


def kernel_ignores_execute_request(page, marker: Path) -> dict:
    """Send an execute_request (writing ``marker``) and then a kernel_info_request on the
    page's kernel websocket; the shell channel answers in order, so once the info reply is
    there an executed request would have run (and answered)."""
    return page.evaluate("""async (marker) => {
        const config = JSON.parse(document.getElementById('jupyter-config-data').textContent);
        const url = location.origin.replace(/^http/, 'ws') + config.baseUrl
            + 'api/kernels/' + config.kernelId + '/channels?session_id=aidc-test';
        const ws = new WebSocket(url);
        const msg = (type, content) => ({header: {msg_id: type + '-' + Math.random(), msg_type: type,
            session: 'aidc-test', username: 'x', date: new Date().toISOString(), version: '5.3'},
            parent_header: {}, metadata: {}, content, channel: 'shell', buffers: []});
        const seen = [];
        await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
        const exec = msg('execute_request', {code: `open(${JSON.stringify(marker)}, 'w').write('ran')`,
            silent: false, store_history: false, user_expressions: {}, allow_stdin: false, stop_on_error: true});
        const info = msg('kernel_info_request', {});
        const done = new Promise(ok => { ws.onmessage = (e) => {
            const m = JSON.parse(e.data); seen.push([m.msg_type, m.parent_header.msg_id]);
            if (m.msg_type === 'kernel_info_reply' && m.parent_header.msg_id === info.header.msg_id) ok();
        }; });
        ws.send(JSON.stringify(exec));
        ws.send(JSON.stringify(info));
        await done;
        ws.close();
        return {exec_id: exec.header.msg_id, seen};
    }""", str(marker))


def serve_and_call(platform, user, name: str, folder: Path) -> None:
    """A tiny public ONNX model of ``user``'s deployed as ``name`` and called three times."""
    from test_models_security import ROW, upload
    from test_models import models_api, scale_onnx

    r = upload(platform, user.token, name, scale_onnx(folder / "m.onnx").read_bytes())
    assert r.status_code == 201, r.text
    r = models_api(platform, user.token, "PATCH", f"/models/{name}", json={"visibility": "public"})
    assert r.status_code == 200, r.text
    r = models_api(platform, user.token, "PUT", f"/models/{name}/deployment", json={"replicas": 1})
    assert r.status_code == 200 and r.json()["ready"], r.text
    for _ in range(3):
        r = platform.api(user.token).post(f"{platform.url}/services/models/v2/models/{name}/infer",
                                          json=ROW, timeout=60)
        assert r.status_code == 200, r.text


def test_a_viewer_lands_on_the_dashboards_and_sees_every_dashboard_with_data(platform, viewer, scientist,
                                                                             other_scientist, tmp_path):
    from test_models import models_api  # torch: imported by the tests that need it

    # a job holding a GPU and an endpoint called (in the background,
    # while the viewer signs in), so that every dashboard has figures
    model = f"dash-{uuid.uuid4().hex[:8]}"
    serving_errors = []

    def serve():
        try:
            serve_and_call(platform, scientist, model, tmp_path)
        except BaseException as e:  # reported by the test's thread
            serving_errors.append(e)

    serving = threading.Thread(target=serve)
    serving.start()
    # the job records a training curve and holds its GPU until the test lets it finish
    # (the job polls, not the test); another job fails with a message a viewer must not see
    release = home(platform, scientist) / "dashboard_job.release"
    put(platform, scientist, "dashboard_job.ipynb", notebook(
        "import aidc\nfor step in range(5):\n    aidc.record('loss', 1 / (step + 1), step=step)",
        f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.2)"))
    job = submit(platform, scientist, "dashboard_job.ipynb", gpus=1)
    put(platform, scientist, "dashboard_fail.ipynb", notebook("raise ValueError('not-for-' + 'viewers')"))
    failing = submit(platform, scientist, "dashboard_fail.ipynb")
    waiting = None
    holder = scientist
    marker = Path("/tmp") / f"aidc-dashboard-executed-{uuid.uuid4().hex}"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            # signing in lands a viewer on the dashboards' list, through the hub's OAuth
            page.goto(f"{platform.url}/hub/login")
            page.fill("#username_input", viewer.name)
            page.fill("#password_input", viewer.password)
            page.click("#login_submit")
            page.wait_for_url("**/services/dashboards/", timeout=60_000)
            page.wait_for_selector("ul.aidc-dashboards li a")
            listing = page.locator("ul.aidc-dashboards li a").all_inner_texts()
            assert listing == list(DASHBOARDS.values()), listing
            page.screenshot(path=str(ARTIFACTS / "dashboards-landing.png"))
            # the job's GPU is granted while the browser signs in
            current = f"{platform.url}/services/metrics/api/current"
            poll(lambda: platform.api(viewer.token).get(current, timeout=30).json(),
                 lambda now: any(h["holder"] == f"job:{job['id']}" for g in now.get("gpus", [])
                                 for h in g.get("holders", [])))

            serving.join(timeout=300)
            assert not serving.is_alive() and not serving_errors, serving_errors
            # once the failing job is done (a job for no GPU waits behind one that waits for
            # GPUs), a job asks for all 4 GPUs while 1 is held: it waits in the GPU queue
            assert wait(platform, scientist, failing["id"])["status"] == "failed"
            waiting = submit(platform, scientist, "dashboard_job.ipynb", gpus=4)
            poll(lambda: platform.api(viewer.token).get(f"{platform.url}/services/metrics/api/queue",
                                                        timeout=30).json(),
                 lambda q: any(w["holder"] == f"job:{waiting['id']}" for w in q.get("queue", [])))
            # a browser cannot pass for someone else: the header naming the viewer is the service's
            page.set_extra_http_headers({"X-Aidc-Viewer": '{"name": "root", "role": "admin", "groups": []}'})
            for name, title in DASHBOARDS.items():
                page.goto(f"{platform.url}/services/dashboards/")
                page.click(f"ul.aidc-dashboards a:text-is('{title}')")
                page.wait_for_url(f"**/voila/render/{name}")
                page.wait_for_selector(".aidc-updated", timeout=60_000)
                heading = page.inner_text(".aidc-dash h2")
                assert heading.startswith(title), heading
                html = page.content()
                # the notebook's source never reaches the browser
                assert "aidc.dashboards.panels" not in html and "Dashboard(" not in html
                assert page.locator(".aidc-down").all_inner_texts() == []
                assert f"{viewer.name} (viewer)" in page.inner_text(".aidc-meta")
                if name == "1-cluster.ipynb":
                    # each GPU's utilization over time (a live chart: a line per GPU), and who
                    # holds the held one
                    utilization = page.locator(".aidc-live", has_text="GPU utilization")
                    utilization.locator("g.curve").first.wait_for(state="attached")  # a flat line has no height
                    assert utilization.locator("g.curve").count() == 5
                    assert f"{holder.name} (job:{job['id']})" in page.inner_text("table.aidc-table")
                    first = page.inner_text(".aidc-updated")
                    poll(lambda: page.inner_text(".aidc-updated"), lambda t: t != first, timeout=60)
                    # the range selector redraws the charts over the range chosen (its time axis)
                    ticks = utilization.locator("g.tick text")
                    since = ticks.all_text_contents()
                    page.select_option("select", label="Last 5 minutes")
                    poll(lambda: ticks.all_text_contents(), lambda t: t != since, timeout=30)
                    # who waits for GPUs, for how many, and for how long
                    row = page.locator(".aidc-gpu-queue tr", has_text=f"job:{waiting['id']}").first
                    cells = row.inner_text().split("\t")
                    assert cells[4] == f"{holder.name} (job:{waiting['id']})" and cells[5].endswith(" s"), cells
                    # the hub's own figures: its users (at least this test's three) and running servers
                    hub = page.locator(".aidc-hub tbody td").all_inner_texts()
                    assert len(hub) == 10 and int(hub[0]) >= 3, hub
                    assert page.locator(".aidc-live", has_text="Running user servers").count() == 1
                    result = kernel_ignores_execute_request(page, marker)
                    assert not marker.exists()
                    assert all(parent != result["exec_id"] for _, parent in result["seen"]), result
                elif name == "2-usage-and-cost.ipynb":
                    bars = bar_titles(page)
                    assert any(t.startswith(f"{holder.name}:") for t in bars), bars
                    csv_link = page.get_attribute("a.aidc-csv", "href")
                    assert csv_link.startswith("/services/metrics/api/accounting.csv?"), csv_link
                    # followed as the browser follows the link (a page navigation, through the hub's OAuth)
                    download = page.request.get(platform.url + csv_link, headers={"Accept": "text/html,*/*"})
                    assert download.ok and download.text().startswith("user,"), download.text()[:300]
                    assert f"\n{holder.name}," in download.text()
                    # queue waits: the jobs started in the range, and the one waiting for GPUs
                    waits = {r.split("\t")[0]: r.split("\t")
                             for r in page.locator(".aidc-queue-waits tr").all_inner_texts()[1:]}
                    assert int(waits["jobs started"][1]) >= 2 and int(waits["waiting now"][1]) >= 1, waits
                elif name == "3-jobs.ipynb":
                    bars = bar_titles(page)
                    counts = {t.split(":")[0]: float(t.split(":")[1]) for t in bars}
                    assert sum(counts.values()) >= 1, bars
                    # failures by reason, never the failure's own text
                    failures = bar_titles(page, ".aidc-failures")
                    assert any(t.startswith("raised ValueError: ") for t in failures), failures
                    assert "not-for-viewers" not in html
                    # recent jobs with their recorded metrics, and the training curve
                    row = page.locator(".aidc-recent-jobs tr", has_text=job["id"]).first.inner_text().split("\t")
                    assert row[1:4] == [holder.name, "dashboard_job.ipynb", "running"] and row[8] == "loss=0.2", row
                    curve = page.locator(".aidc-curve", has_text=f"Training curves of {job['id']}")
                    curve.locator("g.curve").first.wait_for(state="attached")
                    assert curve.locator("g.curve").count() == 1 and "loss" in curve.text_content()
                else:
                    # each endpoint's requests and latency, and the model's versions
                    bars = bar_titles(page)
                    assert f"{model} v1: 3" in bars, bars
                    row = page.locator("table.aidc-table tr", has_text=model).first.inner_text().split("\t")
                    assert row[:5] == [model, "1", "3", row[3], "0"] and row[5].endswith(" ms"), row
                    # and over the range chosen, from the metrics service's history
                    for title in ("Requests per second by endpoint", "Latency p99 by endpoint"):
                        assert page.locator(".aidc-live", has_text=title).count() == 1, title
                page.screenshot(path=str(ARTIFACTS / f"dashboard-{name.removesuffix('.ipynb')}.png"),
                                full_page=True)

            # the model's replica: its CPU and memory apart, under its deployment
            poll(lambda: platform.api(viewer.token).get(current, timeout=30).json()["users"],
                 lambda users: users.get(scientist.name, {}).get("holders", {}).get(f"deployment:{model}"))
            # the endpoint's 3 requests kept as history by the metrics service (from the models
            # service's own text, which it does not export a second time)
            history = f"{platform.url}/services/metrics/api/history"
            kept = poll(lambda: platform.api(viewer.token).get(history, timeout=30, params={
                "metric": "endpoint_requests", "model": model, "start": time.time() - 600}).json(),
                lambda h: h.get("series") and h["series"][0]["points"][-1][1] == 3)
            assert kept["series"][0]["labels"] == {"model": model, "version": "1"}
            # with how long they took (the 99th percentile of the read that saw them)
            p99 = platform.api(viewer.token).get(history, timeout=30, params={
                "metric": "endpoint_latency_p99_seconds", "model": model, "start": time.time() - 600}).json()
            assert 0 < max(v for _, v in p99["series"][0]["points"]) < 60, p99
            text = platform.api(viewer.token).get(f"{platform.url}/services/metrics/metrics", timeout=30).text
            assert "aidc_endpoint_requests_total" not in text and "aidc_hub_users" in text
            # the hub's home page: a link to the dashboards, and no server to start
            page.goto(f"{platform.url}/hub/home")
            page.wait_for_selector("#aidc-dashboards")
            assert page.locator("#start").count() == 0
            assert "Start My Server" not in page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "hub-home-viewer.png"))
            browser.close()
    finally:
        serving.join(timeout=300)
        if waiting is not None:  # before the held GPU is freed, or it would run
            jobs_api(platform, scientist.token, "POST", f"/jobs/{waiting['id']}/cancel")
        put(platform, scientist, release.name, "")
        wait(platform, scientist, job["id"])  # its GPU free again for the tests that follow
        models_api(platform, scientist.token, "DELETE", f"/models/{model}/deployment")
    # another scientist's statistics count the failure but list none of these jobs
    theirs = jobs_api(platform, other_scientist.token, "GET", "/stats").json()
    assert theirs["finished"]["failed"] >= 1
    assert not {job["id"], failing["id"]} & {j["id"] for j in theirs["recent"]}
    # without a hub session, a dashboard sends the browser to the hub's sign-in
    r = requests.get(f"{platform.url}/services/dashboards/voila/render/1-cluster.ipynb",
                     timeout=30, allow_redirects=False)
    assert r.status_code in (302, 303) and re.search(r"/hub/api/oauth2/authorize", r.headers["Location"])


def dashboards_token(platform) -> str:
    """The token the dashboards' Voila process (and so its kernels) holds."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if "aidc.dashboards.service" in " ".join(p.info["cmdline"] or ()):
            try:
                env = p.environ()
            except psutil.Error:
                continue
            if env.get("AIDC_DATA_DIR") == str(platform.data_dir):
                return env["JUPYTERHUB_API_TOKEN"]
    raise AssertionError("no dashboards process on this platform")


def test_the_dashboards_token_reads_the_platform_services_as_a_viewer_and_changes_nothing(platform, scientist):
    api = platform.api(dashboards_token(platform))
    url = platform.url
    # it reads what a viewer reads: every user's figures, the models service's metrics
    assert api.get(f"{url}/services/metrics/api/current", timeout=30).status_code == 200
    assert api.get(f"{url}/services/metrics/api/accounting", timeout=30).status_code == 200
    assert api.get(f"{url}/services/models/metrics", timeout=30).status_code == 200
    assert api.get(f"{url}/services/jobs/api/summary", timeout=30).status_code == 200
    assert api.get(f"{url}/services/jobs/api/stats", timeout=30).status_code == 200
    assert api.get(f"{url}/services/metrics/api/queue", timeout=30).status_code == 200
    bad = api.get(f"{url}/services/jobs/api/stats", params={"start": "yesterday"}, timeout=30)
    assert bad.status_code == 400 and "start must be epoch seconds or an ISO 8601" in bad.json()["message"]
    # and nothing else: no hub API, no other service, no write route
    assert api.get(f"{url}/hub/api/users", timeout=30).status_code == 403
    assert api.get(f"{url}/services/resources/api/gpus", timeout=30).status_code == 403
    r = api.post(f"{url}/services/jobs/api/jobs", json={"path": "x.ipynb"}, timeout=30)
    assert r.status_code == 403 and r.json()["message"], r.text


def test_the_hub_home_offers_a_scientist_their_server_and_the_dashboards(platform, scientist):
    session, r = platform.login(scientist.name, scientist.password)
    assert r.status_code == 200 and r.url.endswith("/hub/home"), r.url
    assert 'id="start"' in r.text and "My Server" in r.text
    assert 'id="aidc-dashboards"' in r.text and 'href="/services/dashboards/"' in r.text


def test_the_grafana_dashboard_queries_only_metrics_the_platform_exports():
    import json
    import re as regex

    from aidc.models import metrics as model_metrics
    from aidc.monitor.catalog import METRICS

    # the sample names Prometheus stores: a counter's end in _total, a histogram's in _bucket...
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {f"aidc_{m.name}{s}" for m in METRICS.values() for s in suffixes[m.type]}
    for declared in vars(model_metrics).values():
        if isinstance(declared, model_metrics.Declared):
            exported |= {declared.name + s for s in suffixes[declared.kind]}
    dashboard = json.loads((Path(__file__).parents[1] / "hub_config" / "grafana" / "aidc.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in regex.findall(r"\baidc_[a-z_]+", e)}
    assert len(exprs) >= 15 and used and used <= exported, sorted(used - exported)
