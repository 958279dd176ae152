"""The audit log's tamper evidence: a hash chain over its lines, and signed checkpoints.

Every line of ``audit.jsonl`` is the canonical JSON of one event (keys sorted, no spaces)
with two fields added by the writer: ``__seq__``, its number (1, 2, ... across rotated
files), and ``__prev__``, the SHA-256 of the previous line's bytes (64 zeros for the first).
Editing, deleting, inserting or reordering a line breaks the chain at that line.

A chain alone does not stop someone who can write the file from rewriting all of it with
fresh hashes, nor from cutting off its end. So the writer also keeps, beside the log:

- ``audit.head``: the last line's number and hash and the log's size, with an HMAC-SHA256
  under the platform's audit key (``secrets/audit-key``, 0600), rewritten in place with
  every line: a cut-off or edited tail no longer matches it;
- ``audit.checkpoints``: every :data:`CHECKPOINT_EVERY` lines, one signed line
  ``{"seq", "hash", "mac", "time"}``, appended: a rewritten chain no longer matches them.

Writers in several processes (the hub, the ``aidc`` CLI) append under an exclusive
``flock`` on ``audit.lock``, so the chain stays one line after another. A writer that died
between its line and the head leaves a head one line behind; the next writer sees the log's
size differ from the head's, reads the last line back, and goes on from there.

When the log passes ``max_bytes`` it is renamed ``audit.<first seq, 12 digits>.jsonl`` and a
new one begins; the chain goes on across files (the new file's first ``__prev__`` is the old
file's last hash), and :func:`verify` walks the files in order.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

GENESIS = "0" * 64
#: a signed checkpoint every this many lines (the head covers the lines after the last one)
CHECKPOINT_EVERY = 1000
#: the log is rotated when it passes this size
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: the head's fixed size on disk (its JSON padded with spaces), so that it is rewritten in place
_HEAD_BYTES = 256
_ROTATED = re.compile(r"^audit\.(\d{12})\.jsonl$")


def canonical(event: dict[str, Any]) -> bytes:
    """The bytes of ``event`` as the log stores them: sorted keys, no spaces, UTF-8."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _mac(key: bytes, *parts: object) -> str:
    return hmac.new(key, ":".join(str(p) for p in parts).encode(), hashlib.sha256).hexdigest()


def load_key(path: Path) -> bytes:
    """The audit key at ``path``, created (32 random bytes, hex, 0600) on first use."""
    try:
        return path.read_text().strip().encode()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex())
    return path.read_text().strip().encode()


def _private_append(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` (None for an empty or missing file)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block = b""
            pos = end
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                f.seek(pos)
                block = f.read(step) + block
                lines = block.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    last = lines[-1]
                    return last or None
    except FileNotFoundError:
        return None
    return None


@dataclass
class ChainedLog:
    """Appends events to ``path`` as links of the chain (see the module's docstring)."""

    path: Path
    key_path: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    _key: bytes = field(default=b"", repr=False)
    #: this process's open files: pid, lock, head, and the log with its inode (flock is per
    #: open file, so a forked child opens its own; a rotated log is opened anew)
    _files: dict | None = field(default=None, repr=False)
    #: threads of one process share its lock file, which flock does not tell apart
    _threads: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: (seq, hash, (inode, size)) after this process's last line: current while the log is
    #: that file at that size (rotation makes a new file; only appends change the size)
    _last: tuple[int, str, tuple[int, int]] | None = field(default=None, repr=False)

    @property
    def head_path(self) -> Path:
        return self.path.with_suffix(".head")

    @property
    def checkpoints_path(self) -> Path:
        return self.path.with_suffix(".checkpoints")

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def append(self, event: dict[str, Any]) -> int:
        """Add ``event`` (without ``__seq__``/``__prev__``) to the chain; its number."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._key:
            self._key = load_key(self.key_path)
        with self._threads:
            return self._append(event)

    def _append(self, event: dict[str, Any]) -> int:
        key = self._key
        files = self._open_files()
        lock = files["lock"]
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seq, prev = self._tail(key)
            if self.max_bytes and seq and self._size() >= self.max_bytes:
                self._rotate()
            line = canonical({**event, "__seq__": seq + 1, "__prev__": prev})
            os.write(self._log_fd(files), line + b"\n")
            seq, digest = seq + 1, line_hash(line)
            self._write_head(key, seq, digest)
            if seq % CHECKPOINT_EVERY == 0:
                fd = _private_append(self.checkpoints_path)
                try:
                    os.write(fd, canonical({"seq": seq, "hash": digest, "mac": _mac(key, seq, digest),
                                            "time": round(time.time(), 3)}) + b"\n")
                finally:
                    os.close(fd)
            return seq
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_files(self) -> dict:
        if self._files is None or self._files["pid"] != os.getpid():
            head = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(head, 0o600)
            self._files = {"pid": os.getpid(), "lock": _private_append(self.lock_path), "head": head,
                           "log": None, "ino": None}
        return self._files

    # -- under the lock ----------------------------------------------------------------------
    def _log_fd(self, files: dict) -> int:
        """This process's descriptor of the current log file (opened anew after a rotation)."""
        ino = self._identity()[0]
        if files["log"] is None or files["ino"] != ino or not ino:
            if files["log"] is not None:
                os.close(files["log"])
            files["log"] = _private_append(self.path)
            files["ino"] = os.fstat(files["log"]).st_ino
        return files["log"]

    def _size(self) -> int:
        return self._identity()[1]

    def _identity(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_size)

    def _tail(self, key: bytes) -> tuple[int, str]:
        """The number and hash of the chain's last line: from the head when it is current,
        else read back from the log (a writer died before updating the head)."""
        identity = self._identity()
        if self._last is not None and self._last[2] == identity and identity[1]:
            return self._last[0], self._last[1]  # nobody wrote since this process did
        size = identity[1]
        head = read_head(self.head_path)
        if head and head.get("size") == size and hmac.compare_digest(
                head.get("mac", ""), _mac(key, head.get("seq"), head.get("hash"), size)):
            return int(head["seq"]), str(head["hash"])
        last = _last_line(self.path)
        if last is None:
            rotated = rotated_files(self.path)
            last = _last_line(rotated[-1]) if rotated else None
        if last is None:
            return 0, GENESIS
        return int(json.loads(last)["__seq__"]), line_hash(last)

    def _write_head(self, key: bytes, seq: int, digest: str) -> None:
        """Overwrite the head in place: one write of a fixed-size record (a rename per event
        took 0.4 ms here). A process dying mid-event leaves the old head or the new one; a
        head torn by a power cut is caught by its signature and rebuilt from the log."""
        identity = self._identity()
        size = identity[1]
        record = canonical({"seq": seq, "hash": digest, "size": size, "mac": _mac(key, seq, digest, size)})
        os.pwrite(self._open_files()["head"], record.ljust(_HEAD_BYTES - 1) + b"\n", 0)
        self._last = (seq, digest, identity)

    def _rotate(self) -> None:
        first = _first_line(self.path)
        start = int(json.loads(first)["__seq__"]) if first else 0
        os.rename(self.path, self.path.with_name(f"audit.{start:012d}.jsonl"))


def _first_line(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.readline().rstrip(b"\n") or None
    except FileNotFoundError:
        return None


def read_head(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of the log at ``path``, oldest first."""
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if _ROTATED.match(p.name))


def log_files(path: Path) -> list[Path]:
    """Every file of the log, oldest first (rotated ones, then the current one)."""
    return [*rotated_files(path), *([path] if path.exists() else [])]


def iter_lines(path: Path) -> Iterator[tuple[Path, int, bytes]]:
    """(file, line number in that file, bytes) of every line of the log, oldest first."""
    for f in log_files(path):
        with open(f, "rb") as handle:
            for n, raw in enumerate(handle, 1):
                line = raw.rstrip(b"\n")
                if line:
                    yield f, n, line


@dataclass
class Verdict:
    """What :func:`verify` found: ``ok``, the lines read, and the first problem."""

    ok: bool
    records: int
    problem: str = ""
    checkpoints: int = 0
    details: dict = field(default_factory=dict)


def verify(path: Path, key: bytes) -> Verdict:
    """Walk the whole chain of the log at ``path``; name the first problem.

    A line whose ``__prev__`` is not the previous line's hash: when the previous line's
    number is one less, that previous line was edited (or this one's link was); a number
    that skips ahead means lines were deleted, one that repeats or goes back means lines
    were inserted or reordered. Then the signed checkpoints and head must match the hashes
    of the lines they name, and the log must reach the head's line: a shorter log was cut.
    """
    seq, prev = 0, GENESIS
    hashes: dict[int, str] = {}
    checkpoints = read_checkpoints(path)
    wanted = {c["seq"] for c in checkpoints}
    head = read_head(path.with_suffix(".head"))
    if head:
        wanted.add(head.get("seq"))
    count = 0
    for f, n, line in iter_lines(path):
        links = _links(line)
        if links is None:
            return Verdict(False, count, f"{f.name} line {n}: not a record of the chain (unreadable or unlinked)")
        number, link = links
        where = f"{f.name} line {n}"
        count += 1
        if number != seq + 1:
            if number <= seq:
                return Verdict(False, count, f"{where}: record {number} comes after record {seq}: "
                                              "a record was inserted or records were reordered",
                               details={"seq": number, "after": seq})
            missing = range(seq + 1, number)
            later = _later_position(path, f, n, set(missing))
            if later is not None:  # the missing record is further on: moved, not deleted
                return Verdict(False, count, f"{where}: record {number} follows record {seq}, and record "
                                              f"{later[0]} comes later ({later[1]}): records were reordered",
                               details={"seq": later[0], "after": seq})
            return Verdict(False, count, f"{where}: record {number} follows record {seq}: "
                                          f"record(s) {seq + 1}..{number - 1} were deleted",
                           details={"seq": number, "after": seq})
        if link != prev:
            return Verdict(False, count, f"{where}: record {number} does not link to record {seq}: "
                                          f"record {seq} was edited (or this record's link was)",
                           details={"seq": seq})
        digest = line_hash(line)
        if number in wanted:
            hashes[number] = digest
        seq, prev = number, digest
    for c in checkpoints:
        problem = _mark_problem(c, _mac(key, c.get("seq"), c.get("hash")), seq, hashes,
                                f"checkpoint of record {c.get('seq')}", "a checkpoint",
                                "its signed checkpoint: the chain up to it was rewritten")
        if problem:
            return Verdict(False, count, problem)
    if seq and head is None:
        return Verdict(False, count, "the signed head (audit.head) is missing", checkpoints=len(checkpoints))
    if head is not None:
        problem = _mark_problem(head, _mac(key, head.get("seq"), head.get("hash"), head.get("size")), seq,
                                hashes, "the signed head (audit.head)", "the signed head",
                                "the signed head: the end of the log was rewritten")
        if problem:
            return Verdict(False, count, problem)
        if head["seq"] < seq:
            return Verdict(False, count, f"records {head['seq'] + 1}..{seq} come after the signed head: "
                                          "added without the audit writer")
    return Verdict(True, count, checkpoints=len(checkpoints))


_FAST_START = b'{"__metadata_version__":1,"__prev__":"'
_SEQ_KEY = b',"__seq__":'


def _links(line: bytes) -> tuple[int, str] | None:
    """``(__seq__, __prev__)`` of a line, or None when it has none.

    Lines written by jupyter-events through the chain all begin with the same bytes in
    canonical JSON (``__metadata_version__``, then ``__prev__``, the keys sorted), so the
    link and the number are read from their places without parsing the whole line: verify
    walks a million lines in a few seconds. Any other line is parsed."""
    if line.startswith(_FAST_START) and line[len(_FAST_START) + 64:len(_FAST_START) + 66] == b'",':
        at = line.find(_SEQ_KEY, len(_FAST_START) + 66)
        if at > 0:
            start = at + len(_SEQ_KEY)
            end = start
            while end < len(line) and 48 <= line[end] <= 57:
                end += 1
            if end > start and line[end:end + 1] in (b",", b"}"):
                return int(line[start:end]), line[len(_FAST_START):len(_FAST_START) + 64].decode()
    try:
        event = json.loads(line)
        return int(event["__seq__"]), str(event["__prev__"])
    except (ValueError, KeyError, TypeError):
        return None


def _mark_problem(mark: dict, expected_mac: str, last_seq: int, hashes: dict[int, str],
                  name: str, names: str, differs: str) -> str | None:
    """What is wrong with a signed checkpoint or head against the chain just walked: a
    signature that does not match, a record beyond the log's end (cut), or another hash."""
    if not hmac.compare_digest(str(mark.get("mac", "")), expected_mac):
        return f"{name} does not match its signature (forged or edited)"
    if mark["seq"] > last_seq:
        return f"the log ends at record {last_seq}, but {names} names record {mark['seq']}: the log was cut"
    if hashes.get(mark["seq"]) != mark["hash"]:
        return f"record {mark['seq']} differs from {differs}"
    return None


def _later_position(path: Path, file: Path, line_no: int, numbers: set[int]) -> tuple[int, str] | None:
    """The first of ``numbers`` found after ``file`` line ``line_no`` (a failure-time scan)."""
    passed = False
    for f, n, line in iter_lines(path):
        if not passed:
            passed = (f, n) == (file, line_no)
            continue
        links = _links(line)
        if links is None:
            continue
        number = links[0]
        if number in numbers:
            return number, f"{f.name} line {n}"
    return None


def read_checkpoints(path: Path) -> list[dict]:
    try:
        raw = path.with_suffix(".checkpoints").read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"seq": -1, "hash": "", "mac": ""})  # fails its signature check
    return out
