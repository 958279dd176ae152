"""HTTPS on the platform's public port: the certificate, its checks, and who must trust it.

``aidc up --tls-cert FILE --tls-key FILE`` serves the public port (configurable-http-proxy)
over HTTPS with an operator's certificate; ``--tls-self-signed`` makes one for a trial
(:func:`self_signed`: ECDSA P-256, valid a year, for 127.0.0.1, localhost and this host's
name and the listening address). The pair is checked before anything starts
(:func:`check_pair`), so a wrong path, a key of another certificate or an expired
certificate is a message at ``aidc up``, not a proxy that dies later.

The platform's own clients reach the public URL too (jobs' kernels through ``aidc.client``,
the Lab relay, services asking each other): :func:`trust_bundle` writes the system's CA
bundle plus the platform's certificate where every user can read it and none can write it
(:func:`bundle_path`), and the hub hands it to services, servers and job kernels as
``REQUESTS_CA_BUNDLE`` and ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from ..errors import UsageError


def _load(cert_path: Path, key_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for what, path in (("certificate", cert_path), ("key", key_path)):
        if not path.is_file():
            raise UsageError(f"--tls-{'cert' if what == 'certificate' else 'key'}: no {what} file at {path}")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as e:
        raise UsageError(f"--tls-cert: {cert_path} is not a PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--tls-key: {key_path} is not an unencrypted PEM private key ({e})") from None
    return cert, key


def check_pair(cert_path: Path, key_path: Path) -> None:
    """Refuse, with a message, a certificate and key that the proxy could not serve."""
    from cryptography.hazmat.primitives import serialization

    cert, key = _load(cert_path, key_path)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise UsageError(f"--tls-key: {key_path} is not the key of the certificate {cert_path}")
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc <= now:
        raise UsageError(f"--tls-cert: {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise UsageError(f"--tls-cert: {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")


def self_signed(tls_dir: Path, secrets_dir: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed certificate (made once, again when it is a month from expiry) and its
    key (0600, in the secrets folder); returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = tls_dir / "self-signed.crt", secrets_dir / "tls-self-signed.key"
    now = dt.datetime.now(dt.timezone.utc)
    if cert_path.exists() and key_path.exists():
        existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if existing.not_valid_after_utc - now > dt.timedelta(days=30):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(host),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if ip and ip not in ("0.0.0.0", "127.0.0.1", "::"):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            names.append(x509.DNSName(ip))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"aidc on {host} (self-signed)")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    tls_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(cert_path, 0o644)
    return cert_path, key_path


def bundle_path(data_dir: Path) -> Path:
    """Where the platform's CA bundle is written: in the platform's Python environment
    (``<prefix>/etc/aidc/tls/<platform>.pem``), which every user's server and job kernel can
    already read and only the platform's account can write; the data directory itself stays
    closed to users. One file per platform (data directory) on the machine."""
    import hashlib
    import sys

    name = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return Path(sys.prefix) / "etc" / "aidc" / "tls" / f"{name}.pem"


def trust_bundle(data_dir: Path, cert_path: Path) -> Path:
    """The CA bundle the platform's own clients use (services, user servers, job kernels):
    the system's (certifi's) CAs plus the platform's certificate, so a self-signed or
    private-CA certificate is trusted without turning verification off anywhere."""
    import certifi

    bundle = bundle_path(data_dir)
    for folder in (bundle.parent.parent.parent, bundle.parent.parent, bundle.parent):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
    tmp = bundle.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + cert_path.read_bytes())
    os.chmod(tmp, 0o644)
    tmp.replace(bundle)
    return bundle
