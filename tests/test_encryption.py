"""Encryption at rest (``aidc.security.crypto``, ``aidc.security.keys``, ``aidc keys``).

In process and fast: objects of every size round-trip through the store's encrypting
writer and decrypting reader; changed, cut, moved or wrongly keyed ciphertext is refused
with the object named; the key ring refuses a missing or wrong key before anything runs;
``aidc keys rotate`` re-wraps every object's data key without touching its data, and a
key is retired only once nothing uses it. Vault's transit engine is the KMS example,
against a fake of its HTTP API (the one piece that cannot run here). The platform side
(datasets on disk are ciphertext, read back as plaintext) is in ``test_data.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aidc import artifacts
from aidc.cli.main import main as cli
from aidc.security import crypto
from aidc.security.crypto import DecryptionError
from aidc.security.keys import (EncryptionKeyError, EnvKeyProvider, FileKeyProvider, KeyRing,
                                VaultTransitKeyProvider)


def ring(tmp_path: Path) -> KeyRing:
    keys = KeyRing(FileKeyProvider(folder=str(tmp_path / "secrets" / "kek")), tmp_path / "secrets" / "kek.json")
    keys.check(create=True)
    return keys


def seal(keys, identity: str, data: bytes, chunk: int = 64) -> bytes:
    out = io.BytesIO()
    w = crypto.EncryptingWriter(out, keys, identity, chunk=chunk)
    for i in range(0, len(data), 50):  # writes that do not line up with chunks
        w.write(data[i:i + 50])
    w.close()
    return out.getvalue()


def unseal(keys, identity: str, sealed: bytes) -> bytes:
    with crypto.open_decrypted_read(io.BytesIO(sealed), keys, identity) as f:
        return f.read()


def unseal_mapped(keys, identity: str, sealed: bytes, folder: Path) -> bytes:
    """As the store reads its own files: opened straight from a mapping of the file."""
    path = folder / "stored.bin"
    path.write_bytes(sealed)
    with crypto.open_decrypted_read(open(path, "rb"), keys, identity, mapped=True) as f:
        if sealed.startswith(b"AIDCENC1"):
            assert f.raw.mapping is not None  # chunks are opened from the mapping
        return f.read()


@pytest.fixture(params=["in memory", "mapped file"])
def unsealer(request, tmp_path):
    if request.param == "in memory":
        return unseal
    return lambda keys, identity, sealed: unseal_mapped(keys, identity, sealed, tmp_path)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200, 64 * 5])
def test_objects_of_any_size_round_trip_and_hold_no_plaintext(tmp_path, size, unsealer):
    keys = ring(tmp_path)
    data = (b"SECRET-MARKER-" * 40)[:size]
    sealed = seal(keys, "ds/1/f.bin", data)
    assert sealed.startswith(b"AIDCENC1")
    if size >= 14:
        assert b"SECRET-MARKER" not in sealed
    assert unsealer(keys, "ds/1/f.bin", sealed) == data


def test_changed_cut_reordered_or_moved_ciphertext_is_refused_with_the_object_named(tmp_path, unsealer):
    unseal = unsealer
    keys = ring(tmp_path)
    data = os.urandom(64 * 3 + 10)
    sealed = seal(keys, "ds/1/a.bin", data)
    body = crypto.PREFIX + crypto.HEADER_SIZE
    sealed_chunk = 64 + crypto.TAG

    flipped = bytearray(sealed)
    flipped[body + 5] ^= 1
    with pytest.raises(DecryptionError, match="ds/1/a.bin does not decrypt"):
        unseal(keys, "ds/1/a.bin", bytes(flipped))
    # cut at a chunk boundary: the chunk that is now last was not sealed as the last one
    with pytest.raises(DecryptionError, match="does not decrypt"):
        unseal(keys, "ds/1/a.bin", sealed[:body + 2 * sealed_chunk])
    with pytest.raises(DecryptionError, match="does not decrypt"):
        unseal(keys, "ds/1/a.bin", sealed[:body])
    swapped = (sealed[:body] + sealed[body + sealed_chunk:body + 2 * sealed_chunk]
               + sealed[body:body + sealed_chunk] + sealed[body + 2 * sealed_chunk:])
    with pytest.raises(DecryptionError, match="does not decrypt"):
        unseal(keys, "ds/1/a.bin", swapped)
    # the same bytes under another object's name (copied over it on disk)
    with pytest.raises(DecryptionError, match="ds/2/b.bin"):
        unseal(keys, "ds/2/b.bin", sealed)
    # another platform's key
    with pytest.raises(DecryptionError):
        unseal(ring(tmp_path / "other"), "ds/1/a.bin", sealed)
    # a plain object stored before encryption was on reads as it is; an encrypted one
    # without keys is a clear refusal
    assert unseal(keys, "old/plain.txt", b"written before") == b"written before"
    with pytest.raises(DecryptionError, match="no key to read it"):
        unseal(None, "ds/1/a.bin", sealed)


def test_the_store_encrypts_below_its_root_and_seeks_in_decrypted_archives(tmp_path):
    import numpy as np

    keys = ring(tmp_path)
    root = str(tmp_path / "files")
    artifacts.encrypt_under(root, keys)
    try:
        buf = io.BytesIO()
        np.savez(buf, weights=np.full(1000, 7.25))
        with artifacts.open_write(f"{root}/model-ds/u1/data.npz") as f:
            f.write(buf.getvalue())
        raw = Path(root, "model-ds/u1/data.npz").read_bytes()
        assert raw.startswith(b"AIDCENC1") and b"PK\x03\x04" not in raw
        with artifacts.open_read(f"{root}/model-ds/u1/data.npz", seekable=True) as f:
            assert np.load(f)["weights"][3] == 7.25
        # an interrupted write publishes nothing
        with pytest.raises(RuntimeError), artifacts.open_write(f"{root}/model-ds/u1/b.bin") as f:
            f.write(b"half")
            raise RuntimeError("connection lost")
        assert sorted(p.name for p in Path(root, "model-ds/u1").iterdir()) == ["data.npz"]
    finally:
        artifacts._ENCRYPTED.pop(root)


def test_the_key_ring_refuses_a_missing_or_wrong_key_before_anything_runs(tmp_path):
    keys = ring(tmp_path)
    folder = tmp_path / "secrets" / "kek"
    first = keys.current_id()
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert (folder / f"{first}.key").stat().st_mode & 0o777 == 0o600
    assert keys.check() == first  # a second start finds it

    key_file = folder / f"{first}.key"
    saved = key_file.read_text()
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(EncryptionKeyError, match=f"{first} is not the key this platform encrypted with"):
        keys.check()
    key_file.unlink()
    with pytest.raises(EncryptionKeyError, match=f"{first} is missing"):
        keys.check(create=True)  # a platform that had keys never silently makes a new one
    key_file.write_text(saved)
    assert keys.check() == first

    # `aidc up` says it and starts nothing
    key_file.unlink()
    r = subprocess.run([sys.executable, "-m", "aidc.cli.main", "up", "--data-dir", str(tmp_path),
                        "--port", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"the key-encryption key {first} is missing" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "jupyterhub.sqlite").exists() and not list(tmp_path.glob("*.sqlite"))


def test_an_environment_key_and_its_errors(tmp_path, monkeypatch):
    provider = EnvKeyProvider()
    monkeypatch.delenv("AIDC_KEK", raising=False)
    with pytest.raises(EncryptionKeyError, match="AIDC_KEK is not set"):
        provider.current_id()
    monkeypatch.setenv("AIDC_KEK", "not-a-key")
    with pytest.raises(EncryptionKeyError, match="must be base64 of 32 bytes"):
        provider.current_id()
    monkeypatch.setenv("AIDC_KEK", base64.b64encode(os.urandom(32)).decode())
    keys = KeyRing(provider, tmp_path / "kek.json")
    keys.check(create=True)
    sealed = seal(keys, "x/1/y", b"env-wrapped")
    assert unseal(keys, "x/1/y", sealed) == b"env-wrapped"
    with pytest.raises(EncryptionKeyError, match="cannot add keys"):
        keys.rotate()
    monkeypatch.setenv("AIDC_KEK", base64.b64encode(os.urandom(32)).decode())  # the wrong key
    with pytest.raises(EncryptionKeyError, match="is missing"):
        keys.check()


class FakeVault(BaseHTTPRequestHandler):
    """Vault's transit engine as far as aidc uses it: key info, encrypt and decrypt with a
    derivation context, rotate. Ciphertexts are ``vault:v<N>:<base64>`` as Vault's are."""

    keys: dict[int, bytes] = {}
    token = "s.fake-token"

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _allowed(self) -> bool:
        if self.headers.get("X-Vault-Token") != self.token:
            self._answer(403, {"errors": ["permission denied"]})
            return False
        return True

    def do_GET(self):
        if self._allowed():
            self._answer(200, {"data": {"latest_version": max(self.keys),
                                        "keys": {str(v): 0 for v in self.keys}}})

    def do_POST(self):
        if not self._allowed():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        action = self.path.split("/")[3]
        if action == "keys":  # /v1/transit/keys/aidc/rotate
            self.keys[max(self.keys) + 1] = os.urandom(32)
            return self._answer(204)
        context = base64.b64decode(body["context"])
        if action == "encrypt":
            version = body.get("key_version") or max(self.keys)
            nonce = os.urandom(12)
            sealed = AESGCM(self.keys[version]).encrypt(nonce, base64.b64decode(body["plaintext"]), context)
            return self._answer(200, {"data": {"ciphertext": f"vault:v{version}:"
                                               + base64.b64encode(nonce + sealed).decode()}})
        _, version, blob = body["ciphertext"].split(":")
        raw = base64.b64decode(blob)
        try:
            plain = AESGCM(self.keys[int(version[1:])]).decrypt(raw[:12], raw[12:], context)
        except Exception:
            return self._answer(400, {"errors": ["cipher: message authentication failed"]})
        self._answer(200, {"data": {"plaintext": base64.b64encode(plain).decode()}})


@pytest.fixture
def vault(monkeypatch):
    FakeVault.keys = {1: os.urandom(32)}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("VAULT_TOKEN", FakeVault.token)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_vault_transit_wraps_rotates_and_rewraps(tmp_path, vault, monkeypatch):
    keys = KeyRing(VaultTransitKeyProvider(url=vault), tmp_path / "kek.json")
    assert keys.check(create=True) == "vault:aidc:v1"
    sealed = bytearray(seal(keys, "ds/1/f", b"kept by vault"))
    header = crypto.read_header(bytes(sealed))
    assert header["kek"] == "vault:aidc:v1" and header["wrapped"].startswith(b"vault:v1:")  # Vault's own
    assert keys.rotate() == "vault:aidc:v2"
    f = io.BytesIO(sealed)
    assert crypto.rewrap(f, keys, "ds/1/f") == "vault:aidc:v1"
    assert crypto.key_of(f.getvalue()) == "vault:aidc:v2"
    assert f.getvalue()[crypto.PREFIX + crypto.HEADER_SIZE:] == sealed[crypto.PREFIX + crypto.HEADER_SIZE:]
    assert unseal(keys, "ds/1/f", f.getvalue()) == b"kept by vault"
    monkeypatch.setenv("VAULT_TOKEN", "s.wrong")
    with pytest.raises(DecryptionError, match="Vault refused decrypt/aidc \\(403\\)"):
        unseal(keys, "ds/1/f", f.getvalue())


def test_aidc_keys_rotate_rewraps_every_object_and_retires_the_old_key(tmp_path, capsys):
    data_dir = tmp_path / "platform"
    (data_dir / "secrets").mkdir(parents=True)
    root = str(data_dir.resolve() / "datasets" / "files")
    keys = KeyRing.for_data_dir(data_dir)
    old = keys.check(create=True)
    artifacts.encrypt_under(root, keys)
    try:
        for i in range(3):
            with artifacts.open_write(f"{root}/ds{i}/u/f{i}.csv") as f:
                f.write(f"a,b\n{i},secret-{i}\n".encode())
    finally:
        artifacts._ENCRYPTED.pop(root)
    Path(root, "legacy").mkdir()
    Path(root, "legacy", "plain.txt").write_bytes(b"stored before encryption")
    data_before = {p: p.read_bytes()[crypto.PREFIX + crypto.HEADER_SIZE:] for p in Path(root).rglob("f*.csv")}
    before = Path(root, "ds0", "u", "f0.csv").read_bytes()

    assert cli(["keys", "list", "--data-dir", str(data_dir)]) == 0
    listed = capsys.readouterr().out
    assert f"{old}  current  3 object(s)" in listed and "before encryption)  1 object(s)" in listed

    assert cli(["keys", "retire", old, "--data-dir", str(data_dir)]) == 2
    assert "is the current key" in capsys.readouterr().err

    assert cli(["keys", "rotate", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    new = keys.current_id()
    assert new != old and f"new current key {new}; 3 object(s) re-wrapped" in out
    for p, body in data_before.items():
        raw = p.read_bytes()
        assert crypto.key_of(raw) == new and raw[crypto.PREFIX + crypto.HEADER_SIZE:] == body  # data untouched
    artifacts.encrypt_under(root, keys)
    try:
        with artifacts.open_read(f"{root}/ds1/u/f1.csv") as f:
            assert f.read() == b"a,b\n1,secret-1\n"
    finally:
        artifacts._ENCRYPTED.pop(root)

    # an object restored from a backup taken before the rotation still needs the old key
    restored = Path(root, "ds0", "u", "f0.csv")
    rotated = restored.read_bytes()
    restored.write_bytes(before)
    assert cli(["keys", "retire", old, "--data-dir", str(data_dir)]) == 2
    assert f"1 stored object(s) still use {old}" in capsys.readouterr().err
    restored.write_bytes(rotated)

    assert cli(["keys", "retire", old, "--data-dir", str(data_dir)]) == 0
    assert not (data_dir / "secrets" / "kek" / f"{old}.key").exists()
    assert keys.check() == new  # a retired key is not missed at the next start
    assert cli(["keys", "retire", "nope", "--data-dir", str(data_dir)]) == 2
    assert "no key 'nope'" in capsys.readouterr().err

    # every rotation and retirement, refused ones too, is in the audit log (the chain intact)
    from aidc.paths import DataDir
    from aidc.security import audit

    log = DataDir(data_dir).audit_log
    events = [(e["action"], e["target"], e["result"], e.get("previous"), e.get("objects"))
              for e in audit.read_events(log) if e["__schema__"].endswith("/key")]
    assert events == [("retire", old, "failure", None, None), ("rotate", new, "success", old, 3),
                      ("retire", old, "failure", None, None), ("retire", old, "success", None, None),
                      ("retire", "nope", "failure", None, None)]
    assert all(e["actor"].startswith("cli:") for e in audit.read_events(log))
    assert cli(["audit", "verify", "--data-dir", str(data_dir)]) == 0


def test_each_job_has_its_own_key_which_its_worker_gets_and_rotation_rewraps_only_job_keys(tmp_path, capsys):
    """The jobs' store: a worker given one job's key (as the task spec carries it) reads
    that job's snapshot and writes its output, which the service reads; the same worker
    cannot open another job's objects; ``aidc keys rotate`` re-wraps the job keys (the only
    objects under the KEK) and the old KEK can then be retired with every output readable."""
    from aidc.jobs import jobkeys
    from aidc.jobs.artifacts import JobArtifactStore

    data_dir = tmp_path / "platform"
    (data_dir / "secrets").mkdir(parents=True)
    keys = KeyRing.for_data_dir(data_dir)
    old = keys.check(create=True)
    store = JobArtifactStore(url=str(data_dir.resolve() / "jobs" / "artifacts"))
    store.encrypt_with(keys)
    try:
        for job in ("j1", "j2"):
            store.write_bytes(store.job_url(job, "input.ipynb"), f"snapshot of {job} MARKER".encode())
        spec = {"job_id": "j1", "output_url": store.job_url("j1", "output.ipynb"),
                "artifact_key": store.worker_key("j1")}
        raw = Path(store.job_url("j1", "input.ipynb")).read_bytes()
        assert b"MARKER" not in raw and crypto.key_of(raw) == "job:j1"
        assert crypto.key_of(Path(store.job_url("j1", "job.key")).read_bytes()) == old
    finally:
        artifacts._ENCRYPTED.pop(store.url)

    # a worker process: it holds only j1's key, from the spec
    assert jobkeys.hold_for_attempt(spec)
    try:
        assert artifacts.read_bytes(store.job_url("j1", "input.ipynb")) == b"snapshot of j1 MARKER"
        artifacts.write_bytes(spec["output_url"], b"output of j1 MARKER")
        with pytest.raises(DecryptionError, match="no key for job j2"):
            artifacts.read_bytes(store.job_url("j2", "input.ipynb"))
        # j1's key does not open j2's snapshot copied into j1's folder
        Path(store.job_url("j1", "moved.ipynb")).write_bytes(Path(store.job_url("j2", "input.ipynb")).read_bytes())
        with pytest.raises(DecryptionError):
            artifacts.read_bytes(store.job_url("j1", "moved.ipynb"))
    finally:
        jobkeys.drop_after_attempt(spec)
        artifacts._ENCRYPTED.pop(store.url)
    assert b"MARKER" not in Path(spec["output_url"]).read_bytes()

    assert cli(["keys", "rotate", "--data-dir", str(data_dir)]) == 0
    assert "2 object(s) re-wrapped" in capsys.readouterr().out  # j1's and j2's job.key
    assert cli(["keys", "retire", old, "--data-dir", str(data_dir)]) == 0
    store.encrypt_with(keys)  # the service after a restart, with only the new KEK
    try:
        assert store.read_bytes(spec["output_url"]) == b"output of j1 MARKER"
        assert store.read_bytes(store.job_url("j2", "input.ipynb")) == b"snapshot of j2 MARKER"
    finally:
        artifacts._ENCRYPTED.pop(store.url)


def test_chunks_stream_and_every_cut_or_swap_is_refused(tmp_path):
    """Many chunks (64 bytes each) written and read back in reads of every size: an object of whole chunks ends with an empty last chunk, whose loss is
    caught like any other cut; the reader gives every authenticated chunk before a bad one
    and leaves nothing of the bad one in the caller's buffer; an object sealed the earlier
    way (the last chunk a full one) still reads."""
    keys = ring(tmp_path)
    data = os.urandom(64 * 300)  # whole chunks
    out = io.BytesIO()
    w = crypto.EncryptingWriter(out, keys, "ds/1/big.bin", chunk=64)
    w.write(data[:1000])
    w.write(memoryview(data)[1000:])
    w.close()
    sealed = out.getvalue()
    body, step = crypto.PREFIX + crypto.HEADER_SIZE, 64 + crypto.TAG
    assert len(sealed) == body + 300 * step + crypto.TAG  # the empty last chunk: its tag
    assert unseal(keys, "ds/1/big.bin", sealed) == data
    for size in (10, 64, 1000):  # reads smaller than, one, and many chunks
        got, buffer = bytearray(), memoryview(bytearray(size))
        with crypto.open_decrypted_read(io.BytesIO(sealed), keys, "ds/1/big.bin") as f:
            while n := f.readinto(buffer):
                got += buffer[:n]
        assert got == data

    cuts = {"the empty last chunk dropped": sealed[:-crypto.TAG],
            "a middle chunk dropped": sealed[:body + 5 * step] + sealed[body + 6 * step:],
            "the last two chunks swapped": sealed[:body + 299 * step] + sealed[-crypto.TAG:] + sealed[body + 299 * step:-crypto.TAG]}
    for what, bad in cuts.items():
        with pytest.raises(DecryptionError, match="does not decrypt"):
            unseal(keys, "ds/1/big.bin", bad)

    flipped = bytearray(sealed)
    flipped[body + 100 * step + 3] ^= 1  # chunk 100
    buffer = memoryview(bytearray(64))
    got = bytearray()
    with crypto.open_decrypted_read(io.BytesIO(bytes(flipped)), keys, "ds/1/big.bin") as f:
        with pytest.raises(DecryptionError, match="ds/1/big.bin does not decrypt"):
            while n := f.raw.readinto(buffer):  # the decrypting file itself: into ``buffer``
                got += buffer[:n]
    assert bytes(got) == data[:100 * 64] and bytes(buffer) == bytes(64)

    # the earlier writer held the last bytes back: its last chunk is a full one
    header, aad = crypto.read_header(sealed), b"aidc-object:ds/1/big.bin"
    aead = AESGCM(keys.unwrap(header["kek"], header["wrapped"], aad))
    old = sealed[:body] + b"".join(
        aead.encrypt(header["prefix"] + i.to_bytes(4, "big") + (b"\x01" if i == 2 else b"\x00"),
                     data[i * 64:(i + 1) * 64], aad) for i in range(3))
    assert unseal(keys, "ds/1/big.bin", old) == data[:192]


def test_a_failed_write_surfaces_and_an_abandoned_one_stops(tmp_path):
    """A write of a sealed chunk that fails raises in the writer; ``abandon`` seals no last
    chunk, so what was written does not read."""
    keys = ring(tmp_path)

    class Disk(io.BytesIO):
        def __init__(self, fail_at):
            super().__init__()
            self.writes, self.fail_at = 0, fail_at

        def write(self, b):
            self.writes += 1
            if self.writes == self.fail_at:
                raise OSError(28, "No space left on device")
            return super().write(b)

    w = crypto.EncryptingWriter(Disk(fail_at=5), keys, "ds/1/full.bin", chunk=64)
    with pytest.raises(OSError, match="No space left"):
        w.write(os.urandom(64 * 20))
    w.abandon()
    assert w.closed
    disk = Disk(fail_at=0)
    w = crypto.EncryptingWriter(disk, keys, "ds/1/gone.bin", chunk=64)
    w.write(os.urandom(64 * 3 + 5))
    w.abandon()
    assert w.closed and disk.writes == 4  # the header and three chunks; no last chunk
    with pytest.raises(DecryptionError):
        unseal(keys, "ds/1/gone.bin", disk.getvalue())


def test_folders_go_in_and_out_of_an_encrypted_root_through_the_pool(tmp_path):
    """put_dir seals each file (read ahead while the writer seals), copy_out opens it
    (decrypted into the copy's buffers while the one before is written): both round trip files of no, one and
    several chunks, and the store holds no plaintext."""
    keys = ring(tmp_path)
    root = str(tmp_path / "models")
    artifacts.encrypt_under(root, keys)
    try:
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        files = {"empty": b"", "small.txt": b"MARKER small", "sub/big.bin": b"MARKER" + os.urandom(3 * crypto.CHUNK + 7)}
        for name, content in files.items():
            (src / name).write_bytes(content)
        artifacts.put_dir(src, f"{root}/m/1")
        for name in files:
            raw = Path(root, "m/1", name).read_bytes()
            assert raw.startswith(b"AIDCENC1") and b"MARKER" not in raw
        target = artifacts.copy_out(f"{root}/m/1", tmp_path / "replica" / "1")
        assert {n: (target / n).read_bytes() for n in files} == files
    finally:
        artifacts._ENCRYPTED.pop(root)


def test_copies_seal_on_the_pool_and_stop_cleanly_on_errors(tmp_path):
    """seal_file writes what EncryptingWriter writes (an object of whole chunks ends with an
    empty one, its tag); copy_stream raises a failed write or read in the caller with the
    reader stopped, and copies alone when every pool thread is busy."""
    keys = ring(tmp_path)
    for size in (0, 5, crypto.CHUNK, 2 * crypto.CHUNK + 3):
        data = os.urandom(size)
        out = io.BytesIO()
        crypto.seal_file(io.BytesIO(data), out, keys, "m/1/w.bin")
        sealed = out.getvalue()
        chunks = size // crypto.CHUNK + 1
        assert len(sealed) == crypto.PREFIX + crypto.HEADER_SIZE + size + chunks * crypto.TAG
        assert unseal(keys, "m/1/w.bin", sealed) == data
        if size:
            assert data[:5] not in sealed[crypto.PREFIX + crypto.HEADER_SIZE:]

    class Reads(io.RawIOBase):  # counts the reads; fails at ``fail_at``
        def __init__(self, fail_at=None):
            self.reads, self.fail_at = 0, fail_at

        def readinto(self, b):
            self.reads += 1
            if self.reads == self.fail_at:
                raise OSError(5, "Input/output error")
            b[:] = bytes(len(b))
            return len(b)

    class Full(io.RawIOBase):
        def write(self, b):
            raise OSError(28, "No space left on device")

    src = Reads()
    with pytest.raises(OSError, match="No space left"):
        crypto.copy_stream(src, Full(), 1024)
    assert src.reads <= crypto.RING + 1  # it stopped reading ahead
    with pytest.raises(OSError, match="Input/output error"):
        crypto.copy_stream(Reads(fail_at=3), io.BytesIO(), 1024)

    # every pool thread busy: the copy runs alone, and all of it arrives
    release = threading.Event()
    pool = crypto._pool()
    busy = [pool.submit(release.wait) for _ in range(pool._max_workers)]
    try:
        data = os.urandom(3 * crypto.CHUNK + 1)
        out = io.BytesIO()
        crypto.copy_stream(io.BytesIO(data), out)
        assert out.getvalue() == data
    finally:
        release.set()
        for f in busy:
            f.result()


def test_large_writes_reserve_disk_ahead_and_give_back_what_was_left(tmp_path):
    """The encrypted store's writers ask the disk for blocks ahead of their writes (fewer
    allocations: less CPU per byte, aidc.reserve) and give back what they did not use, so
    an object takes the disk its size says; the file's length never shows the reserve."""
    keys = ring(tmp_path)
    allocated = lambda st: st.st_blocks * 512  # noqa: E731
    with open(tmp_path / "stream.bin", "wb") as raw:
        w = crypto.EncryptingWriter(raw, keys, "ds/1/stream.bin")
        w.write(os.urandom(2 * crypto.CHUNK))
        raw.flush()
        during = os.fstat(raw.fileno())
        assert during.st_size == crypto.sealed_size(2 * crypto.CHUNK) - crypto.TAG  # no last chunk yet
        assert allocated(during) > during.st_size + crypto.CHUNK // 2  # reserved ahead
        w.write(os.urandom(crypto.CHUNK // 2))
        w.close()
    done = os.stat(tmp_path / "stream.bin")
    assert done.st_size == crypto.sealed_size(2 * crypto.CHUNK + crypto.CHUNK // 2)
    assert allocated(done) - done.st_size < 8192  # the rest given back

    # a copy in (its size known: reserved at once) and out (the stored size, an upper bound)
    root = str(tmp_path / "models")
    artifacts.encrypt_under(root, keys)
    try:
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(3 * crypto.CHUNK + 5)
        (src / "w.bin").write_bytes(data)
        artifacts.put_dir(src, f"{root}/m/1")
        stored = Path(root, "m/1/w.bin").stat()
        assert stored.st_size == crypto.sealed_size(len(data))
        assert allocated(stored) - stored.st_size < 8192
        out = artifacts.copy_out(f"{root}/m/1", tmp_path / "replica") / "w.bin"
        assert out.read_bytes() == data
        assert allocated(out.stat()) - len(data) < 8192
    finally:
        artifacts._ENCRYPTED.pop(root)
