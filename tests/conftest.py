"""Fixtures that start real processes.

- ``platform``: one real platform for the whole session (``aidc up`` with JupyterHub,
  configurable-http-proxy and a test service from ``tests/services/echo.py``, registered
  through a drop-in config file). Its GPUs come from the fake NVML in
  ``tests/fake_nvml`` (``GPU_LAYOUT``: four whole GPUs and one in MIG mode). Users made with ``platform.new_user(role)`` are real
  Unix accounts, removed at the end.
- ``scientist``, ``other_scientist``, ``viewer``, ``admin``: users of ``platform`` with
  API tokens (``admin`` is the platform's initial administrator).
- ``fresh_platform``: a factory for a separate platform per test, not yet started
  (CLI offline mode, shutdown tests, other authenticators), with Unix accounts under a
  prefix of its own; stopped and cleaned up afterwards.
- ``postgres``: one real PostgreSQL 15 server for the session (``initdb`` in a temporary
  folder, run as the ``postgres`` account, 127.0.0.1 with a password; see
  ``tests/postgres_helpers.py``); ``postgres.create_database(name)`` gives a URL.

Tests that use one of these (directly or through another fixture) are marked
``platform`` (see ``PLATFORM_FIXTURES``), as is any module that starts one itself, so
``make test PYTEST_ARGS="-m 'not platform'"`` runs the fast tests alone: in-process
state machines (with the fakes of ``tests/mocking.py``), single kernels, model servers
and Dask clusters, without a hub.

Helpers live in ``tests/platform_helpers.py`` (the ``Platform`` class, ``execute`` to run code
in a kernel over its websocket).
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from platform_helpers import Platform, User, new_prefix, own_platform_drop_ins

TESTS = Path(__file__).parent

#: fixtures that start a whole platform (hub, proxy, services, Unix accounts)
PLATFORM_FIXTURES = {"platform", "fresh_platform", "ext_platform"}


def pytest_collection_modifyitems(items):
    for item in items:
        if PLATFORM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.platform)

#: drop-in hub config used by the session platform
TEST_CONFIG = f"""
import sys
from aidc.hub.services import ManagedService, register

sys.path.insert(0, {str(TESTS / 'services')!r})
register(ManagedService(
    name="echo",
    command=[sys.executable, {str(TESTS / 'services' / 'echo.py')!r}],
    hub_scopes=["list:users"],
))
register(ManagedService(
    name="science-only",
    command=[sys.executable, {str(TESTS / 'services' / 'echo.py')!r}],
    roles=["scientist"],
))
# a small limit so the throttle test is quick; addresses are not limited here because
# every test signs in from 127.0.0.1
c.LoginThrottle.max_failures_per_user = 3
c.LoginThrottle.lockout_seconds = 5
# inference calls reach the audit log counted per 2 s (a minute by default)
c.CallTally.period = 2
c.LoginThrottle.max_failures_per_ip = 100000
# GPU tests: a profile larger than the machine, and a quota
c.GPUAllocationMixin.resource_profiles = [
    dict(id="cpu", display_name="CPU only", description="no GPU", gpus=0, cpu_cores=1, memory_gb=2, default=True),
    dict(id="gpu-1", display_name="1 GPU", description="one GPU", gpus=1, cpu_cores=1, memory_gb=4),
    dict(id="gpu-2", display_name="2 GPUs", description="two GPUs", gpus=2, cpu_cores=2, memory_gb=4),
    dict(id="gpu-8", display_name="8 GPUs", description="more than exist", gpus=8, cpu_cores=2, memory_gb=4),
    dict(id="mig-1", display_name="MIG", description="one MIG slice", gpus=1, gpu_kind="mig", cpu_cores=1, memory_gb=2),
]
c.GPULedger.user_quotas = {{"quotauser": {{"max_gpus": 1}}}}
# jobs: the fake NVML is not CUDA, so no dask-cuda; quick retries
c.JobCluster.use_cuda = False
c.JobManager.retry_backoff = 0.5
# the schedules test fires every 2 s (the default minimum between runs is 60 s)
c.JobManager.min_schedule_interval = 2
# models: names open to public read (v2 metadata and inference without a token)
c.ModelRegistry.public_models = ["demo-*"]
"""


def _remove_stale_test_accounts() -> None:
    """Accounts left by an earlier, interrupted run (their data dir is gone)."""
    for pw in pwd.getpwall():
        if not pw.pw_gecos.startswith("aidc /tmp/aidc-tests-"):
            continue
        if not Path(pw.pw_gecos.split(" ", 1)[1]).exists():
            subprocess.run(["pkill", "-KILL", "-u", pw.pw_name], capture_output=True)
            subprocess.run(["userdel", "--remove", pw.pw_name], capture_output=True)


@pytest.fixture(scope="session")
def tmp_root():
    _remove_stale_test_accounts()
    # /tmp is world-traversable; the data dir itself is made 0700 by aidc
    root = Path(tempfile.mkdtemp(prefix="aidc-tests-"))
    root.chmod(0o711)  # the development-mode test runs a platform as another account
    yield root
    shutil.rmtree(root, ignore_errors=True)


#: what the fake NVML reports to the platforms of the suite
GPU_LAYOUT = [
    *({"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559} for _ in range(4)),
    {"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "mig": [
        {"name": "MIG 3g.20gb", "memory_mb": 19968}, {"name": "MIG 3g.20gb", "memory_mb": 19968}]},
]


def fake_nvml_env(tmp_root: Path, layout=GPU_LAYOUT) -> dict:
    path = tmp_root / f"gpus-{len(list(tmp_root.glob('gpus-*.json')))}.json"
    path.write_text(json.dumps(layout))
    return {"PYTHONPATH": str(TESTS / "fake_nvml"), "AIDC_FAKE_NVML": str(path)}


@pytest.fixture(scope="session")
def platform(tmp_root):
    p = Platform(tmp_root / "platform", prefix=new_prefix(), env=fake_nvml_env(tmp_root))
    (p.data_dir / "config.d").mkdir(parents=True)
    (p.data_dir / "config.d" / "50-tests.py").write_text(TEST_CONFIG)
    p.start()
    yield p
    p.stop()
    p.remove_users()


@pytest.fixture(scope="session")
def admin(platform) -> User:
    user = User("admin", platform.admin_password, "admin")
    user.token = platform.token("admin")
    return user


@pytest.fixture(scope="session")
def scientist(platform) -> User:
    return platform.new_user("scientist")


@pytest.fixture(scope="session")
def other_scientist(platform) -> User:
    return platform.new_user("scientist")


@pytest.fixture(scope="session")
def viewer(platform) -> User:
    return platform.new_user("viewer")


@pytest.fixture(scope="session")
def postgres():
    import postgres_helpers

    if not postgres_helpers.available():
        pytest.fail("the PostgreSQL tests need PostgreSQL 15: run `make test-system-deps` as root "
                    "(apt-get install postgresql)")
    with postgres_helpers.PostgresServer() as server:
        yield server


@pytest.fixture
def fresh_platform(tmp_path):
    made: list[Platform] = []

    def make(config: str | None = None, prefix: str | None = None,
             env: dict | None = None, dask_at_start: bool = False) -> Platform:
        """A platform of the test's own. Its jobs service starts Dask with the first job
        (``c.JobCluster.start_with``), as most of these tests run none: pass
        ``dask_at_start=True`` for the product's default, a cluster started with the service."""
        p = Platform(tmp_path / f"platform{len(made)}", prefix=prefix or new_prefix(),
                     env=env or {})
        own_platform_drop_ins(p.data_dir, config, dask_at_start)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
        p.remove_users()
