"""The platform on one real PostgreSQL database (``c.Platform.db_url``), through a restart.

One platform for the whole file (it is the expensive part): the hub, the GPU ledger, the
jobs store and the model registry all keep their tables in one PostgreSQL database of the
session's server (``postgres`` fixture), no SQLite file is made, concurrent spawns take
GPUs through the ledger's PostgreSQL path (never two holders for one GPU, a queue that
moves on), and after every process of the platform stops and starts again, nothing is
lost: users and tokens, the job and its output, the model, its deployment and its answers.
The database password is in no command line and no log; the drop-in's other ``c.Platform``
settings (log rotation) reach the hub too.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import psutil
import pytest
import sqlalchemy as sa

from aidc.gpu import inventory
from aidc.gpu.ledger import GPULedger
import postgres_helpers
from conftest import fake_nvml_env
from jobs_helpers import jobs_api, notebook, put, submit, wait, wait_service
from platform_helpers import Platform, free_port, new_prefix, own_platform_drop_ins, run_aidc

torch = pytest.importorskip("torch")  # installed by `make test`; the import is only slow

pytestmark = pytest.mark.platform

#: two whole GPUs, so that three concurrent GPU spawns queue one of them
TWO_GPUS = [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559} for _ in range(2)]

CONFIG = """
c.Platform.db_url = {url!r}
# small logs, so that rotation (handed down by aidc up to the hub and every service) shows
c.Platform.log_max_bytes = 20000
c.Platform.log_backups = 2
c.GPUAllocationMixin.resource_profiles = [
    dict(id="cpu", display_name="CPU only", description="no GPU", gpus=0, cpu_cores=1, memory_gb=2, default=True),
    dict(id="gpu-1", display_name="1 GPU", description="one GPU", gpus=1, cpu_cores=1, memory_gb=2),
]
c.JobCluster.use_cuda = False
"""


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2.0


def test_aidc_up_refuses_a_database_that_does_not_answer_and_never_shows_its_password(tmp_path):
    url = f"postgresql://aidc:not-to-be-shown@127.0.0.1:{free_port()}/aidc"
    r = run_aidc("up", "--db-url", "-", data_dir=tmp_path / "data", input=url + "\n")
    assert r.returncode != 0
    assert "cannot use the platform database postgresql://aidc:***@127.0.0.1:" in r.stderr + r.stdout
    assert "not-to-be-shown" not in r.stderr + r.stdout
    assert not (tmp_path / "data" / "secrets" / "db-url").exists()  # nothing remembered
    r = run_aidc("up", "--db-url", "not a url", data_dir=tmp_path / "data")
    assert r.returncode != 0 and "not an SQLAlchemy URL" in r.stderr + r.stdout


@pytest.mark.parametrize("fast", [True, False], ids=["psycopg", "sqlalchemy"])
def test_ledger_on_postgresql_never_double_allocates_and_outlives_a_dropped_connection(postgres, fast):
    """Both decision paths (plain SQL on psycopg, SQLAlchemy Core) from four processes at once."""
    url = postgres.create_database(f"ledger_{'fast' if fast else 'core'}")
    ledger = GPULedger(db_url=url, node="n1", driver_fast_path=fast)
    ledger.sync_inventory(inventory.simulated(8))
    procs = [multiprocessing.get_context("spawn").Process(  # a light module to import
        target=postgres_helpers.hammer_ledger, args=(url, w, 30, fast)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    granted = [c for c in ledger.claims() if c.state == "granted"]
    units = [u["id"] for c in granted for u in c.units]
    assert len(units) == len(set(units)) == sum(c.count for c in granted)
    assert {h for h in held(ledger.engine).values()} == {c.holder for c in granted if c.count}
    assert free_counts_match_units(ledger.engine)

    # the server drops every connection of the ledger (a restart, a failover): it reconnects
    assert ledger.request("job:before", "u", 1).state in ("granted", "queued")
    with ledger.engine.connect() as c:
        c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    after = ledger.request("job:after", "u", 1)
    assert after.state in ("granted", "queued")
    assert ledger.release("job:before") is not None
    assert free_counts_match_units(ledger.engine)

    # a statement that fails inside a decision rolls all of it back; the next one works
    with ledger.engine.begin() as c:
        c.execute(sa.text("ALTER TABLE gpu_claims ADD CONSTRAINT refuse CHECK (holder <> 'job:refused')"))
    before = held(ledger.engine)
    with pytest.raises(Exception, match="refuse"):
        ledger.request("job:refused", "u", 1)
    assert held(ledger.engine) == before and free_counts_match_units(ledger.engine)
    assert ledger.request("job:next", "u", 1).state in ("granted", "queued")


def test_ledger_decides_in_one_postgresql_function_call_with_the_same_answers(postgres):
    """Decisions without a quota are one call of a function the ledger creates in the schema
    of its tables; they answer exactly as the three-round-trip pipeline does, errors
    included, and a ledger of a newer aidc replaces an older version of the functions."""
    from aidc.gpu.ledger import PG_FUNCTIONS_VERSION, ImpossibleRequestError, QuotaExceededError

    url = postgres.create_database("ledger_functions")
    setup = sa.create_engine(url)
    with setup.begin() as c:
        c.execute(sa.text("CREATE SCHEMA team_a"))
        c.execute(sa.text("ALTER DATABASE ledger_functions SET track_functions = 'pl'"))  # calls counted
    setup.dispose()
    in_schema = sa.engine.make_url(url).update_query_dict({"options": "-csearch_path=team_a"})
    in_db = GPULedger(db_url=in_schema.render_as_string(hide_password=False), node="n1")
    piped = GPULedger(db_url=postgres.create_database("ledger_pipeline"), node="n1", pg_functions=False)
    for ledger in (in_db, piped):
        ledger.sync_inventory(inventory.simulated(4))
        ledger.add_node("n2", inventory.simulated(2))

    def answer(call):
        try:
            c = call()
        except (ImpossibleRequestError, QuotaExceededError) as e:
            return type(e).__name__, str(e)
        return c if c is None or isinstance(c, list) else (
            c.state, c.position, c.owner, c.count, c.kind, [(u["id"], u["holder"], u["simulated"]) for u in c.units])

    steps = [
        lambda l: l.request("job:1", "ann", 2),          # best fit: n2 (2 free) before n1 (4)
        lambda l: l.request("job:2", "bob", 3),          # n1
        lambda l: l.request("job:3", "bob", 0),          # nothing to take: granted
        lambda l: l.request("job:4", "cy", 2),           # queued, 1st
        lambda l: l.request("job:5", "cy", 1, priority=5),  # ahead of job:4 in the queue: fits on n1
        lambda l: l.request("job:4", "cy", 2),           # asked again: the same claim
        lambda l: l.request("job:6", "cy", 5),           # more than any node has
        lambda l: l.poll("job:5"),
        lambda l: l.poll("job:none"),
        lambda l: l.release("job:1"),                    # job:4 gets n2, then job:5 n1
        lambda l: l.poll("job:4"),
        lambda l: l.poll("job:5"),
        lambda l: l.release("job:4"),
        lambda l: l.release("job:never"),
    ]
    for i, step in enumerate(steps):
        mine, theirs = answer(lambda: step(in_db)), answer(lambda: step(piped))
        if isinstance(mine, list):
            mine, theirs = sorted(mine), sorted(theirs)
        assert mine == theirs, f"step {i}"
    assert answer(lambda: in_db.request("job:6", "cy", 5))[1].startswith(
        "asked for 5 whole GPUs, but any node of this platform has 4 (simulated)")
    assert answer(lambda: in_db.poll("job:4")) is None
    assert [c.holder for c in in_db.claims()] == [c.holder for c in piped.claims()]
    assert free_counts_match_units(in_db.engine)

    # a quota: decided by the pipeline, on the same tables, under the same lock
    quota = GPULedger(db_url=in_schema.render_as_string(hide_password=False), node="n1",
                      default_quota={"max_gpus": 3})
    assert answer(lambda: quota.request("job:7", "bob", 1))[0] == "QuotaExceededError"
    assert quota.request("job:8", "dee", 1).state == "granted"
    assert free_counts_match_units(in_db.engine)

    # each request of in_db (8) was one call of the function; the quota's went the other way
    calls = sa.text("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
                    "WHERE schemaname = 'team_a' AND funcname = 'aidc_ledger_request'")
    deadline = time.monotonic() + 60  # a server process reports its counts when idle
    with in_db.engine.connect() as c:
        while (n := c.execute(calls).scalar_one()) < 8 and time.monotonic() < deadline:
            c.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            c.rollback()
            time.sleep(0.2)
    assert n == 8

    # the functions are the ledger's own, in its schema, with their version
    functions = sa.text("SELECT n.nspname, p.proname, obj_description(p.oid, 'pg_proc') FROM pg_proc p "
                        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname LIKE 'aidc_ledger_%'")
    with in_db.engine.connect() as c:
        rows = c.execute(functions).all()
    assert {(schema, name) for schema, name, _ in rows} == {("team_a", f"aidc_ledger_{f}") for f in (
        "take", "grant_queued", "claim", "request", "poll", "release")}
    assert f"aidc GPU ledger functions v{PG_FUNCTIONS_VERSION}" in {note for *_, note in rows}

    # an older aidc's functions (here: a request function that grants nothing) are replaced
    with in_db.engine.begin() as c:
        c.execute(sa.text(
            "CREATE OR REPLACE FUNCTION team_a.aidc_ledger_request(p_holder text, p_holder_kind text, "
            "p_owner text, p_groups text, p_count int, p_kind text, p_priority int, p_now double precision) "
            "RETURNS json LANGUAGE sql AS $$ SELECT NULL::json $$"))
        c.execute(sa.text("COMMENT ON FUNCTION team_a.aidc_ledger_release(text, double precision) "
                          "IS 'aidc GPU ledger functions v0'"))
    upgraded = GPULedger(db_url=in_schema.render_as_string(hide_password=False), node="n1")
    granted = upgraded.request("job:9", "eve", 1)
    assert granted.state == "granted" and [u["holder"] for u in granted.units] == ["job:9"]
    assert free_counts_match_units(in_db.engine)

@pytest.fixture(scope="module")
def pg_platform(postgres, tmp_path_factory):
    url = postgres.create_database("aidc_platform")
    root = tmp_path_factory.mktemp("pg")
    root.chmod(0o711)
    p = Platform(root / "platform", prefix=new_prefix(), env=fake_nvml_env(root, TWO_GPUS))
    own_platform_drop_ins(p.data_dir)
    (p.data_dir / "config.d" / "50-postgres.py").write_text(CONFIG.format(url=url))
    p.start(timeout=240)
    engine = sa.create_engine(url)
    yield p, engine, postgres.password
    engine.dispose()
    p.stop()
    p.remove_users()


def claims(engine) -> dict[str, str]:
    with engine.connect() as c:
        return dict(c.execute(sa.text("SELECT holder, state FROM gpu_claims")).all())


def held(engine) -> dict[str, str]:
    with engine.connect() as c:
        return dict(c.execute(sa.text("SELECT id, holder FROM gpu_units WHERE holder IS NOT NULL")).all())


def free_counts_match_units(engine) -> bool:
    """The ledger's free-count table agrees with its units (kept in the same transactions)."""
    with engine.connect() as c:
        counted = c.execute(sa.text("SELECT coalesce(sum(free), 0) FROM gpu_node_free")).scalar_one()
        free = c.execute(sa.text(
            "SELECT count(*) FROM gpu_units WHERE holder IS NULL AND present")).scalar_one()
    return counted == free


def wait_until(what, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, f"not true in {timeout}s: {what.__doc__ or what}"
        time.sleep(0.3)
    return value


def test_platform_on_postgresql_survives_a_restart_of_every_process(pg_platform):
    p, engine, password = pg_platform
    import aidc
    from aidc.client import Client

    # one database: every store's tables, each store its own alembic version table; no SQLite
    tables = set(sa.inspect(engine).get_table_names())
    assert {"users", "api_tokens", "alembic_version", "gpu_units", "gpu_claims", "gpu_node_free",
            "aidc_jobs", "aidc_jobs_alembic_version", "aidc_models",
            "aidc_models_alembic_version"} <= tables
    assert list(p.data_dir.rglob("*.sqlite")) == []
    url_file = p.data_dir / "secrets" / "db-url"
    assert url_file.stat().st_mode & 0o777 == 0o600

    # three GPU spawns at once on two GPUs: two granted (different GPUs), one queued
    admin = p.token("admin")
    users = [p.new_user("scientist") for _ in range(3)]
    answers = {}
    threads = [threading.Thread(target=lambda u=u: answers.__setitem__(u.name, p.spawn(u, "gpu-1")))
               for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code in (201, 202) for r in answers.values()), answers
    servers = {f"server:{u.name}/": u for u in users}
    wait_until(lambda: len(claims(engine)) == 3 and sorted(claims(engine).values()) == [
        "granted", "granted", "queued"])
    state = claims(engine)
    holding = sorted(h for h, s in state.items() if s == "granted")
    waiting = next(h for h, s in state.items() if s == "queued")
    assert sorted(held(engine).values()) == holding  # one GPU each, none given twice
    for h in holding:
        p.wait_ready(servers[h])
    assert free_counts_match_units(engine)
    # the first to stop hands its GPU to the one in the queue
    first = servers[holding[0]]
    gpu = next(i for i, h in held(engine).items() if h == holding[0])
    p.stop_server(first)
    p.wait_ready(servers[waiting])
    assert held(engine)[gpu] == waiting
    assert free_counts_match_units(engine)

    # a job, a model and its deployment
    owner = users[1]
    wait_service(p, owner.token)
    put(p, owner, "pg.ipynb", notebook("print('answer', 6 * 7)"))
    job = wait(p, owner, submit(p, owner, "pg.ipynb")["id"])
    assert job["status"] == "completed", job
    client = Client(p.url, owner.token)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    model = aidc.models.register(Doubler().eval(), name="doubler", example=x, client=client)
    assert aidc.models.deploy("doubler", version=model.version, replicas=1, client=client)["ready"]
    np.testing.assert_allclose(aidc.models.predict("doubler", x, client=client), x * 2)

    # the password of the database is on no command line and in no log
    for proc in psutil.process_iter(["cmdline"]):
        assert password not in " ".join(proc.info["cmdline"] or []), proc
    logs = [p.log_path, *(p.data_dir / "logs").glob("*")]
    assert all(password not in f.read_text(errors="replace") for f in logs if f.is_file())

    # every process stops (servers too) and starts again: nothing lost
    p.stop()
    assert not [h for h in claims(engine) if h.startswith("server:")]  # servers gave back their GPUs
    p.start(timeout=240)
    assert p.hub(owner.token, "GET", f"/users/{owner.name}").status_code == 200  # user and token
    wait_service(p, owner.token)
    again = jobs_api(p, owner.token, "GET", f"/jobs/{job['id']}").json()
    assert (again["status"], again["finished"]) == ("completed", job["finished"])
    print(aidc.models.get("doubler", client=client))
    assert [v["version"] for v in aidc.models.get("doubler", client=client)["versions"]] == [model.version]

    def deployment_ready():
        return aidc.models.deployment("doubler", client=client)["ready"]
    wait_until(deployment_ready, timeout=180)
    np.testing.assert_allclose(aidc.models.predict("doubler", x, client=client), x * 2)
    # and the ledger works on: a GPU spawn after the restart
    assert p.spawn(users[0], "gpu-1").status_code in (201, 202)
    p.wait_ready(users[0])
    assert list(held(engine).values()) == [f"server:{users[0].name}/"]
    assert free_counts_match_units(engine)
    assert admin  # the initial administrator's token was made before the restart
    assert p.hub(admin, "GET", "/users").status_code == 200
    # c.Platform's log settings reached the hub and the services: rotated, two kept
    logs = p.data_dir / "logs"
    assert (logs / "hub.log.1").exists() and not (logs / "hub.log.3").exists()
    assert (logs / "hub.log").stat().st_size <= 20000 + 4096
