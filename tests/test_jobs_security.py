"""Issue 10, jobs: the ways out of a user's kernel through the jobs service.

- the symlink race: a scientist's kernel swaps a folder of her home with a link to
  another user's home (``renameat2(RENAME_EXCHANGE)`` in a loop) while she asks the
  service, which runs as root, for that path's parameters and submits it as a job;
- parameters nested very deep or very large, answered 400 (not 500, not a job that
  never starts);
- schedules firing more often than the minimum interval.

The open helper (:mod:`aidc.security.userfiles`) is also tested in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import threading
import time

import pytest

from aidc.errors import NotFoundError
from aidc.security import userfiles
from jobs_helpers import FINAL, home, jobs_api, notebook, put, submit, wait, wait_service
from platform_helpers import execute

#: runs in the attacker's kernel (and in-process): swap two names atomically, in a loop
SWAPPER = '''
import ctypes, os, platform, time
_libc = ctypes.CDLL(None, use_errno=True)
def exchange(a, b):
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        r = fn(-100, a, -100, b, 2)
    else:  # glibc before 2.28: the raw system call
        r = _libc.syscall({"x86_64": 316, "aarch64": 276}[platform.machine()], -100, a, -100, b, 2)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
def swap_until(a, b, stop, seconds):
    """Exchange ``a`` and ``b`` until ``stop`` exists or ``seconds`` passed; ends as it began."""
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(stop):
        for _ in range(100):
            exchange(a, b)
            n += 1
    if n % 2:
        exchange(a, b)
        n += 1
    return n
'''


def _swapper() -> dict:
    scope: dict = {}
    exec(SWAPPER, scope)
    return scope


# -- the open helper, in-process ---------------------------------------------------------
@pytest.fixture
def homes(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    (mine / "race" / "d").mkdir(parents=True)
    (theirs / "d").mkdir(parents=True)
    (mine / "race" / "d" / "f.txt").write_text("mine")
    (theirs / "d" / "f.txt").write_text("THEIR SECRET")
    return mine, theirs


def test_helper_reads_a_regular_file_of_the_owner(homes):
    mine, _ = homes
    uid = os.getuid()
    assert userfiles.read_file(mine, "race/d/f.txt", uid=uid) == b"mine"
    assert userfiles.read_file(mine, "./race//d/../d/f.txt", uid=uid) == b"mine"
    assert userfiles.read_file(mine, str(mine / "race/d/f.txt"), uid=uid) == b"mine"
    assert userfiles.read_file(mine, "race/d/f.txt", uid=None) == b"mine"
    with userfiles.open_file(mine, "race/d/f.txt", uid=uid) as f:
        assert stat.S_ISREG(f.stat.st_mode) and str(f.path) == "race/d/f.txt"


@pytest.mark.parametrize("path, words", [
    ("../theirs/d/f.txt", "outside your home"),
    ("race/../../theirs/d/f.txt", "outside your home"),
    ("/etc/passwd", "outside your home"),
    ("", "path relative to your home"),
    ("race/d/f\0.txt", "NUL"),
    (".", "home directory itself"),
])
def test_helper_refuses_paths_out_of_the_home(homes, path, words):
    mine, _ = homes
    with pytest.raises(userfiles.UserPathError, match=words):
        userfiles.read_file(mine, path, uid=os.getuid())


def test_helper_refuses_a_symbolic_link_anywhere_in_the_path(homes):
    mine, theirs = homes
    os.symlink(theirs, mine / "link")                        # a folder that is a link
    os.symlink(theirs / "d" / "f.txt", mine / "file-link")   # a file that is a link
    os.symlink("race", mine / "inner")                       # even one that stays inside
    for path in ("link/d/f.txt", "file-link", "inner/d/f.txt"):
        with pytest.raises(userfiles.UserPathError, match="symbolic link"):
            userfiles.read_file(mine, path, uid=None)
    with pytest.raises(userfiles.UserPathError, match="give the real path"):
        userfiles.read_file(mine, str(mine / "link" / "d" / "f.txt"), uid=None)


def test_helper_refuses_other_owners_non_files_and_big_files(homes):
    mine, _ = homes
    with pytest.raises(userfiles.UserPathError, match="does not belong to you"):
        userfiles.read_file(mine, "race/d/f.txt", uid=os.getuid() + 1)
    with pytest.raises(userfiles.UserPathError, match="is not a file"):
        userfiles.read_file(mine, "race/d", uid=None)
    with pytest.raises(userfiles.UserPathError, match="is not a folder"):
        userfiles.read_file(mine, "race/d/f.txt/x", uid=None)
    with pytest.raises(NotFoundError, match="does not exist"):
        userfiles.read_file(mine, "race/nothing/f.txt", uid=None)
    with pytest.raises(NotFoundError, match="does not exist"):
        userfiles.read_file(mine.parent / "no-home", "f.txt", uid=None)
    os.mkfifo(mine / "fifo")  # opening a FIFO for reading would block a plain open()
    started = time.monotonic()
    with pytest.raises(userfiles.UserPathError, match="is not a file"):
        userfiles.read_file(mine, "fifo", uid=None)
    assert time.monotonic() - started < 1
    (mine / "big").write_bytes(b"x" * 5000)
    with pytest.raises(userfiles.FileTooLargeError, match="files up to 4 KiB"):
        userfiles.read_file(mine, "big", uid=None, max_bytes=4096)
    # the limit holds on the read too (a file that grows after it was opened)
    with userfiles.open_file(mine, "race/d/f.txt", uid=None, max_bytes=10) as f:
        (mine / "race" / "d" / "f.txt").write_text("grown far beyond ten bytes")
        with pytest.raises(userfiles.FileTooLargeError):
            f.read(10)


def test_a_swap_after_the_open_reads_the_opened_file_and_before_it_is_refused(homes):
    mine, theirs = homes
    exchange = _swapper()["exchange"]
    os.symlink(theirs, mine / "race-link")
    a, b = bytes(mine / "race"), bytes(mine / "race-link")
    with userfiles.open_file(mine, "race/d/f.txt", uid=os.getuid()) as f:
        exchange(a, b)  # now race -> theirs: what was opened is still what is read
        assert os.path.islink(mine / "race")
        assert f.read() == b"mine"
    with pytest.raises(userfiles.UserPathError, match=r"goes through a symbolic link \(race\)"):
        userfiles.read_file(mine, "race/d/f.txt", uid=os.getuid())
    exchange(a, b)


def test_a_swapping_loop_never_leaks_in_process(homes):
    """The attack of the issue, in-process: only 'mine' or a 4xx-style error, ever."""
    mine, theirs = homes
    scope = _swapper()
    os.symlink(theirs, mine / "race-link")
    stop = mine / "stop"
    t = threading.Thread(target=scope["swap_until"], daemon=True,
                         args=(bytes(mine / "race"), bytes(mine / "race-link"), str(stop), 20))
    t.start()
    seen: dict[str, int] = {}
    try:
        for _ in range(3000):
            try:
                data = userfiles.read_file(mine, "race/d/f.txt", uid=os.getuid())
                assert data == b"mine", data
                seen["read"] = seen.get("read", 0) + 1
            except (userfiles.UserPathError, NotFoundError) as e:
                seen[type(e).__name__] = seen.get(type(e).__name__, 0) + 1
    finally:
        stop.touch()
        t.join(30)
    assert seen.get("read") and seen.get("UserPathError"), seen  # both sides of the swap were hit


# -- the platform --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jobs_up(platform, scientist):
    wait_service(platform, scientist.token)
    return platform


def test_symlink_race_from_a_kernel_never_reads_another_users_notebook(jobs_up, scientist, other_scientist):
    platform = jobs_up
    platform.start_server(scientist)
    tag = secrets.token_hex(4)
    marker = f"VICTIM-SECRET-{secrets.token_hex(8)}"
    victim_home = home(platform, other_scientist)
    attacker_home = home(platform, scientist)
    put(platform, other_scientist, "d/train.ipynb", notebook(
        "print(secret)", parameters=f"secret = {marker!r}  # {marker}"))
    name = f"race-{tag}"
    put(platform, scientist, f"{name}/d/train.ipynb", notebook("print(mine)", parameters="mine = 1"))
    started, stop = attacker_home / f"{name}.started", attacker_home / f"{name}.stop"
    # the attack, in the attacker's own kernel (her Unix account): a link to the victim's
    # home, exchanged with her real folder as fast as the kernel can, for at most 40 s
    code = SWAPPER + (
        f"os.chdir({str(attacker_home)!r})\n"
        f"os.symlink({str(victim_home)!r}, {name + '.link'!r})\n"
        f"open({started.name!r}, 'w').close()\n"
        f"print('swaps', swap_until({name.encode()!r}, {(name + '.link').encode()!r}, {stop.name!r}, 40))\n"
    )
    out: list[str] = []
    attacker = threading.Thread(target=lambda: out.append(execute(platform, scientist, code, timeout=90)),
                                daemon=True)
    attacker.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and attacker.is_alive(), out
        time.sleep(0.1)
    path = f"{name}/d/train.ipynb"
    answers: dict[int, int] = {}
    messages: set[str] = set()
    jobs: list[str] = []
    try:
        for i in range(240):
            r = jobs_api(platform, scientist.token, "GET", "/parameters", params={"path": path})
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            assert marker not in r.text, f"another user's parameters leaked: {r.text}"
            assert r.status_code in (200, 400, 404), (r.status_code, r.text)
            if r.status_code == 200:
                assert [p["name"] for p in r.json()["parameters"]] == ["mine"], r.text
            else:
                messages.add(r.json()["message"])
            if i % 16 == 0:
                r = jobs_api(platform, scientist.token, "POST", "/jobs", json={"path": path})
                assert marker not in r.text
                assert r.status_code in (201, 400, 404), (r.status_code, r.text)
                if r.status_code == 201:
                    jobs.append(r.json()["id"])
    finally:
        stop.touch()
        attacker.join(60)
    assert out and "swaps" in out[0], out
    assert int(out[0].split()[-1]) > 1000, out  # the swap really ran while we asked
    assert answers.get(200) and answers.get(400), answers  # both sides of the swap were seen
    assert any("symbolic link" in m for m in messages), messages
    # every job made ends, and none ever held the victim's notebook
    for job_id in jobs:
        done = wait(platform, scientist, job_id, timeout=180)
        assert done["status"] in FINAL
        for which in ("input", "output"):
            r = jobs_api(platform, scientist.token, "GET", f"/jobs/{job_id}/{which}")
            assert marker not in r.text
        assert marker not in jobs_api(platform, scientist.token, "GET", f"/jobs/{job_id}/logs").text


def test_parameters_through_a_link_are_refused_with_a_clear_message(jobs_up, scientist, other_scientist):
    platform = jobs_up
    put(platform, scientist, "real/p.ipynb", notebook("print(x)", parameters="x = 1"))
    link = home(platform, scientist) / "linked"
    if not link.is_symlink():
        os.symlink(home(platform, scientist) / "real", link)
        os.lchown(link, *(lambda s: (s.st_uid, s.st_gid))(home(platform, scientist).stat()))
    r = jobs_api(platform, scientist.token, "GET", "/parameters", params={"path": "linked/p.ipynb"})
    assert r.status_code == 400 and "symbolic link" in r.json()["message"], r.text
    r = jobs_api(platform, scientist.token, "POST", "/jobs", json={"path": "linked/p.ipynb"})
    assert r.status_code == 400 and "give the real path" in r.json()["message"], r.text
    # a file planted in her home by someone else is not hers to run
    planted = put(platform, other_scientist, "planted.ipynb", notebook("print(1)"))
    target = home(platform, scientist) / "planted.ipynb"
    target.write_bytes(planted.read_bytes())
    os.chown(target, home(platform, other_scientist).stat().st_uid, -1)
    r = jobs_api(platform, scientist.token, "POST", "/jobs", json={"path": "planted.ipynb"})
    assert r.status_code == 400 and "does not belong to you" in r.json()["message"], r.text


def _nested(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


@pytest.mark.parametrize("levels", [100_000, 900, 33])
def test_deeply_nested_parameters_are_refused_with_400(jobs_up, scientist, levels):
    platform = jobs_up
    put(platform, scientist, "deep.ipynb", notebook("print(x)", parameters="x = [1]"))
    body = '{"path": "deep.ipynb", "parameters": {"x": ' + _nested(levels) + "}}"
    before = len(jobs_api(platform, scientist.token, "GET", "/jobs").json()["jobs"])
    for url in ("/jobs", "/schedules", "/sweeps"):
        if url == "/schedules":
            text = body[:-1] + ', "cron": "0 3 * * *"}'
        elif url == "/sweeps":
            text = '{"path": "deep.ipynb", "grid": {"x": [' + _nested(levels) + "]}}"
        else:
            text = body
        r = jobs_api(platform, scientist.token, "POST", url, data=text,
                     headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (url, r.status_code, r.text[:500])
        message = r.json()["message"]
        assert "nest" in message and "32" in message, message
    assert len(jobs_api(platform, scientist.token, "GET", "/jobs").json()["jobs"]) == before
    if levels == 33:  # 32 levels are fine
        job = submit(platform, scientist, "deep.ipynb", parameters={"x": json.loads(_nested(32))})
        assert wait(platform, scientist, job["id"])["status"] == "completed"


def test_oversized_parameters_are_refused_with_400(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "big.ipynb", notebook("print(len(x))", parameters="x = 'small'"))
    r = jobs_api(platform, scientist.token, "POST", "/jobs",
                 json={"path": "big.ipynb", "parameters": {"x": "a" * 600_000}})
    assert r.status_code == 400, r.text[:300]
    assert "at most 512 KiB" in r.json()["message"], r.json()
    r = jobs_api(platform, scientist.token, "POST", "/jobs",
                 json={"path": "big.ipynb", "parameters": {"x": "a" * 1000}})
    assert r.status_code == 201
    wait(platform, scientist, r.json()["id"])


def test_a_schedule_running_every_second_is_refused(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "often.ipynb", notebook("print(1)"))
    before = jobs_api(platform, scientist.token, "GET", "/schedules").json()["schedules"]
    for cron in ("* * * * * *", "0 0 1 1 * 0,1"):
        r = jobs_api(platform, scientist.token, "POST", "/schedules",
                     json={"path": "often.ipynb", "cron": cron})
        assert r.status_code == 400, r.text
        message = r.json()["message"]
        assert "would run 1 s after a previous run" in message and "at most once every" in message, message
    assert jobs_api(platform, scientist.token, "GET", "/schedules").json()["schedules"] == before


# -- a launch that fails ends the job failed, in-process --------------------------------
class _Claim:
    visible_devices = ""
    units: list = []


class _Ledger:
    def release(self, holder):
        pass


class _BrokenClient:
    def submit(self, *args, **kwargs):
        raise RuntimeError("the scheduler went away")


class _BrokenTokens:
    async def mint(self, *args):
        raise ConnectionRefusedError(111, "Connection refused")

    async def revoke(self, *args):
        pass


@pytest.mark.parametrize("broken, words", [
    ("client", "could not be started (RuntimeError: the scheduler went away)"),
    ("tokens", "could not be started (ConnectionRefusedError"),
    ("owner", "could not be started: "),
])
def test_a_job_whose_launch_fails_ends_failed_with_the_reason(tmp_path, monkeypatch, broken, words):
    from aidc.jobs import manager as manager_module
    from aidc.jobs.artifacts import ArtifactStore
    from aidc.jobs.manager import JobManager
    from aidc.jobs.store import FAILED, RUNNING, JobStore

    monkeypatch.setenv("AIDC_DATA_DIR", str(tmp_path))
    store = JobStore(data_dir=str(tmp_path))
    manager = JobManager(store, ArtifactStore(url=str(tmp_path / "artifacts")), _Ledger(), str(tmp_path),
                         tokens=_BrokenTokens() if broken == "tokens" else None)
    manager.client = _BrokenClient()
    Owner = manager_module.notebooks.Owner

    def owner_of(name, data_dir):
        if broken == "owner":  # the account was removed since the job was submitted
            raise NotFoundError(f"user {name!r} has no Unix account (jupyter-{name}) on this platform")
        return Owner(name=name, home=tmp_path / "homes" / name, unix_name=None)

    monkeypatch.setattr(Owner, "of", staticmethod(owner_of))
    job = store.insert_job(owner="ann", groups=[], input_url="x", output_url="y", path="p.ipynb",
                           parameters={}, gpus=0, timeout=None, cell_timeout=None, priority=0,
                           retries=0, cells=1)

    async def go():
        manager._launch(job, _Claim())
        for _ in range(100):
            if store.job(job["id"])["status"] != RUNNING:
                break
            await asyncio.sleep(0.02)

    asyncio.run(go())
    done = store.job(job["id"])
    assert done["status"] == FAILED, done
    assert words in done["error"], done["error"]
