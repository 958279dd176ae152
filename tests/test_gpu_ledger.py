"""The allocation ledger on its own: quotas, queue order, durability, many processes at once."""

import json
import multiprocessing
import subprocess
import sys

import pytest
import sqlalchemy as sa

from aidc.gpu import inventory
from aidc.gpu.ledger import GPULedger, ImpossibleRequestError, QuotaExceededError, gpu_units


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'aidc.sqlite'}"


def make(db_url, gpus=4, **traits) -> GPULedger:
    ledger = GPULedger(db_url=db_url, node="n1", **traits)
    ledger.sync_inventory(inventory.simulated(gpus))
    return ledger


def test_grants_then_queues_in_order_and_hands_over_on_release(db_url):
    ledger = make(db_url, gpus=2)
    assert ledger.request("server:a/", "a", 1).state == "granted"
    assert ledger.request("server:b/", "b", 1).state == "granted"
    c = ledger.request("server:c/", "c", 1)
    d = ledger.request("server:d/", "d", 1)
    assert (c.state, c.position, d.position) == ("queued", 1, 2)
    freed = ledger.release("server:a/")
    assert freed == ["n1/gpu0"]
    assert ledger.poll("server:c/").units[0]["id"] == "n1/gpu0"
    assert ledger.poll("server:d/").position == 1


def test_higher_priority_group_goes_first(db_url):
    ledger = make(db_url, gpus=1, group_priority={"oncall": 10})
    ledger.request("server:a/", "a", 1)
    ledger.request("server:b/", "b", 1)
    urgent = ledger.request("server:c/", "c", 1, groups=["oncall"])
    assert urgent.position == 1
    ledger.release("server:a/")
    assert ledger.poll("server:c/").state == "granted"
    assert ledger.poll("server:b/").state == "queued"


def test_multi_gpu_requests_stay_on_one_node(db_url):
    ledger = make(db_url, gpus=2)
    ledger.add_node("n2", inventory.simulated(2))
    ledger.request("job:1", "a", 1)  # n1 has one left, n2 has two
    claim = ledger.request("job:2", "b", 2)
    assert {u["node"] for u in claim.units} == {"n2"}
    with pytest.raises(ImpossibleRequestError, match="any node of this platform has 2"):
        ledger.request("job:3", "c", 3)


def test_user_and_group_quotas(db_url):
    ledger = make(db_url, gpus=4, default_quota={"max_gpus": 2, "max_servers": 1},
                  group_quotas={"team": {"max_gpus": 3}})
    ledger.request("server:a/", "a", 1, groups=["team"])
    with pytest.raises(QuotaExceededError, match="user a may use at most 1 running servers"):
        ledger.request("server:a/second", "a", 1, groups=["team"])
    ledger.request("job:a1", "a", 1, groups=["team"])
    with pytest.raises(QuotaExceededError, match="user a may use at most 2 GPUs; 2 in use"):
        ledger.request("job:a2", "a", 1, groups=["team"])
    ledger.request("job:b1", "b", 1, groups=["team"])
    with pytest.raises(QuotaExceededError, match="group team may use at most 3 GPUs; 3 in use"):
        ledger.request("job:b2", "b", 1, groups=["team"])
    assert ledger.request("job:x", "x", 1).state == "granted"  # outsiders are not affected


def test_state_survives_a_new_process(db_url):
    ledger = make(db_url, gpus=2)
    ledger.request("server:a/", "a", 1)
    ledger.request("server:b/", "b", 1)
    ledger.request("server:c/", "c", 1)
    code = (
        "import json; from aidc.gpu.ledger import GPULedger\n"
        f"l = GPULedger(db_url={db_url!r}, node='n1')\n"
        "print(json.dumps([(c.holder, c.state, c.position) for c in l.claims()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [["server:a/", "granted", 0], ["server:b/", "granted", 0],
                                      ["server:c/", "queued", 1]]


def _hammer(db_url: str, worker: int, rounds: int) -> None:
    ledger = GPULedger(db_url=db_url, node="n1")
    for i in range(rounds):
        holder = f"job:{worker}-{i}"
        ledger.request(holder, f"u{worker}", 1 + i % 2)
        ledger.poll(holder)
        if i % 3:
            ledger.release(holder)


def test_many_processes_never_double_allocate(db_url):
    make(db_url, gpus=8)
    procs = [multiprocessing.get_context("spawn").Process(target=_hammer, args=(db_url, w, 40))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = GPULedger(db_url=db_url, node="n1")
    granted = [c for c in ledger.claims() if c.state == "granted"]
    held = [u["id"] for c in granted for u in c.units]
    assert len(held) == len(set(held))
    assert sum(c.count for c in granted) == len(held)
    with ledger.engine.connect() as conn:
        holders = {r.holder for r in conn.execute(sa.select(gpu_units)) if r.holder}
    assert holders == {c.holder for c in granted if c.count}
