"""``aidc.secrets.set`` / ``list`` / ``delete``: your secrets for jobs, through the one client.

A secret (an API token, a password) is yours alone, stored encrypted by the jobs service.
A job that names it (``aidc.jobs.submit(..., secrets=["HF_TOKEN"])``) finds its value in
the environment variable of the same name (``os.environ["HF_TOKEN"]``); what the job
prints, displays or records is searched for the value, which is replaced by
``[secret HF_TOKEN]`` (:mod:`aidc.security.redact` says which forms are found). A value is
never shown again: setting replaces it, ``list`` shows names and times only.

Credentials as everywhere in aidc (:class:`aidc.client.Client`).
"""

from __future__ import annotations

import builtins
from urllib.parse import quote

from .client import Client

API = "services/jobs/api/secrets"


def _client(client: Client | None) -> Client:
    return client or Client()


def set(name: str, value: str, *, client: Client | None = None) -> dict:  # noqa: A001
    """Store ``value`` as your secret ``name`` (replacing its value if it exists); returns
    its ``name``, ``created`` and ``updated`` times, never the value."""
    c = _client(client)
    return c.json(c.request("PUT", f"{API}/{quote(name, safe='')}", json={"value": value}))


def list(*, client: Client | None = None) -> builtins.list[dict]:  # noqa: A001
    """Your secrets: ``name``, ``created`` and ``updated`` of each, never the values."""
    return _client(client).get_json(API)["secrets"]


def delete(name: str, *, client: Client | None = None) -> None:
    """Remove your secret ``name``; jobs that name it and have not started yet fail to start."""
    _client(client).request("DELETE", f"{API}/{quote(name, safe='')}")
