"""Each job's own key: how a Dask worker reads its job's input snapshot and writes its
output notebook encrypted at rest without ever holding the platform's key-encryption key.

Workers may run on other machines (an external Dask scheduler), and every worker runs
notebooks of many users; giving each of them the key-encryption key (KEK) would put the key
to every dataset and model on every worker. So the jobs' artifact store has one more level:

- the KEK (:class:`aidc.security.keys.KeyRing`) wraps each job's **job key**, a random
  AES-256 key kept as ``<job>/job.key``, itself an ordinary object encrypted under the KEK;
- the job key wraps the data keys of that job's objects (input snapshot, output notebook,
  attempt markers); their headers name it ``job:<id>``.

The jobs service holds the ring and opens every job's objects (:class:`ServiceJobKeys`).
A worker gets only the key of the job it runs, in the task's spec (over the cluster's TLS
connection; never stored in the job's record), and forgets it when the attempt ends
(:class:`WorkerJobKeys`). A key is bound to its job: the job id is in every data key's
associated data, so a job key cannot open another job's objects even if one were copied
there. ``aidc keys rotate`` re-wraps the ``job.key`` objects only; the objects below them
do not depend on the KEK.
"""

from __future__ import annotations

import base64
import os
import threading

from .. import artifacts
from ..security.crypto import DecryptionError
from ..security.keys import unwrap_data_key, wrap_data_key

#: the header name of a job key (``job:<id>``) and the object that keeps it
PREFIX = "job:"
KEY_FILE = "job.key"


def is_job_key(key_id: str | None) -> bool:
    """Whether an object's header names a job key (not a KEK of the ring)."""
    return bool(key_id) and key_id.startswith(PREFIX)


class JobKey:
    """The key wrapper (:class:`aidc.security.crypto.KeyWrapper`) of one job's objects."""

    def __init__(self, job_id: str, key: bytes):
        self.job_id, self._key = job_id, key

    def current_id(self) -> str:
        return PREFIX + self.job_id

    def _check(self, key_id: str) -> None:
        if key_id != self.current_id():
            raise DecryptionError(f"an object of job {self.job_id} is under {key_id}, not its job's key")

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        self._check(key_id)
        return wrap_data_key(self._key, data_key, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        self._check(key_id)
        return unwrap_data_key(self._key, wrapped, aad)

    def encoded(self) -> str:
        """The key as the task spec carries it."""
        return base64.b64encode(self._key).decode()


def _job_of(identity: str) -> tuple[str, str]:
    job, _, rest = identity.partition("/")
    return job, rest


class ServiceJobKeys:
    """The jobs service's keys for its artifact root: the ring for ``job.key`` objects (and
    anything not in a job's folder), each job's key for the rest; a job key is made when
    its job's first object is written."""

    def __init__(self, ring, root: str):
        self.ring, self.root = ring, root.rstrip("/")
        self._cache: dict[str, JobKey] = {}
        self._lock = threading.Lock()

    def for_identity(self, identity: str):
        job, rest = _job_of(identity)
        if not rest or rest == KEY_FILE:
            return self.ring
        return _Lazy(self, job)

    def job_key(self, job_id: str, create: bool = True) -> JobKey:
        """The key of ``job_id`` (made and stored under the ring when ``create`` and there
        is none yet); :class:`DecryptionError` when it is missing."""
        with self._lock:
            cached = self._cache.get(job_id)
            if cached is not None:
                return cached
            url = f"{self.root}/{job_id}/{KEY_FILE}"
            raw = artifacts.read_bytes(url)
            if raw is None:
                if not create:
                    raise DecryptionError(f"job {job_id} has no key ({KEY_FILE} is missing)")
                raw = os.urandom(32)
                artifacts.write_bytes(url, raw)
            key = JobKey(job_id, raw)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[job_id] = key
            return key


class _Lazy:
    """A job's key wrapper that reads (or makes) the key only when a write or a read of an
    encrypted object needs it: a plain object stored before encryption needs none."""

    def __init__(self, keys: ServiceJobKeys, job_id: str):
        self.keys, self.job_id = keys, job_id

    def current_id(self) -> str:
        return PREFIX + self.job_id

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        return self.keys.job_key(self.job_id).wrap(key_id, data_key, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return self.keys.job_key(self.job_id, create=False).unwrap(key_id, wrapped, aad)


class WorkerJobKeys:
    """A worker process's keys for a jobs root: only those of the attempts it is running."""

    def __init__(self):
        self._keys: dict[str, JobKey] = {}
        self._lock = threading.Lock()

    def for_identity(self, identity: str):
        job, _ = _job_of(identity)
        with self._lock:
            key = self._keys.get(job)
        if key is None:
            raise DecryptionError(f"this worker holds no key for job {job}")
        return key

    def hold(self, job_id: str, encoded: str) -> None:
        with self._lock:
            self._keys[job_id] = JobKey(job_id, base64.b64decode(encoded))

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._keys.pop(job_id, None)


def root_of(url: str, job_id: str) -> str:
    """The artifact root of a job's object URL (``<root>/<job>/<name>``)."""
    marker = f"/{job_id}/"
    return url[:url.rindex(marker)]


def hold_for_attempt(spec: dict) -> bool:
    """In a worker: take the job key the spec carries for this attempt. False when the
    store is not encrypted (no key in the spec). The jobs service's own process (a cluster
    of threads beside it) already opens every job's objects and keeps its keys."""
    encoded = spec.get("artifact_key")
    if not encoded:
        return False
    root = root_of(spec["output_url"], spec["job_id"])
    keys = artifacts.encrypted_root(root)
    if isinstance(keys, ServiceJobKeys):
        return True
    if not isinstance(keys, WorkerJobKeys):
        keys = WorkerJobKeys()
        artifacts.encrypt_under(root, keys)
    keys.hold(spec["job_id"], encoded)
    return True


def drop_after_attempt(spec: dict) -> None:
    """In a worker: forget the key :func:`hold_for_attempt` took."""
    if not spec.get("artifact_key"):
        return
    keys = artifacts.encrypted_root(root_of(spec["output_url"], spec["job_id"]))
    if isinstance(keys, WorkerJobKeys):
        keys.drop(spec["job_id"])
