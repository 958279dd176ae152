"""Monitoring (``aidc.monitor``): history tiers, PID attribution, accounting, Prometheus
text, and the ``metrics`` service of the session platform.

The fast tests run in-process: the store on a SQLite file (kept across a restart), the
collector's GPU readings through the fake NVML of ``tests/fake_nvml`` at the pynvml
boundary (a failing NVML or store reported, not a crash), accounting on a real ledger
(ended holdings deleted past their keep). The platform tests read the service over HTTP as the users a stakeholder,
a scientist and an admin are.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import pwd
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from aidc import accounts
from aidc.db import make_engine
from aidc.errors import UsageError
from aidc.gpu.inventory import read_nvml
from aidc.gpu.ledger import GRANTED, GPULedger
from aidc.monitor.accounting import Accounting
from aidc.monitor.accounts import AccountUsage
from aidc.monitor.attribution import attribute
from aidc.monitor.collect import Collector
from aidc.monitor.exposition import prometheus_text
from aidc.monitor.gpus import gpu_samples, nvml_telemetry
from aidc.monitor.store import MetricStore
from aidc.monitor.xid import XidWatcher

FAKE_NVML = Path(__file__).parent / "fake_nvml" / "pynvml.py"
PREFIX = accounts.DEFAULT_PREFIX

LAYOUT = [
    {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "utilization": 37, "used_mb": 2048,
     "temperature_c": 61, "power_w": 312.5, "energy_j": 1000,
     "processes": [{"pid": 101, "used_mb": 1024}, {"pid": 102, "used_mb": 512}, {"pid": 103, "used_mb": 256}]},
    {"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "mig": [
        {"name": "MIG 3g.20gb", "memory_mb": 19968},
        {"name": "MIG 3g.20gb", "memory_mb": 19968, "processes": [{"pid": 201, "used_mb": 300}]}]},
]


@pytest.fixture
def fake_nvml(tmp_path, monkeypatch):
    """The fake NVML as ``pynvml`` in this process, reporting ``LAYOUT``."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(LAYOUT))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("AIDC_FAKE_NVML", str(path))
    return path


@pytest.fixture
def ledger(tmp_path):
    led = GPULedger(db_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}", node="n1")
    yield led
    led.engine.dispose()


def poll(what, check, timeout=90.0):
    """``what()`` until ``check`` of it holds (returns it), or fail with the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s; last: {value}")
        time.sleep(0.5)


def store_of(tmp_path, tiers=([1, 100], [10, 1000], [100, 100000]), url=None) -> MetricStore:
    url = url or f"sqlite:///{tmp_path / 'monitor.sqlite'}"
    return MetricStore(make_engine(url), tiers=[list(t) for t in tiers])


# -- history ---------------------------------------------------------------------------

@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_history_is_downsampled_into_coarser_tiers_and_pruned_past_each_tiers_keep(database, tmp_path, request):
    url = request.getfixturevalue("postgres").create_database("history") if database == "postgresql" else None
    store = store_of(tmp_path, url=url)
    labels = {"gpu": "0", "uuid": "GPU-x"}
    for t in range(60):  # one sample a second for a minute: value = t
        store.record(1000 + t, [("gpu_utilization_percent", labels, t),
                                ("gpu_energy_joules", labels, 10 * t),
                                ("host_cpu_percent", {}, 50)])
    store.maintain(now=1060)
    fine = store.query("gpu_utilization_percent", 1000, 1060, 10, now=1060)
    assert fine["resolution"] == 1
    assert fine["series"][0]["labels"] == labels
    assert fine["series"][0]["points"] == [[1000 + 10 * b, 10 * b + 4.5] for b in range(6)]

    # 7 minutes later tier 0 (kept 100 s) is gone: the same read comes from tier 1
    store.maintain(now=1500)
    coarse = store.query("gpu_utilization_percent", 1000, 1060, 10, now=1500)
    assert coarse["resolution"] == 10
    assert coarse["series"][0]["points"] == fine["series"][0]["points"]
    assert store.query("gpu_utilization_percent", 1000, 1060, 1, now=1500)["series"][0]["points"][0] == [1000, 4.5]
    energy = store.query("gpu_energy_joules", 1000, 1060, 30, now=1500)
    assert energy["series"][0]["points"] == [[1000, 290.0], [1030, 590.0]]  # counters: last value

    # half a day later only the 100 s tier reaches back to then
    store.maintain(now=51000)
    old = store.query("host_cpu_percent", 1000, 1100, 100, now=51000)
    assert old["resolution"] == 100 and old["series"][0]["points"] == [[1000, 50.0]]
    store.maintain(now=1000 + 10 ** 6)  # past every tier's keep: nothing is left
    assert store.query("host_cpu_percent", 0, 10 ** 6, 1000, now=1000 + 10 ** 6)["series"] == []


def test_reads_of_a_coarser_tier_equal_a_plain_bucketing_of_its_points(tmp_path):
    import math
    import random

    rnd = random.Random(7)
    store = store_of(tmp_path, tiers=([1, 100], [60, 10 ** 7], [3600, 10 ** 8]))
    t0, labels, energy = 3_600_000.0, {"gpu": "0", "uuid": "GPU-x"}, 0.0
    for t in range(0, 2 * 3600, 30):  # 2 hours, a sample each 30 s, with gaps of minutes
        if (t // 60) % 17 == 3:
            continue
        energy += rnd.random()
        store.record(t0 + t, [("gpu_utilization_percent", labels, rnd.random() * 100),
                              ("gpu_energy_joules", labels, energy)])
    store.maintain(t0 + 2 * 3600 + 120)
    minutes = {m: store.query(m, t0, t0 + 2 * 3600, 60, now=t0 + 10 ** 6)["series"][0]["points"]
               for m in ("gpu_utilization_percent", "gpu_energy_joules")}
    assert len(minutes["gpu_utilization_percent"]) == sum(1 for m in range(120) if m % 17 != 3)
    for start, end, step in [(t0 + 17.5, t0 + 7200, 300), (t0, t0 + 5400, 433), (t0 + 30, t0 + 3600, 45)]:
        for metric, kept in minutes.items():
            want: dict[float, list] = {}
            for t, v in kept:
                if start <= t < end:
                    want.setdefault(start + math.floor((t - start) / step) * step, []).append(v)
            got = store.query(metric, start, end, step, now=t0 + 10 ** 6)["series"][0]["points"]
            combine = max if metric == "gpu_energy_joules" else (lambda vs: sum(vs) / len(vs))
            assert [t for t, _ in got] == sorted(want), (metric, step)
            assert [v for _, v in got] == pytest.approx([combine(want[t]) for t in sorted(want)]), (metric, step)


@pytest.mark.parametrize("args, message", [
    (("gpu_bogus", 0, 10, 1), "unknown metric 'gpu_bogus'"),
    (("host_cpu_percent", 10, 0, 1), "end (0) must be after start (10)"),
    (("host_cpu_percent", 0, 10, 0.5), "step must be at least 1 s"),
    (("host_cpu_percent", 0, 10 ** 6, 1), "more than 11000 points"),
])
def test_history_reads_refuse_bad_ranges_with_what_to_fix(tmp_path, args, message):
    with pytest.raises(UsageError, match=None) as e:
        store_of(tmp_path).query(*args, now=100)
    assert message in str(e.value)


# -- collection and attribution -----------------------------------------------------------

def test_collector_reads_the_fake_nvml_and_attributes_gpu_memory_to_the_holder(tmp_path, fake_nvml, ledger):
    inv = read_nvml(telemetry=nvml_telemetry)
    ledger.sync_inventory(inv)
    ledger.request("server:alice/", "alice", 1)  # gpu0
    ledger.request("job:7", "bob", 1, kind="mig")  # gpu1/mig0 (MIG-fake-01-0)
    ledger.request("job:8", "bob", 1, kind="mig")  # gpu1/mig1: where pid 201 runs
    claims = [c for c in ledger.claims() if c.state == GRANTED]
    owners = {101: f"{PREFIX}alice", 102: f"{PREFIX}carol", 103: "postgres", 201: f"{PREFIX}bob"}
    gpus = gpu_samples(inv, claims, account_of=owners.get)

    g0, g1 = gpus
    assert (g0["utilization_percent"], g0["temperature_celsius"], g0["power_watts"]) == (37.0, 61.0, 312.5)
    assert g0["memory_used_bytes"] == 2048 * 2**20 and g0["simulated"] is False
    procs = {p["pid"]: (p["user"], p["holder"], p["used_bytes"]) for p in g0["processes"]}
    assert procs == {101: ("alice", "server:alice/", 2**30),  # alice's server holds gpu0
                     102: ("carol", None, 512 * 2**20),        # carol holds nothing there
                     103: (None, None, 256 * 2**20)}           # not a platform account
    assert [(p["user"], p["holder"], p["device"]) for p in g1["processes"]] == [("bob", "job:8", "MIG-fake-01-1")]
    assert {h["holder"] for h in g1["holders"]} == {"job:7", "job:8"}


def test_xid_errors_are_counted_per_gpu_from_nvml_events(tmp_path, fake_nvml, ledger):
    gpus = json.loads(fake_nvml.read_text())
    gpus[1]["xid_events"] = [79, 48]  # "fallen off the bus", then a double-bit ECC error
    fake_nvml.write_text(json.dumps(gpus))
    watcher = XidWatcher(wait_ms=100)
    collector = Collector(store_of(tmp_path), ledger, str(tmp_path), xids=watcher)
    watcher.start()
    try:
        counted = poll(lambda: collector.sample(time.time())["gpus"][1], lambda g: g["xid_errors"] == 2, timeout=30)
        assert counted["xid_last"] == 48 and counted["uuid"] == "GPU-fake-0001"
        assert collector.latest["gpus"][0]["xid_errors"] == 0
    finally:
        watcher.stop()


def test_each_platform_users_processes_are_summed_into_their_cpu_and_memory():
    account = pwd.getpwuid(os.getuid()).pw_name
    me = AccountUsage(prefix=account[:1])  # this test's account counts as a platform user
    user = account[1:]
    first = me.sample(time.time())[user]
    assert first["memory_bytes"] >= psutil.Process().memory_info().rss and first["processes"] >= 1
    spent = time.process_time()
    while time.process_time() - spent < 0.2:  # use some CPU between the two walks
        pass
    assert me.sample(time.time())[user]["cpu_percent"] > 0


def test_each_server_job_and_deployments_processes_are_summed_apart():
    import subprocess
    import uuid

    account = pwd.getpwuid(os.getuid()).pw_name
    me = AccountUsage(prefix=account[:1])  # this test's account counts as a platform user
    user, job = account[1:], f"j-{uuid.uuid4().hex[:8]}"
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(flush=True)\ntime.sleep(60)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "AIDC_JOB"))}
    kernel = subprocess.Popen([sys.executable, "-c", busy], env={**env, "AIDC_JOB_ID": job}, stdout=subprocess.PIPE)
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**env, "JUPYTERHUB_USER": user, "JUPYTERHUB_SERVER_NAME": ""})
    replica = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",  # as a replica's command line
                                "-m", "aidc.models.server", "--name", job], env=env)
    try:
        me.sample(time.time())
        kernel.stdout.readline()  # its 0.3 s of CPU are spent
        now = time.time()
        users = me.sample(now)
        holders = users[user]["holders"]
        assert holders[f"job:{job}"]["processes"] == 1 and holders[f"job:{job}"]["cpu_percent"] > 0
        assert holders[f"job:{job}"]["memory_bytes"] > 0
        assert holders[f"server:{user}/"]["processes"] >= 1
        assert holders[f"deployment:{job}"]["processes"] == 1
        # as history and Prometheus keep them: per user and holder
        snapshot = {"time": now, "gpus": [], "host": {}, "users": users, "users_time": now}
        families = {f.name: f for f in text_string_to_metric_families(prometheus_text(lambda: snapshot).decode())}
        memory = {s.labels["holder"]: s.value for s in families["aidc_holder_memory_bytes"].samples
                  if s.labels["user"] == user}
        assert memory[f"job:{job}"] > 0 and memory[f"server:{user}/"] > 0
    finally:
        for child in (kernel, server, replica):
            child.kill()
            child.wait()


def test_attribution_prefers_the_unit_on_that_very_device():
    class C:  # the two fields of a ledger Claim that attribution reads, and the holder
        def __init__(self, holder, owner, units):
            self.holder, self.owner, self.units = holder, owner, units

    claims = [C("job:1", "ann", [{"visible_id": "GPU-a/share", "gpu_index": 3}]),
              C("job:2", "ann", [{"visible_id": "GPU-b", "gpu_index": 3}])]
    got = attribute([{"pid": 5, "used_bytes": 1, "device": "GPU-b"}], 3, claims,
                    account_of=lambda pid: f"{PREFIX}ann")
    assert got[0]["holder"] == "job:2"


def test_collector_records_samples_and_reports_a_failing_nvml_or_store_instead_of_crashing(tmp_path, fake_nvml, ledger):
    store = store_of(tmp_path)
    collector = Collector(store, ledger, str(tmp_path))
    now = time.time()
    snap = collector.sample(now)
    assert snap["errors"] == [] and len(snap["gpus"]) == 2
    util = store.query("gpu_utilization_percent", now - 1, now + 1, 1, now=now + 1)
    assert [s["points"][0][1] for s in util["series"] if s["labels"]["gpu"] == "0"] == [37.0]
    assert store.query("host_memory_total_bytes", now - 1, now + 1, 1, now=now + 1)["series"][0]["points"][0][1] \
        == psutil.virtual_memory().total

    fake_nvml.write_text("not json")  # NVML now fails at init
    snap = collector.sample(now + 1)
    assert snap["gpus"] == [] and any(e.startswith("NVML:") for e in snap["errors"])
    assert snap["host"]["host_cpu_percent"] >= 0

    fake_nvml.write_text(json.dumps(LAYOUT))  # NVML is back: so are the GPUs
    with store.engine.begin() as c:  # the history cannot be written (as on a full disk)
        c.exec_driver_sql("ALTER TABLE monitor_samples RENAME TO monitor_samples_away")
    snap = collector.sample(now + 2)
    assert len(snap["gpus"]) == 2 and any(e.startswith("history store:") for e in snap["errors"])
    with store.engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE monitor_samples_away RENAME TO monitor_samples")
    assert collector.sample(now + 3)["errors"] == []
    text = prometheus_text(lambda: collector.latest).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["aidc_gpu_utilization_percent"].samples[0].labels == {"gpu": "0", "uuid": "GPU-fake-0000"}
    assert "DCGM_FI_DEV_GPU_UTIL" in families["aidc_gpu_utilization_percent"].documentation
    assert families["aidc_gpu_energy_joules"].type == "counter"
    assert {s.labels["simulated"] for s in families["aidc_gpu_info"].samples} == {"false"}


def test_without_nvml_the_simulated_gpus_are_reported_and_labelled_simulated(tmp_path, fake_nvml, ledger, monkeypatch):
    monkeypatch.delenv("AIDC_FAKE_NVML")  # the fake now behaves like a machine without a driver
    monkeypatch.setenv("AIDC_SIMULATED_GPUS", "2")
    collector = Collector(store_of(tmp_path), ledger, str(tmp_path))
    snap = collector.sample(time.time())
    assert snap["simulated"] is True and snap["errors"] == []
    assert [(g["uuid"], g["simulated"], g["utilization_percent"]) for g in snap["gpus"]] == [
        ("GPU-simulated-0000", True, 0.0), ("GPU-simulated-0001", True, 0.0)]
    assert "temperature_celsius" not in snap["gpus"][0]  # not measured: not invented
    info = [f for f in text_string_to_metric_families(prometheus_text(lambda: collector.latest).decode())
            if f.name == "aidc_gpu_info"][0]
    assert {s.labels["simulated"] for s in info.samples} == {"true"}


def test_a_restarted_metrics_service_keeps_its_history_and_downsamples_on(tmp_path, fake_nvml, ledger):
    url = f"sqlite:///{tmp_path / 'monitor.sqlite'}"
    t0 = 1_000_000.0
    before = Collector(store_of(tmp_path, url=url), ledger, str(tmp_path))
    for i in range(30):
        before.sample(t0 + i)
    before.store.engine.dispose()  # the process ends; all it knew is in the database
    after = Collector(store_of(tmp_path, url=url), ledger, str(tmp_path))
    for i in range(30, 60):
        after.sample(t0 + i)
    after.store.maintain(t0 + 60)
    fine = after.store.query("gpu_utilization_percent", t0, t0 + 60, 1, now=t0 + 60, labels={"gpu": "0"})
    assert [p[0] for p in fine["series"][0]["points"]] == [t0 + i for i in range(60)]
    # the 10 s tier spans the restart: six buckets of both processes' samples, none twice
    coarse = after.store.query("gpu_utilization_percent", t0, t0 + 60, 10, now=t0 + 500, labels={"gpu": "0"})
    assert coarse["resolution"] == 10 and coarse["series"][0]["points"] == [[t0 + 10 * b, 37.0] for b in range(6)]


def test_ended_gpu_holdings_are_kept_for_a_configured_time_and_then_deleted(tmp_path, fake_nvml, ledger):
    ledger.sync_inventory(read_nvml())
    ledger.request("job:old", "ann", 1)
    ledger.request("server:ann/", "ann", 1)
    ledger.release("job:old")
    ended = time.time()
    keep = 2 * 86400
    acc = Accounting(keep_ended_seconds=keep)
    assert acc.prune(ledger, now=ended + keep - 60) == 0  # still inside the keep
    assert {h["holder"] for h in ledger.holdings(0, ended + 1)} == {"job:old", "server:ann/"}
    # the collector's maintenance pass prunes as the service runs it: past the keep, gone
    collector = Collector(store_of(tmp_path), ledger, str(tmp_path), accounting=acc)
    assert collector.sample(ended + keep + 60)["errors"] == []
    assert [h["holder"] for h in ledger.holdings(0, ended + keep + 61)] == ["server:ann/"]  # held: kept
    usage = acc.usage(ledger.holdings(0, ended + keep + 61), 0, ended + keep + 61, now=ended + keep + 61)
    assert usage["kept_from"] == pytest.approx(ended + 61) and [r["name"] for r in usage["users"]] == ["ann"]


# -- accounting -----------------------------------------------------------------------------

def holding(owner, groups, count, kind, granted, released, holder_kind="server", units=None):
    return dict(holder=f"{holder_kind}:{owner}{granted}", holder_kind=holder_kind, owner=owner,
                groups=groups, count=count, kind=kind, granted=granted, released=released,
                units=units if units is not None else [{"name": "NVIDIA H100 80GB HBM3"}] * count)


def test_accounting_counts_the_part_of_each_holding_inside_the_range():
    acc = Accounting(cost_rates={"NVIDIA H100 80GB HBM3": 2.0, "mig": 0.5})
    holdings = [
        holding("ann", ["ml"], 2, "whole", 0, 7200),                  # 2 GPUs, hours 0-2
        holding("ann", ["ml"], 1, "mig", 3600, None, "job", [{"name": "MIG 3g.20gb"}]),  # from hour 1, still held
        holding("bob", ["ml", "ops"], 1, "share", 5400, 9000, "job", [{"name": "H100 (1/4)"}]),
    ]
    # the range [1 h, 2 h) cuts ann's server holding in half and bob's job at 1.5 h
    u = acc.usage(holdings, 3600, 7200, now=10800)
    users = {r["name"]: r for r in u["users"]}
    assert users["ann"]["gpu_hours"] == {"whole": 2.0, "mig": 1.0, "share": 0.0}
    assert users["ann"]["job_hours"] == 1.0
    assert users["ann"]["cost"] == pytest.approx(2 * 2.0 + 0.5)
    assert users["bob"]["gpu_hours"]["share"] == 0.5 and users["bob"]["cost"] == 0.0
    groups = {r["name"]: r for r in u["groups"]}
    assert groups["ml"]["gpu_hours_total"] == 3.5 and groups["ops"]["gpu_hours_total"] == 0.5
    assert u["total"]["gpu_hours_total"] == 3.5 and u["total"]["job_hours"] == 1.5
    # a holding still held counts until now, not until the end of the range
    later = acc.usage(holdings, 7200, 10 ** 6, now=9000)
    assert {r["name"]: r["gpu_hours"]["mig"] for r in later["users"]}["ann"] == 0.5

    rows = list(csv.reader(io.StringIO(acc.to_csv(u, "group"))))
    assert rows[0] == ["group", "gpu_hours_whole", "gpu_hours_mig", "gpu_hours_share", "gpu_hours",
                       "job_hours", "cost_EUR"]
    assert rows[1][0] == "ml" and float(rows[1][4]) == 3.5 and rows[-1][0] == "(total)"
    with pytest.raises(UsageError, match="by must be one of user, group"):
        acc.to_csv(u, "planet")


PATHS = {  # every way the ledger decides a release
    "sqlite": {"driver_fast_path": True}, "sqlite-core": {"driver_fast_path": False},
    "pg-functions": {"pg_functions": True}, "pg-pipeline": {"pg_functions": False},
    "pg-core": {"driver_fast_path": False},
}


@pytest.mark.parametrize("path", PATHS)
def test_the_ledger_keeps_released_holdings_with_their_exact_times(path, tmp_path, fake_nvml, request):
    if path.startswith("pg"):
        url = request.getfixturevalue("postgres").create_database(f"history_{path.replace('-', '_')}")
    else:
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    ledger = GPULedger(db_url=url, node="n1", **PATHS[path])
    ledger.sync_inventory(read_nvml())
    before = time.time()
    ledger.request("server:ann/", "ann", 1, groups=["ml"])
    ledger.request("job:3", "bob", 1, kind="mig")
    ledger.release("server:ann/")
    ledger.release("server:ann/")  # a second release records nothing more
    after = time.time()
    held = {h["holder"]: h for h in ledger.holdings(before - 1, after + 1)}
    ann, job = held["server:ann/"], held["job:3"]
    assert before <= ann["granted"] <= ann["released"] <= after
    assert ann["groups"] == ["ml"] and ann["units"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert job["released"] is None and job["units"][0]["name"] == "MIG 3g.20gb"
    assert ledger.holdings(after + 10, after + 20) == [job]  # the ended one is outside that range
    ledger.engine.dispose()


@pytest.mark.parametrize("path", PATHS)
def test_the_gpu_queue_says_how_long_each_claim_has_waited_on_every_decision_path(path, tmp_path, fake_nvml,
                                                                                  request):
    from aidc.monitor.service import queue_view

    if path.startswith("pg"):
        url = request.getfixturevalue("postgres").create_database(f"queue_{path.replace('-', '_')}")
    else:
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    ledger = GPULedger(db_url=url, node="n1", **PATHS[path])
    ledger.sync_inventory(read_nvml())  # one whole GPU, two MIG instances
    ledger.request("server:ann/", "ann", 1)
    before = time.time()
    ledger.request("job:5", "bob", 1)
    ledger.request("job:6", "carl", 1)
    after = time.time()
    waiting = ledger.queue()
    assert [(c.holder, c.position) for c in waiting] == [("job:5", 1), ("job:6", 2)]
    assert before <= waiting[0].created <= waiting[1].created <= after
    assert ledger.waiting() == {"whole": (2, waiting[0].created)}
    # what api/queue answers carl: each place's wait, bob's without his name
    shown = queue_view(waiting, "carl", after + 60)
    assert [(w["owner"], w["since"], w["waited"]) for w in shown] == [
        (None, waiting[0].created, after + 60 - waiting[0].created),
        ("carl", waiting[1].created, after + 60 - waiting[1].created)]

    # the collector's figures: claims waiting and the oldest wait, per unit kind, in history and Prometheus
    store = store_of(tmp_path)
    collector = Collector(store, ledger, str(tmp_path), user_usage_every=0)
    now = after + 30
    collector.sample(now)
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(lambda: collector.latest).decode())}
    assert {s.labels["kind"]: s.value for s in families["aidc_gpu_queue_claims"].samples} == {
        "whole": 2, "mig": 0, "share": 0}
    oldest = {s.labels["kind"]: s.value for s in families["aidc_gpu_queue_oldest_wait_seconds"].samples}
    assert oldest == {"whole": pytest.approx(now - waiting[0].created), "mig": 0, "share": 0}
    kept = store.query("gpu_queue_oldest_wait_seconds", now - 1, now + 1, 1, now=now + 1)
    assert {s["labels"]["kind"]: s["points"][0][1] for s in kept["series"]}["whole"] == pytest.approx(
        now - waiting[0].created)
    ledger.release("server:ann/")  # bob's job is granted: it waits no more
    assert [c.holder for c in ledger.queue()] == ["job:6"]
    assert ledger.waiting() == {"whole": (1, waiting[1].created)}
    ledger.engine.dispose()


def hub_metrics_server(token: str, body=None):
    """A stand-in for the hub's ``/hub/api/metrics``: JupyterHub's own metric declarations
    (``jupyterhub.metrics``) rendered as the hub renders them, for ``token`` only (or what
    ``body()`` renders: another service's text)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import REGISTRY, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.headers.get("Authorization") == f"token {token}"
            text = (body or (lambda: generate_latest(REGISTRY)))() if ok else b'{"status": 403}'
            self.send_response(200 if ok else 403)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_hubs_users_servers_and_spawn_durations_are_kept_and_exported_under_aidc_names(
        tmp_path, fake_nvml, ledger, monkeypatch):
    from jupyterhub import metrics as hub

    from aidc.monitor.hub import HubReader

    hub.TOTAL_USERS.set(7)
    hub.RUNNING_SERVERS.set(2)
    hub.ACTIVE_USERS.labels(period="24h").set(3)
    from prometheus_client import REGISTRY, generate_latest

    from aidc.monitor.hub import hub_figures

    counted = hub_figures(generate_latest(REGISTRY).decode()).get("spawns", {}).get("success", {}).get("count", 0)
    for seconds in (3.0, 4.0, 20.0):
        hub.SERVER_SPAWN_DURATION_SECONDS.labels(status="success", reason="").observe(seconds)
    server = hub_metrics_server("metrics-token")
    try:
        monkeypatch.setenv("JUPYTERHUB_API_URL", f"http://127.0.0.1:{server.server_port}/hub/api")
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "metrics-token")
        store = store_of(tmp_path)
        collector = Collector(store, ledger, str(tmp_path), hub=HubReader(), user_usage_every=0)
        now = time.time()
        snap = collector.sample(now)
        assert snap["errors"] == []
        assert (snap["hub"]["users"], snap["hub"]["running_servers"], snap["hub"]["active_users"]["24h"]) == (7, 2, 3)
        assert snap["hub"]["spawns"]["success"]["count"] == counted + 3
        kept = store.query("hub_users", now - 1, now + 1, 1, now=now + 1)
        assert kept["series"][0]["points"][0][1] == 7
        kept = store.query("hub_spawns", now - 1, now + 1, 1, now=now + 1, labels={})
        assert {s["labels"]["status"]: s["points"][0][1] for s in kept["series"]}["success"] == counted + 3
        text = prometheus_text(lambda: collector.latest).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["aidc_hub_users"].samples[0].value == 7
        assert "jupyterhub_total_users" in families["aidc_hub_users"].documentation
        assert families["aidc_hub_running_servers"].samples[0].value == 2
        histogram = families["aidc_hub_spawn_duration_seconds"]
        assert histogram.type == "histogram" and "jupyterhub_server_spawn_duration_seconds" in histogram.documentation
        success = {s.labels["le"]: s.value for s in histogram.samples
                   if s.name.endswith("_bucket") and s.labels["status"] == "success"}
        assert success["30.0"] - success["15.0"] >= 1 and success["+Inf"] == counted + 3
        with pytest.raises(UsageError, match="is a histogram, in the Prometheus text only"):
            store.query("hub_spawn_duration_seconds", now - 1, now + 1, 1, now=now + 1)

        # a jobs service that does not answer: said in the snapshot, the other figures go on
        from aidc.monitor.jobs import JobsReader

        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        collector.readers["jobs"] = JobsReader(url=f"http://127.0.0.1:{closed.getsockname()[1]}/services/jobs/api")
        closed.close()
        snap = collector.sample(now + 1)
        assert snap["hub"]["users"] == 7 and snap["jobs"] == {}
        assert [e for e in snap["errors"] if e.startswith("jobs: ")] == [
            f"jobs: the jobs service at {collector.readers['jobs'].url} does not answer (ConnectionError)"]
        # a token without read:metrics: said in the snapshot, the other figures go on
        collector.readers["hub"]._token = "someone-else"
        collector.readers["hub"]._session = None
        snap = collector.sample(now + collector.readers["hub"].every)
        assert snap["hub"] == {} and len(snap["gpus"]) == 2
        assert any("answered 403" in e and "read:metrics" in e for e in snap["errors"]), snap["errors"]
    finally:
        server.shutdown()


def test_each_endpoints_latency_and_batch_size_are_kept_per_interval_across_a_restart(tmp_path, fake_nvml, ledger):
    """Latency and batch size quantiles are what the histograms counted since the previous
    read, not since the models service started; a restarted models service (counts lower
    than before) counts from zero again."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from aidc.monitor.endpoints import EndpointsReader

    def models_service():
        registry = CollectorRegistry()
        return registry, (
            Counter("aidc_endpoint_requests", "", ["model", "version", "code"], registry=registry),
            Histogram("aidc_endpoint_request_duration_seconds", "", ["model", "version"], registry=registry,
                      buckets=(0.005, 0.01, 0.1, 1.0)),
            Histogram("aidc_model_batch_size", "", ["model", "version", "replica"], registry=registry,
                      buckets=(1, 2, 4, 8, 16)))

    state = {}
    state["registry"], (requests_, latency, batch) = models_service()

    def serve(n: int, seconds: float, rows: int) -> None:
        for replica in ("0", "1"):  # summed over the replicas
            for _ in range(n):
                requests_.labels("m", "1", "200").inc()
                latency.labels("m", "1").observe(seconds)
                batch.labels("m", "1", replica).observe(rows)

    server = hub_metrics_server("t", body=lambda: generate_latest(state["registry"]))
    try:
        reader = EndpointsReader(url=f"http://127.0.0.1:{server.server_port}/metrics")
        reader._token = "t"
        store = store_of(tmp_path)
        collector = Collector(store, ledger, str(tmp_path), endpoints=reader, user_usage_every=0)
        serve(50, 0.002, 1)  # fast, one row a batch
        now = time.time()
        first = collector.sample(now)["endpoints"]["endpoints"][0]
        assert first["requests"] == 100 and first["latency_p99_seconds"] <= 0.005
        assert first["batch_size_p50"] <= 1
        serve(50, 0.5, 16)  # then slow, in big batches: only these count in the next interval
        second = collector.sample(now + reader.every)["endpoints"]["endpoints"][0]
        assert second["requests"] == 200 and 0.1 < second["latency_p50_seconds"] <= 1.0
        assert 8 < second["batch_size_p50"] <= 16
        kept = store.query("endpoint_latency_p99_seconds", now - 1, now + reader.every + 1, 1,
                           now=now + reader.every + 1, labels={"model": "m"})
        assert kept["series"][0]["points"][-1][1] > 0.1, kept
        # the models service restarts: fewer counts than before, a fresh interval
        state["registry"], (requests_, latency, batch) = models_service()
        serve(5, 0.007, 2)
        third = collector.sample(now + 2 * reader.every)["endpoints"]["endpoints"][0]
        assert third["requests"] == 10 and 0.005 < third["latency_p99_seconds"] <= 0.01
        assert 1 < third["batch_size_p50"] <= 2
        # nothing served since: no quantile to keep (not a zero latency)
        fourth = collector.sample(now + 3 * reader.every)["endpoints"]["endpoints"][0]
        assert fourth["latency_p99_seconds"] is None and fourth["batch_size_p50"] is None
    finally:
        server.shutdown()


# -- the metrics service of the session platform ------------------------------------------

def metrics_get(platform, token, path, **params) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(f"{platform.url}/services/metrics/{path}", params=params, headers=headers,
                        timeout=30, allow_redirects=False)


def test_stakeholders_see_samples_and_history_of_the_fake_gpus(platform, viewer):
    current = poll(lambda: metrics_get(platform, viewer.token, "api/current").json(),
                   lambda c: len(c.get("gpus", [])) == 5)
    g0 = current["gpus"][0]
    assert (g0["name"], g0["uuid"], g0["simulated"]) == ("NVIDIA H100 80GB HBM3", "GPU-fake-0000", False)
    assert g0["memory_total_bytes"] == 81559 * 2**20 and g0["temperature_celsius"] == 35.0
    assert current["gpus"][4]["mig"] == ["MIG-fake-04-0", "MIG-fake-04-1"]
    assert current["host"]["host_memory_total_bytes"] == psutil.virtual_memory().total
    history = poll(lambda: metrics_get(platform, viewer.token, "api/history", metric="gpu_memory_total_bytes",
                                       gpu="4", start=time.time() - 300, step=5).json(),
                   lambda h: h.get("series"))
    assert [s["labels"] for s in history["series"]] == [{"gpu": "4", "uuid": "GPU-fake-0004"}]
    assert {v for _t, v in history["series"][0]["points"]} == {40960 * 2**20}
    assert history["resolution"] == 1 and history["simulated"] is False
    described = metrics_get(platform, viewer.token, "api/openapi.json").json()["paths"]
    assert {"/api/current", "/api/history", "/api/accounting", "/api/accounting.csv", "/metrics"} <= set(described)


def test_a_gpu_servers_holding_shows_in_accounting_and_its_gpu_memory_under_it(platform, admin, viewer, scientist):
    user = platform.new_user("scientist")
    holder = f"server:{user.name}/"
    started = time.time()
    r = platform.spawn(user, "gpu-1")
    assert r.status_code in (201, 202), r.text
    nvml_file = Path(platform.env["AIDC_FAKE_NVML"])
    changed = nvml_file.with_suffix(".new")  # replaced at once: the platform reads it meanwhile
    layout = nvml_file.read_text()
    try:
        platform.wait_ready(user)
        current = poll(lambda: metrics_get(platform, admin.token, "api/current").json(),
                       lambda c: any(h["holder"] == holder for g in c["gpus"] for h in g["holders"]))
        index = next(int(g["gpu"]) for g in current["gpus"] if any(h["holder"] == holder for h in g["holders"]))
        pid = min(p.pid for p in psutil.process_iter(["username"])
                  if p.info["username"] == platform.prefix + user.name)  # the server, its first process
        gpus = json.loads(layout)
        gpus[index]["processes"] = [{"pid": pid, "used_mb": 777}]
        gpus[index]["xid_events"] = [31]  # and the GPU reports a fault
        changed.write_text(json.dumps(gpus))
        changed.replace(nvml_file)

        # the hub's own figures (JupyterHub's metrics, read with the service's read:metrics):
        # this spawn counted, its server running, every user of the hub
        hub_users = len(platform.api(admin.token).get(f"{platform.url}/hub/api/users", timeout=30).json())
        hub = poll(lambda: metrics_get(platform, admin.token, "api/current").json().get("hub") or {},
                   lambda h: h.get("spawns", {}).get("success", {}).get("count", 0) >= 1
                   and h.get("running_servers", 0) >= 1 and h.get("users") == hub_users)
        spawn = [f for f in text_string_to_metric_families(metrics_get(platform, viewer.token, "metrics").text)
                 if f.name == "aidc_hub_spawn_duration_seconds"][0]
        assert {s.labels["status"]: s.value for s in spawn.samples if s.name.endswith("_count")}["success"] \
            == hub["spawns"]["success"]["count"]
        running = poll(lambda: metrics_get(platform, viewer.token, "api/history", metric="hub_running_servers",
                                           start=time.time() - 60).json(),
                       lambda h: h["series"] and h["series"][0]["points"][-1][1] >= 1)
        assert running["series"][0]["labels"] == {}

        # the server's GPU memory is attributed to it, by its Unix account and its ledger units
        current = poll(lambda: metrics_get(platform, admin.token, "api/current").json(),
                       lambda c: c["gpus"][index]["processes"] and c["gpus"][index]["xid_errors"] == 1)
        assert current["gpus"][index]["xid_last"] == 31
        # its processes' CPU and memory, per user (walked every 10 s)
        used = poll(lambda: metrics_get(platform, admin.token, "api/current").json()["users"],
                    lambda users: user.name in users)[user.name]
        assert used["memory_bytes"] > 0 and used["processes"] >= 1
        # and the server's apart, told by its environment (JupyterHub's JUPYTERHUB_SERVER_NAME)
        assert used["holders"][holder]["memory_bytes"] > 0 and used["holders"][holder]["processes"] >= 1
        assert [(p["pid"], p["user"], p["holder"], p["used_bytes"]) for p in current["gpus"][index]["processes"]] \
            == [(pid, user.name, holder, 777 * 2**20)]
        text = metrics_get(platform, viewer.token, "metrics").text
        memory = [s for f in text_string_to_metric_families(text) if f.name == "aidc_gpu_process_memory_bytes"
                  for s in f.samples]
        assert [(s.labels["user"], s.labels["holder"], s.value) for s in memory] == [(user.name, holder, 777 * 2**20)]
        # another scientist sees the memory, not whose it is
        other_view = metrics_get(platform, scientist.token, "api/current").json()["gpus"][index]
        assert [(p["user"], p["holder"], p["pid"]) for p in other_view["processes"]] == [(None, None, None)]
        assert other_view["holders"] == [] and other_view["held"] is True
        assert user.name not in metrics_get(platform, scientist.token, "api/current").json()["users"]

        # accounting while it holds the GPU: the viewer sees the user's row, the user their own only
        rows = {r["name"]: r for r in metrics_get(platform, viewer.token, "api/accounting",
                                                  start=started - 1).json()["users"]}
        assert rows[user.name]["gpu_hours"]["whole"] > 0
        own = metrics_get(platform, user.token, "api/accounting", start=started - 1).json()
        assert [r["name"] for r in own["users"]] == [user.name]
        assert own["total"]["gpu_hours_total"] >= own["users"][0]["gpu_hours_total"]
        theirs = metrics_get(platform, scientist.token, "api/accounting", start=started - 1).json()
        assert user.name not in [r["name"] for r in theirs["users"]]
        assert theirs["total"]["gpu_hours_total"] >= rows[user.name]["gpu_hours_total"]
    finally:
        changed.write_text(layout)
        changed.replace(nvml_file)
        platform.stop_server(user)

    # released: the holding is history with its exact end, so its hours stop growing
    def hours():
        answer = metrics_get(platform, viewer.token, "api/accounting", start=started - 1).json()
        return {r["name"]: r for r in answer["users"]}[user.name]["gpu_hours"]["whole"]

    first = hours()
    assert 0 < first < (time.time() - started) / 3600
    assert hours() == first
    table = metrics_get(platform, viewer.token, "api/accounting.csv", start=started - 1, by="user")
    assert table.headers["Content-Type"].startswith("text/csv")
    assert [row for row in csv.reader(io.StringIO(table.text)) if row[0] == user.name][0][1] == f"{first:.6f}"


def test_prometheus_text_needs_a_stakeholders_token_and_bad_reads_get_a_precise_400(platform, scientist, viewer):
    assert metrics_get(platform, None, "metrics").status_code == 401
    refused = metrics_get(platform, scientist.token, "metrics")
    assert refused.status_code == 403 and "viewer" in refused.json()["message"]
    scraped = requests.get(f"{platform.url}/services/metrics/metrics", timeout=30,  # as Prometheus sends it
                           headers={"Authorization": f"Bearer {viewer.token}"})
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(scraped.text)}
    assert {"aidc_gpu_utilization_percent", "aidc_gpu_info", "aidc_host_cpu_percent"} <= names
    # the jobs service's figures, read by the metrics service with its own token (as a viewer's)
    summary = requests.get(f"{platform.url}/services/jobs/api/summary", timeout=30,
                           headers={"Authorization": f"token {viewer.token}"}).json()
    kept = poll(lambda: metrics_get(platform, viewer.token, "api/current").json().get("jobs") or {},
                lambda j: j.get("counts") == summary["counts"])
    assert kept["running_gpus"] == summary["running_gpus"] and kept["oldest_wait_seconds"] >= 0
    jobs = [f for f in text_string_to_metric_families(metrics_get(platform, viewer.token, "metrics").text)
            if f.name == "aidc_jobs_by_status"][0]
    assert {s.labels["status"]: s.value for s in jobs.samples} == summary["counts"]
    now = time.time()
    for path, params, message in [
        ("api/history", {}, "name a metric"),
        ("api/history", {"metric": "gpu_nope"}, "unknown metric 'gpu_nope'"),
        ("api/history", {"metric": "host_cpu_percent", "start": now, "end": now - 60}, "must be after start"),
        ("api/history", {"metric": "host_cpu_percent", "step": "0.2"}, "step must be at least 1 s"),
        ("api/history", {"metric": "host_cpu_percent", "start": "yesterday"}, "start must be epoch seconds or an ISO 8601"),
        ("api/accounting", {"start": now, "end": now - 1}, "must be after start"),
        ("api/accounting.csv", {"by": "planet"}, "by must be user or group"),
    ]:
        r = metrics_get(platform, viewer.token, path, **params)
        assert r.status_code == 400 and message in r.json()["message"], (path, params, r.text)
    own = metrics_get(platform, scientist.token, "api/history", metric="gpu_process_memory_bytes", user="someone")
    assert own.status_code == 404 and "no figures of user 'someone'" in own.json()["message"]
