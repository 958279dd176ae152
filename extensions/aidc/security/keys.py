"""Key-encryption keys (KEKs): where they come from, which one is current, rotation.

:mod:`aidc.security.crypto` wraps each object's data key with a KEK. A *key provider*
holds the KEKs; the platform asks it only to wrap and unwrap data keys, so a KMS whose
keys never leave it fits the same interface as a key file:

- :class:`FileKeyProvider` (the default): one file per KEK in ``<data-dir>/secrets/kek/``
  (the folder 0700, each key 0600, created at first start), the current one named in
  ``current``. ``aidc keys rotate`` adds a key; old keys stay until ``aidc keys retire``.
- :class:`EnvKeyProvider`: one KEK from an environment variable (base64 of 32 bytes),
  for sites whose secret store injects it; rotation there is the secret store's job.
- A KMS: a class named in ``c.Encryption.provider_class`` with the same four methods;
  :class:`VaultTransitKeyProvider` is the documented example (HashiCorp Vault's transit
  engine: ``encrypt``/``decrypt``/``rotate`` over its HTTP API, key versions as ids).

Whatever the provider, the platform keeps a *manifest* (``<data-dir>/secrets/kek.json``):
the id and fingerprint of every KEK it has used, never the key. :meth:`KeyRing.check`
runs at every start and compares it with what the provider offers, so a missing or wrong
key is a clear error when the platform starts, not a failed read days later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from traitlets import Bool, Type, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import AidcError
from .crypto import DecryptionError


class EncryptionKeyError(AidcError):
    """A key-encryption key that is missing, wrong or cannot be used; the message says
    which and what to do. The platform refuses to start with one (exit status 2)."""

    exit_code = 2


def fingerprint(key: bytes) -> str:
    """A public fingerprint of a local KEK (an HMAC of a constant: says nothing of the key)."""
    return hmac.new(key, b"aidc-kek-fingerprint", hashlib.sha256).hexdigest()[:32]


def wrap_data_key(key: bytes, data_key: bytes, aad: bytes) -> bytes:
    """``data_key`` sealed with the key-encryption key ``key`` (AES-256-GCM), for ``aad``."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data_key, b"aidc-data-key:" + aad)


def unwrap_data_key(key: bytes, wrapped: bytes, aad: bytes) -> bytes:
    """What :func:`wrap_data_key` sealed; :class:`DecryptionError` for a wrong key or ``aad``."""
    try:
        return AESGCM(key).decrypt(wrapped[:12], wrapped[12:], b"aidc-data-key:" + aad)
    except InvalidTag:
        raise DecryptionError("the data key does not unwrap with its KEK (a wrong key, or "
                              "the object's bytes were moved from another object)") from None


class KeyProvider(LoggingConfigurable):
    """The interface: ids of the KEKs it can use, the current one, wrap, unwrap, add."""

    def ids(self) -> list[str]:
        raise NotImplementedError

    def current_id(self) -> str:
        raise NotImplementedError

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def add(self) -> str:
        """Make a new KEK the current one; its id."""
        raise EncryptionKeyError(f"{type(self).__name__} cannot add keys: rotate them where they are kept")

    def remove(self, key_id: str) -> None:
        raise EncryptionKeyError(f"{type(self).__name__} cannot retire keys: retire them where they are kept")

    def fingerprint(self, key_id: str) -> str | None:
        """A public fingerprint of ``key_id`` (None where the provider cannot say: a KMS)."""
        return None


class LocalKeyProvider(KeyProvider):
    """A provider that holds the KEK's bytes itself (a file, a variable): it wraps and
    unwraps with AES-GCM here, and can say a key's fingerprint. Subclasses give
    :meth:`key_bytes`."""

    def key_bytes(self, key_id: str) -> bytes:
        raise NotImplementedError

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        return wrap_data_key(self.key_bytes(key_id), data_key, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return unwrap_data_key(self.key_bytes(key_id), wrapped, aad)

    def fingerprint(self, key_id: str) -> str:
        return fingerprint(self.key_bytes(key_id))


class FileKeyProvider(LocalKeyProvider):
    """KEKs as files in a private folder (``<data-dir>/secrets/kek``)."""

    folder = Unicode(help="Folder of the key files (default `<data-dir>/secrets/kek`).").tag(config=True)

    def _dir(self) -> Path:
        return Path(self.folder)

    def key_bytes(self, key_id: str) -> bytes:
        path = self._dir() / f"{key_id}.key"
        try:
            return base64.b64decode(path.read_text().strip(), validate=True)
        except FileNotFoundError:
            raise EncryptionKeyError(f"the key-encryption key {key_id} is missing ({path})") from None
        except ValueError:
            raise EncryptionKeyError(f"the key file {path} is damaged") from None

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self._dir().glob("*.key"))

    def current_id(self) -> str:
        try:
            return (self._dir() / "current").read_text().strip()
        except FileNotFoundError:
            raise EncryptionKeyError(f"no current key-encryption key in {self._dir()}") from None

    def add(self) -> str:
        folder = self._dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        key_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        path = folder / f"{key_id}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp = folder / f".current.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_id + "\n")
        os.replace(tmp, folder / "current")
        return key_id

    def remove(self, key_id: str) -> None:
        if key_id == self.current_id():
            raise EncryptionKeyError(f"{key_id} is the current key; rotate first")
        (self._dir() / f"{key_id}.key").unlink(missing_ok=True)


class EnvKeyProvider(LocalKeyProvider):
    """One KEK from an environment variable (base64 of 32 random bytes)."""

    variable = Unicode("AIDC_KEK", help="Environment variable holding the KEK (base64 of 32 bytes).").tag(config=True)

    def _key(self) -> bytes:
        value = os.environ.get(self.variable)
        if not value:
            raise EncryptionKeyError(f"the key-encryption key variable {self.variable} is not set")
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise EncryptionKeyError(f"{self.variable} must be base64 of 32 bytes (for example: "
                            "python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')")
        return key

    def ids(self) -> list[str]:
        return [self.current_id()]

    def current_id(self) -> str:
        return "env-" + fingerprint(self._key())[:12]

    def key_bytes(self, key_id: str) -> bytes:
        if key_id != self.current_id():
            raise EncryptionKeyError(f"the key-encryption key {key_id} is not the one in {self.variable}")
        return self._key()


class VaultTransitKeyProvider(KeyProvider):
    """HashiCorp Vault's transit engine as the KEK holder: data keys are wrapped and
    unwrapped by Vault (``POST /v1/<mount>/encrypt|decrypt/<key>``), the KEK never leaves
    it; ``aidc keys rotate`` asks Vault for a new key version (``/rotate``). A key id is
    ``vault:<key>:v<version>`` as Vault names its ciphertexts' versions.

    Configure: ``c.Encryption.provider_class = "aidc.security.keys.VaultTransitKeyProvider"``,
    ``c.VaultTransitKeyProvider.url``, ``.key_name``; the token comes from ``VAULT_TOKEN``
    (the platform's environment, never a config file)."""

    url = Unicode("http://127.0.0.1:8200", help="Vault's address.").tag(config=True)
    mount = Unicode("transit", help="Mount path of the transit engine.").tag(config=True)
    key_name = Unicode("aidc", help="Name of the transit key that wraps aidc's data keys.").tag(config=True)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        import requests

        token = os.environ.get("VAULT_TOKEN", "")
        r = requests.request(method, f"{self.url.rstrip('/')}/v1/{self.mount}/{path}",
                             json=body, headers={"X-Vault-Token": token}, timeout=10)
        if r.status_code >= 400:
            raise EncryptionKeyError(f"Vault refused {path} ({r.status_code}): {r.text[:200]}")
        return r.json() if r.content else {}

    def _version(self) -> int:
        return int(self._call("GET", f"keys/{self.key_name}")["data"]["latest_version"])

    def ids(self) -> list[str]:
        data = self._call("GET", f"keys/{self.key_name}")["data"]
        return [f"vault:{self.key_name}:v{v}" for v in sorted(int(k) for k in data["keys"])]

    def current_id(self) -> str:
        return f"vault:{self.key_name}:v{self._version()}"

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        version = int(key_id.rsplit(":v", 1)[1])
        out = self._call("POST", f"encrypt/{self.key_name}", {
            "plaintext": base64.b64encode(data_key).decode(),
            "context": base64.b64encode(aad).decode(), "key_version": version})
        return out["data"]["ciphertext"].encode()

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        out = self._call("POST", f"decrypt/{self.key_name}", {
            "ciphertext": wrapped.decode(), "context": base64.b64encode(aad).decode()})
        return base64.b64decode(out["data"]["plaintext"])

    def add(self) -> str:
        self._call("POST", f"keys/{self.key_name}/rotate")
        return self.current_id()


class Encryption(LoggingConfigurable):
    """Encryption at rest of the platform's stored objects (datasets, model artifacts)."""

    enabled = Bool(True, help="""Encrypt datasets' files and model artifacts as they are stored (AES-256-GCM,
        a data key per object wrapped by a key-encryption key). Objects stored before
        stay readable.""").tag(config=True)

    provider_class = Type(FileKeyProvider, klass=KeyProvider,
                          help="Where the key-encryption keys are: `FileKeyProvider` (a key "
                          "file in the data directory, the default), `EnvKeyProvider`, "
                          "`VaultTransitKeyProvider` or a KMS class of your own.").tag(config=True)


class KeyRing:
    """The platform's provider and its manifest: what :mod:`crypto` wraps keys with."""

    def __init__(self, provider: KeyProvider, manifest: Path):
        self.provider, self.manifest = provider, manifest

    @classmethod
    def for_data_dir(cls, root: Path, config=None) -> "KeyRing | None":
        """The key ring of the data directory ``root`` (None when encryption is off)."""
        enc = Encryption(config=config) if config is not None else Encryption()
        if not enc.enabled:
            return None
        provider = enc.provider_class(config=config) if config is not None else enc.provider_class()
        if isinstance(provider, FileKeyProvider) and not provider.folder:
            provider.folder = str(Path(root) / "secrets" / "kek")
        return cls(provider, Path(root) / "secrets" / "kek.json")

    # what crypto calls
    def current_id(self) -> str:
        return self.provider.current_id()

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        return self.provider.wrap(key_id, data_key, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return self.provider.unwrap(key_id, wrapped, aad)

    # the manifest
    def read_manifest(self) -> dict:
        try:
            return json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return {"keys": []}

    def _write_manifest(self, manifest: dict) -> None:
        self.manifest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.manifest.with_name(f".{self.manifest.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, self.manifest)

    def _record(self, key_id: str) -> None:
        manifest = self.read_manifest()
        if key_id not in {k["id"] for k in manifest["keys"]}:
            manifest["keys"].append({"id": key_id, "fingerprint": self.provider.fingerprint(key_id),
                                     "added": time.time()})
            self._write_manifest(manifest)

    def check(self, create: bool = False) -> str:
        """At start: the current KEK exists (``create``: made when the platform has never
        had one) and every KEK the manifest lists is still there with the same
        fingerprint. The current id; :class:`EncryptionKeyError` with what is wrong."""
        manifest = self.read_manifest()
        try:
            current = self.provider.current_id()
        except EncryptionKeyError:
            if not create or manifest["keys"]:
                raise
            current = self.provider.add()
        have = set(self.provider.ids())
        for k in manifest["keys"]:
            if k.get("retired"):
                continue
            if k["id"] not in have:
                raise EncryptionKeyError(
                    f"the key-encryption key {k['id']} is missing: objects encrypted with it "
                    "cannot be read. Restore it (a key file from a backup of secrets/kek, or "
                    "the right key in the provider) before starting the platform.")
            if k.get("fingerprint") and self.provider.fingerprint(k["id"]) not in (None, k["fingerprint"]):
                raise EncryptionKeyError(f"the key-encryption key {k['id']} is not the key this platform "
                                "encrypted with (its fingerprint differs): a wrong key")
        self._record(current)
        return current

    def rotate(self) -> str:
        """A new current KEK (recorded in the manifest); its id."""
        key_id = self.provider.add()
        self._record(key_id)
        return key_id

    def retire(self, key_id: str) -> None:
        """Forget ``key_id`` (the caller made sure no object uses it)."""
        self.provider.remove(key_id)
        manifest = self.read_manifest()
        for k in manifest["keys"]:
            if k["id"] == key_id:
                k["retired"] = time.time()
        self._write_manifest(manifest)
