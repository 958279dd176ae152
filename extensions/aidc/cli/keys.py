"""``aidc keys list|rotate|retire``: the key-encryption keys of encryption at rest.

Run on the platform's machine as its account (the keys and the stored objects are
readable only by it), with or without the platform running: ``rotate`` makes a new
current key and re-wraps the data key in the header of every encrypted object (the data
itself is not re-encrypted); services pick the new key for their next write. ``retire``
forgets an old key once no object uses it.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    group = CommandGroup(sub, "keys", "key-encryption keys of the data encrypted at rest", common)
    group.action("list", "the keys, the current one, and how many stored objects each wraps", list_keys)
    group.action("rotate", "a new current key; every stored object's data key re-wrapped with it", rotate)
    r = group.action("retire", "forget an old key that no stored object uses any more", retire)
    r.add_argument("key_id", metavar="KEY")


def platform_keys(data_dir: str | None):
    """The platform's key ring and the roots of its encrypted objects, datasets' files,
    model artifacts and jobs' snapshots and outputs (the data directory's drop-ins decide
    both, as they do for the services, which register the same roots with
    :func:`aidc.artifacts.encrypt_under`); ``(None, [])`` when encryption is off."""
    from ..data.uploads import DatasetUploads
    from ..paths import DataDir
    from ..security.keys import KeyRing
    from ..services.base import ServiceApp

    d = DataDir.from_arg(data_dir)
    app = ServiceApp()
    app.load_drop_ins(str(d.root))
    keys = KeyRing.for_data_dir(d.root, app.config)
    if keys is None:
        return None, []
    models = app.config.ModelRegistry.get("artifacts_url") or str(d.root.resolve() / "models" / "artifacts")
    jobs = (app.config.JobArtifactStore.get("url") or app.config.ArtifactStore.get("url")
            or str(d.jobs_artifacts))
    roots = [DatasetUploads(None, config=app.config, data_dir=str(d.root)).storage_url, models, jobs]
    # users' secrets for jobs (aidc.jobs.secrets), under the key ring itself
    roots.append(app.config.SecretStore.get("root") or str(d.root.resolve() / "jobs" / "secrets"))
    return keys, roots


def _objects(roots: list[str]):
    """``(url, identity)`` of every stored object below the encrypted roots, but those
    under a job's own key (:mod:`aidc.jobs.jobkeys`: only that job's ``job.key`` object
    depends on the key-encryption keys)."""
    from .. import artifacts
    from ..jobs.jobkeys import is_job_key

    for root in roots:
        fs, path = artifacts._fs(root)
        if not fs.exists(path):
            continue
        for found in sorted(fs.find(path)):
            name = found.rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(".partial"):
                continue  # a write in progress
            if is_job_key(_key_of(fs, found)):
                continue
            identity = found[len(path.rstrip("/")) + 1:]
            yield root, fs, found, identity


def _key_of(fs, found: str) -> str | None:
    from ..security.crypto import HEADER_SIZE, PREFIX, key_of

    with fs.open(found, "rb") as f:
        return key_of(f.read(PREFIX + HEADER_SIZE))


def _usage(keys, roots) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for _root, fs, found, _identity in _objects(roots):
        k = _key_of(fs, found)
        counts[k] = counts.get(k, 0) + 1
    return counts


def _ring(args):
    keys, roots = platform_keys(args.data_dir)
    if keys is None:
        raise UsageError("encryption at rest is off on this platform (c.Encryption.enabled = False)")
    return keys, roots


def list_keys(args) -> int:
    keys, roots = _ring(args)
    current = keys.check(create=False)
    counts = _usage(keys, roots)
    for k in keys.read_manifest()["keys"]:
        state = "current" if k["id"] == current else ("retired" if k.get("retired") else "old")
        print(f"{k['id']}  {state:8} {counts.get(k['id'], 0)} object(s)")
    if counts.get(None):
        print(f"(plain, stored before encryption)  {counts[None]} object(s)")
    return 0


def _audit(args, action: str, target: str, result: str, **extra) -> None:
    """One ``key`` event in the platform's audit log (as ``aidc user`` records its own)."""
    from ..paths import DataDir
    from ..security import audit

    audit.record("key", DataDir.from_arg(args.data_dir).audit_log, actor=audit.cli_actor(),
                 action=action, target=target, result=result, **extra)


def rotate(args) -> int:
    from .. import artifacts
    from ..security.crypto import rewrap

    keys, roots = _ring(args)
    previous = keys.check(create=False)
    new = keys.rotate()
    moved = 0
    try:
        for root, _fs, found, identity in _objects(roots):
            if artifacts.local_path(root) is None:
                raise UsageError(f"re-wrapping in place needs a local store; {root} is not one")
            with open(found, "r+b") as f:
                if rewrap(f, keys, identity) is not None:
                    f.flush()
                    os.fsync(f.fileno())
                    moved += 1
    except Exception as e:
        _audit(args, "rotate", new, "failure", previous=previous, objects=moved,
               reason=f"stopped after {moved} object(s): {e}"[:500])
        raise
    _audit(args, "rotate", new, "success", previous=previous, objects=moved)
    print(f"new current key {new}; {moved} object(s) re-wrapped (their data was not re-encrypted)")
    return 0


def retire(args) -> int:
    keys, roots = _ring(args)
    current = keys.check(create=False)
    known = {k["id"] for k in keys.read_manifest()["keys"]}
    try:
        if args.key_id not in known:
            raise UsageError(f"no key {args.key_id!r}; `aidc keys list` shows the keys")
        if args.key_id == current:
            raise UsageError(f"{args.key_id} is the current key: `aidc keys rotate` first")
        still = _usage(keys, roots).get(args.key_id, 0)
        if still:
            raise UsageError(f"{still} stored object(s) still use {args.key_id}: `aidc keys rotate` "
                             "re-wraps them with the current key")
    except UsageError as e:
        _audit(args, "retire", args.key_id, "failure", reason=str(e)[:500])
        raise
    keys.retire(args.key_id)
    _audit(args, "retire", args.key_id, "success")
    print(f"retired {args.key_id}")
    return 0


def check_at_start(data_dir) -> None:
    """For ``aidc up``: the platform's key exists (made at the first start) and every key
    its objects were encrypted with is still there and right; raises before anything runs."""
    keys, _ = platform_keys(str(data_dir.root))
    if keys is not None:
        data_dir.ensure()
        keys.check(create=True)
